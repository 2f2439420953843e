"""GPU check: every GPU path of kseg and its throughput figures, in one command (issue 19).

    python scripts/gpu_check.py OUT [--quick]

Correctness (each a row marked ok or FAIL, with what was compared):
  - a few epochs under bf16 autocast and under fp16 autocast with the gradient scaler: finite, falling losses
  - channels_last against contiguous tensors (same first-epoch loss within a tolerance)
  - runtime.compile (torch.compile): finite, falling losses, first epoch close to eager
  - a fold interrupted and resumed on the GPU equals an uninterrupted one (metrics and weights)
  - inference on the GPU equals inference on the CPU (uint8 probabilities within 2 levels, labels)
  - an fp16 bundle (kseg export --half) predicts the fp32 labels
  - torchrun --nproc-per-node 1 -m kseg train (NCCL on the GPU)
Figures (training at 384x512, UNet-ResNet50, 12 classes, the batch given or the largest that fits up to 32):
  - training images/s in fp32, AMP + channels_last, and + torch.compile
  - the data loader alone at the default workers (is it the bottleneck?)
  - d4 TTA inference images/s, kseg's batched views against ttach's per-view loop
  - the drone-sized job: 648 test images of 384x512 as PNGs, 5 folds, d4 TTA, to a validated submission.csv
  - the GPU memory peak of each row.
The table is printed last; OUT/gpu_check.json holds every figure. Without CUDA the script says so in one
line and runs the same rows on the CPU at toy sizes (so CI runs it), then exits 0 unless a row failed.
--quick uses the toy sizes on a GPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """How big each part runs: full on a GPU, toy on a CPU (or --quick)."""

    height: int
    width: int
    encoder: str
    batch: int  # training throughput batch (the largest that fits, up to this)
    steps: int  # timed training steps
    tta_images: int
    job_images: int
    job_folds: int
    job_encoder: str


FULL = Sizes(384, 512, "resnet50", 32, 20, 32, 648, 5, "resnet50")
TOY = Sizes(64, 96, "resnet18", 4, 2, 2, 4, 2, "resnet18")


@dataclass
class Row:
    name: str
    kind: str  # "check" or "figure"
    status: str = "ok"  # ok, FAIL, skipped
    value: str = ""
    seconds: float = 0.0
    peak_mib: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs each row, catching its failure so the others still run, with its time and GPU memory peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: list[Row] = []

    def run(self, name: str, kind: str, fn: Callable[[], tuple[str, dict]]) -> Row:
        row = Row(name, kind)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            row.value, row.detail = fn()
        except Exception as exc:  # a failed row is reported, not fatal
            row.status = "FAIL"
            row.value = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:160]
            row.detail = {"traceback": traceback.format_exc()}
        row.seconds = time.perf_counter() - t0
        if self.device.type == "cuda":
            row.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        self.rows.append(row)
        print(f"[{row.status}] {name}: {row.value} ({row.seconds:.1f} s)", flush=True)
        return row


# --------------------------------------------------------------------------------------- competitions


def make_comp(root: Path, n_train: int, n_test: int, h: int, w: int, k: int) -> Path:
    from kseg.synth.aerial import make_competition

    make_competition(root, n_train=n_train, n_test=n_test, height=h, width=w, n_classes=k, seed=0)
    return root


def comp_config(root: Path, device: str, *overrides: str) -> Any:
    """The toy competition's config on ``device``, split into folds in its work folder."""
    from kseg.config import load_config
    from kseg.data.split import make_folds

    base = [
        f"runtime.device={device}",
        "model.encoder_weights=null",
        "train.epochs=2",
        "train.batch_size=4",
        "runtime.num_workers=2",
    ]
    cfg = load_config(root / "kseg.yaml", [*base, *overrides])
    if not (cfg.workdir / "folds.csv").is_file():
        make_folds(cfg)
    return cfg


def kseg(*args: str, env: dict | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a kseg command in a subprocess (as a user would), raising with its last lines when it fails."""
    command = [*(launcher or [sys.executable]), "-m", "kseg", *args]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    if run.returncode != 0:
        tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"{' '.join(args[:2])} exited {run.returncode}: {tail}")
    return run


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------------------- correctness


def losses(workdir: Path, fold: int = 0) -> list[float]:
    return pd.read_csv(workdir / f"fold{fold}" / "metrics.csv")["train_loss"].tolist()


def falling(curve: list[float]) -> None:
    assert all(np.isfinite(curve)), f"non-finite training loss: {curve}"
    assert curve[-1] < curve[0], f"training loss did not fall: {curve}"


def check_training(comp: Path, work: Path, device: str, label: str, *overrides: str) -> tuple[str, dict]:
    from kseg.training.train import train_fold

    cfg = comp_config(comp, device, f"workdir={fresh(work)}", *overrides)
    result = train_fold(cfg, 0)
    curve = losses(cfg.workdir)
    falling(curve)
    return f"{label}: train loss {curve[0]:.4f} -> {curve[-1]:.4f}, best {result.best_score:.4f}", {"losses": curve}


def check_close_first_epoch(comp: Path, work: Path, device: str, label: str, tol: float, *overrides: str):
    """The first epoch's loss with ``overrides`` against the plain fp32 run's (same seed, same batches)."""
    from kseg.training.train import train_fold

    runs = {}
    for name, extra in (("reference", ["runtime.channels_last=false", "runtime.amp=off"]), (label, list(overrides))):
        cfg = comp_config(comp, device, f"workdir={fresh(work / name)}", "train.epochs=2", *extra)
        train_fold(cfg, 0)
        runs[name] = losses(cfg.workdir)
    falling(runs[label])
    a, b = runs["reference"][0], runs[label][0]
    rel = abs(a - b) / abs(a)
    assert rel <= tol, f"first-epoch loss {b:.6f} vs {a:.6f} without it ({rel:.2e} > {tol:.0e})"
    return f"first-epoch loss {b:.5f} vs {a:.5f} ({rel:.1e} relative, tolerance {tol:.0e})", runs


def check_resume(comp: Path, work: Path, device: str) -> tuple[str, dict]:
    from kseg.training.train import train_fold

    straight = comp_config(comp, device, f"workdir={fresh(work / 'straight')}", "train.epochs=2")
    train_fold(straight, 0)
    broken = comp_config(comp, device, f"workdir={fresh(work / 'resumed')}", "train.epochs=2")

    def stop_after_one(stats: Any) -> None:
        if stats.epoch == 1:
            raise KeyboardInterrupt

    try:
        train_fold(broken, 0, on_epoch=stop_after_one)
    except KeyboardInterrupt:
        pass
    train_fold(broken, 0, resume=True)
    a = pd.read_csv(straight.workdir / "fold0" / "metrics.csv")
    b = pd.read_csv(broken.workdir / "fold0" / "metrics.csv")
    numeric = [c for c in a.columns if c not in ("seconds", "images_per_s", "lr") and a[c].dtype.kind == "f"]
    metric_diff = float((a[numeric] - b[numeric]).abs().max().max())
    wa = torch.load(straight.workdir / "fold0" / "last.pt", map_location="cpu", weights_only=False)["model"]
    wb = torch.load(broken.workdir / "fold0" / "last.pt", map_location="cpu", weights_only=False)["model"]
    weight_diff = max(float((wa[n].float() - wb[n].float()).abs().max()) for n in wa if wa[n].numel())
    exact = metric_diff == 0 and weight_diff == 0
    assert metric_diff <= 1e-4 and weight_diff <= 1e-3, (
        f"metrics differ by {metric_diff:.2e}, weights {weight_diff:.2e}"
    )
    how = "bit-identical" if exact else f"metrics within {metric_diff:.1e}, weights within {weight_diff:.1e}"
    return f"resumed = uninterrupted ({how})", {"metric_diff": metric_diff, "weight_diff": weight_diff}


def check_gpu_equals_cpu(comp: Path, workdir: Path, out: Path) -> tuple[str, dict]:
    """The trained fold predicts the test set on each device (fp32, d4); probabilities and labels compared."""
    preds = {}
    for device in ("cpu", "cuda"):
        folder = fresh(out / device)
        sets = ["--set", f"workdir={workdir}", "--set", f"runtime.device={device}", "--set", "runtime.amp=off"]
        kseg("infer", "-c", str(comp / "kseg.yaml"), *sets, "--tta", "--probs", "--out", str(folder))
        preds[device] = folder
    worst, disagree, pixels = 0, 0, 0
    for cpu_file in sorted(preds["cpu"].glob("*.probs.npy")):
        a = np.load(cpu_file).astype(np.int16)
        b = np.load(preds["cuda"] / cpu_file.name).astype(np.int16)
        worst = max(worst, int(np.abs(a - b).max()))
        disagree += int((a.argmax(0) != b.argmax(0)).sum())
        pixels += a[0].size
    share = disagree / max(pixels, 1)
    assert worst <= 2 and share <= 1e-3, f"probabilities differ by up to {worst}/255, labels on {share:.2%} of pixels"
    return f"max |p_gpu - p_cpu| {worst}/255, labels differ on {share:.3%} of pixels", {"levels": worst, "share": share}


def check_half_bundle(comp: Path, workdir: Path, out: Path, device: str) -> tuple[str, dict]:
    cfg = ["-c", str(comp / "kseg.yaml"), "--set", f"workdir={workdir}"]
    full, half = out / "full.kseg", out / "half.kseg"
    kseg("export", *cfg, "--out", str(full))
    kseg("export", *cfg, "--out", str(half), "--half")
    labels = {}
    for name, bundle in (("fp32", full), ("fp16", half)):
        folder = fresh(out / name)
        images = str(comp / "images")
        kseg(
            "infer",
            "--bundle",
            str(bundle),
            "--images",
            images,
            "--out",
            str(folder),
            "--set",
            f"runtime.device={device}",
        )
        labels[name] = {p.name: np.asarray(_png(p)) for p in sorted(folder.glob("*.png"))}
    same = [float((labels["fp32"][n] == labels["fp16"][n]).mean()) for n in labels["fp32"]]
    agree = float(np.mean(same))
    assert agree >= 0.99, f"fp16 bundle labels agree with fp32 on {agree:.2%} of pixels"
    ratio = half.stat().st_size / full.stat().st_size
    return f"fp16 bundle: {ratio:.2f}x the size, labels agree on {agree:.3%} of pixels", {
        "agree": agree,
        "ratio": ratio,
    }


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def check_torchrun(comp: Path, work: Path, device: str) -> tuple[str, dict]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--standalone"]
    sets = ["--set", f"workdir={fresh(work)}", "--set", f"runtime.device={device}", "--set", "train.epochs=1"]
    kseg("split", "-c", str(comp / "kseg.yaml"), *sets)
    run = kseg("train", "--fold", "0", "-c", str(comp / "kseg.yaml"), *sets, launcher=launcher)
    backend = "nccl" if device == "cuda" else "gloo"
    assert (work / "fold0" / "best.pt").is_file(), "torchrun finished without fold0/best.pt"
    return f"torchrun -m kseg train: fold 0 trained ({backend})", {"output": run.stdout[-2000:]}


# --------------------------------------------------------------------------------------- figures


def train_rate(device: torch.device, s: Sizes, mode: str, batch: int) -> float:
    """Images/s of full UNet training steps (forward, CE + Dice, backward, AdamW) on random tensors."""
    from kseg.config import build_config
    from kseg.models.build import build_model
    from kseg.runtime import amp_dtype, autocast
    from kseg.training.losses import loss_from_config
    from kseg.training.optim import build_optimizer

    tree = {
        "data": {"root": ".", "classes": [f"c{k}" for k in range(12)], "image_size": [s.height, s.width]},
        "model": {"arch": "Unet", "encoder_name": s.encoder, "encoder_weights": None},
    }
    cfg = build_config(tree, REPO)
    torch.manual_seed(0)
    model = build_model(cfg.model, 12)[0].to(device).train()
    channels_last = mode != "fp32"
    dtype = amp_dtype("auto", device) if mode != "fp32" else None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if mode == "compile" and device.type == "cuda" else model
    loss_fn = loss_from_config(cfg).to(device)
    optimizer = build_optimizer(cfg.train, model)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(batch, 3, s.height, s.width, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 12, (batch, s.height, s.width), device=device)

    def step() -> None:
        with autocast(device, dtype):
            loss = loss_fn(step_model(images), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3 if mode == "compile" else 1):  # warm-up: compilation, cuDNN autotuning
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        step()
    sync(device)
    return batch * s.steps / (time.perf_counter() - t0)


def fitting_batch(device: torch.device, s: Sizes) -> int:
    """The largest batch up to ``s.batch`` (halving) whose AMP training step fits in GPU memory."""
    batch = s.batch
    while batch > 1:
        try:
            train_rate(device, Sizes(**{**asdict(s), "steps": 1}), "amp", batch)
            return batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return 1


def figure_training(device: torch.device, s: Sizes, batch: int, rates: dict) -> Callable[[], tuple[str, dict]]:
    def run() -> tuple[str, dict]:
        for mode in ("fp32", "amp", "compile"):
            rates[mode] = train_rate(device, s, mode, batch)
        speedup = rates["amp"] / rates["fp32"]
        text = (
            f"fp32 {rates['fp32']:.1f}, AMP + channels_last {rates['amp']:.1f} ({speedup:.2f}x), "
            f"+ compile {rates['compile']:.1f} images/s at batch {batch}"
        )
        return text, {"batch": batch, **rates, "amp_speedup": speedup}

    return run


def figure_loader(comp: Path, device: str, batch: int, step_rate: float) -> tuple[str, dict]:
    from kseg.data.reading import list_samples
    from kseg.runtime import default_workers
    from kseg.training.dataset import TrainDataset, train_loader

    cfg = comp_config(comp, device, f"train.batch_size={batch}", "runtime.num_workers=null")
    dataset = TrainDataset.from_config(list_samples(cfg.data, "train"), cfg)
    workers = default_workers()
    loader = train_loader(dataset, batch_size=batch, seed=0, epoch=0, workers=workers)
    it = iter(loader)
    next(it)  # start the workers
    n, t0 = 0, time.perf_counter()
    for images, _ in it:
        n += len(images)
    rate = n / (time.perf_counter() - t0)
    verdict = "keeps up with" if rate >= step_rate else "STARVES"
    text = f"{rate:.1f} images/s with {workers} workers: {verdict} the fastest training step ({step_rate:.1f})"
    return text, {"workers": workers, "rate": rate, "bottleneck": rate < step_rate}


def figure_tta(device: torch.device, s: Sizes) -> tuple[str, dict]:
    import segmentation_models_pytorch as smp

    from kseg.config import build_config
    from kseg.prediction.predictor import Predictor

    tree = {
        "data": {"root": ".", "classes": [f"c{k}" for k in range(12)], "image_size": [s.height, s.width]},
        "model": {"arch": "Unet", "encoder_name": s.encoder, "encoder_weights": None},
    }
    cfg = build_config(tree, REPO)
    torch.manual_seed(0)
    model = smp.Unet(s.encoder, encoder_weights=None, classes=12).eval().to(device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (s.height, s.width, 3), dtype=np.uint8) for _ in range(s.tta_images)]
    predictor = Predictor.from_config([model], cfg, device, tta="d4")
    batch = torch.stack([predictor._prepare(im) for im in images])
    predictor.predict_batch(batch[:1])
    sync(device)
    t0 = time.perf_counter()
    ours = predictor.predict_batch(batch)[0]
    sync(device)
    rate = len(images) / (time.perf_counter() - t0)
    detail: dict[str, Any] = {"kseg": rate}
    text = f"kseg d4 {rate:.1f} images/s"
    try:
        import ttach
    except ImportError:
        return text + " (ttach not installed: no per-view comparison)", detail
    wrapper = ttach.SegmentationTTAWrapper(
        torch.nn.Sequential(model, torch.nn.Softmax(1)), ttach.aliases.d4_transform(), merge_mode="mean"
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        theirs = wrapper(batch.to(device)).cpu()
    sync(device)
    loop = len(images) / (time.perf_counter() - t0)
    diff = float((ours.float().cpu() - theirs.float()).abs().max())
    detail.update(ttach=loop, speedup=rate / loop, max_diff=diff)
    return f"{text}, ttach's per-view loop {loop:.1f} ({rate / loop:.2f}x; max |diff| {diff:.1e})", detail


def figure_job(root: Path, device: str, s: Sizes) -> tuple[str, dict]:
    """648 test PNGs, 5 folds, d4 TTA, to a validated submission.csv (folds trained briefly beforehand)."""
    comp = make_comp(fresh(root), 2 * s.job_folds * 4, s.job_images, s.height, s.width, 12)
    sets = [
        "--set", f"runtime.device={device}", "--set", "model.encoder_weights=null",
        "--set", f"model.encoder_name={s.job_encoder}", "--set", f"split.n_folds={s.job_folds}",
        "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "runtime.num_workers=null",
    ]  # fmt: skip
    config = ["-c", str(comp / "kseg.yaml"), *sets]
    kseg("split", *config)
    kseg("train", "--fold", "all", *config)
    t0 = time.perf_counter()
    kseg("infer", *config, "--tta")
    infer_s = time.perf_counter() - t0
    kseg("submit", *config)
    total = time.perf_counter() - t0
    rows = len(pd.read_csv(comp / "submissions" / "submission.csv"))
    assert rows == s.job_images * 12, f"submission has {rows} rows, not {s.job_images * 12}"
    text = (
        f"{s.job_images} images x {s.job_folds} folds x d4 -> submission.csv ({rows} rows) in {total:.1f} s "
        f"(infer {infer_s:.1f} s, submit {total - infer_s:.1f} s)"
    )
    return text, {"seconds": total, "infer_seconds": infer_s, "rows": rows}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------- main


def run_all(out: Path, device: torch.device, s: Sizes) -> Runner:
    runner = Runner(device)
    name = device.type
    work = fresh(out / "work")
    comp = make_comp(work / "comp", 16, 4, 32, 64, 6)  # correctness needs no size
    runner.run(
        "bf16 autocast training", "check", lambda: check_training(comp, work / "bf16", name, "bf16", "runtime.amp=bf16")
    )
    runner.run(
        "fp16 autocast + gradient scaler",
        "check",
        lambda: check_training(comp, work / "fp16", name, "fp16", "runtime.amp=fp16"),
    )
    runner.run(
        "channels_last",
        "check",
        lambda: check_close_first_epoch(
            comp, work / "cl", name, "channels_last", 1e-3, "runtime.channels_last=true", "runtime.amp=off"
        ),
    )
    runner.run(
        "torch.compile (runtime.compile)",
        "check",
        lambda: check_close_first_epoch(
            comp, work / "compile", name, "compile", 1e-2, "runtime.compile=true", "runtime.amp=off"
        ),
    )
    runner.run("resume on the device", "check", lambda: check_resume(comp, work / "resume", name))
    trained = work / "bf16"
    if device.type == "cuda":
        runner.run("inference GPU = CPU", "check", lambda: check_gpu_equals_cpu(comp, trained, work / "infer"))
    else:
        runner.rows.append(Row("inference GPU = CPU", "check", "skipped", "needs CUDA"))
    runner.run("fp16 bundle", "check", lambda: check_half_bundle(comp, trained, fresh(work / "bundle"), name))
    runner.run("torchrun, 1 process", "check", lambda: check_torchrun(comp, work / "ddp", name))

    rates: dict[str, float] = {}
    batch = fitting_batch(device, s) if device.type == "cuda" else s.batch
    runner.run(f"training UNet-{s.encoder} {s.height}x{s.width}", "figure", figure_training(device, s, batch, rates))
    big = make_comp(work / "big", 64, 1, s.height, s.width, 12)
    fastest = max(rates.values(), default=0.0)
    runner.run("data loader alone", "figure", lambda: figure_loader(big, name, batch, fastest))
    runner.run("d4 TTA inference", "figure", lambda: figure_tta(device, s))
    runner.run("drone-sized job", "figure", lambda: figure_job(work / "job", name, s))
    return runner


def table(rows: list[Row], device: str) -> str:
    lines = [f"kseg GPU check on {device}", ""]
    width = max(len(r.name) for r in rows)
    for r in rows:
        peak = f"{r.peak_mib:8.0f} MiB" if r.peak_mib is not None else "         -  "
        lines.append(f"{r.status:7s} {r.name:<{width}s} {r.seconds:7.1f} s {peak}  {r.value}")
    failed = sum(r.status == "FAIL" for r in rows)
    lines += ["", f"{len(rows)} rows, {failed} failed"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu_check.json (and the scratch files, removed after)")
    parser.add_argument("--quick", "--smoke", action="store_true", help="toy sizes on a GPU too (CI: --smoke)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch files under OUT/work")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    where = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    if not cuda:
        print("no CUDA GPU here: the GPU paths fall back to the CPU; toy sizes, no GPU figures")
    sizes = FULL if cuda and not args.quick else TOY
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runner = run_all(args.out, device, sizes)
    figures = {
        "device": where,
        "cuda": cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sizes": asdict(sizes),
        "seconds": time.perf_counter() - t0,
        "rows": [asdict(r) for r in runner.rows],
    }
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(args.out / "work", ignore_errors=True)
    print(table(runner.rows, where))
    return 1 if any(r.status == "FAIL" for r in runner.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
