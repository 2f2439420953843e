"""One fold's training loop: AMP on GPU, resume, early stopping, best checkpoint by the competition
metric, out-of-fold (OOF) probabilities.

Everything random in an epoch (shuffling, augmentations, dropout) is seeded from ``(train.seed, epoch)``,
so a run resumed from ``last.pt`` continues exactly as if it had never stopped. Under ``torchrun`` the
same code trains with DistributedDataParallel (NCCL on GPU, gloo on CPU); rank 0 validates and writes.

Outputs under ``<workdir>/fold<N>/``: ``best.pt``, ``last.pt``, ``metrics.csv``, ``curves.png``,
``config.yaml``, and the OOF files ``oof.npy`` (uint8 probabilities, ``(N, K, H, W)`` at
``data.image_size``), ``oof_masks.npy`` (true labels at the same size) and ``oof.csv`` (ids, original
sizes).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kseg import __version__
from kseg.config import Config, save_resolved
from kseg.data import ID, MaskSpec, list_samples, read_mask
from kseg.dataset import (
    TrainDataset,
    copy_paste,
    cutmix,
    load_image,
    paste_classes,
    rare_class_weights,
    train_loader,
    train_transforms,
)
from kseg.errors import TrainError
from kseg.infer import Predictor, autocast
from kseg.io import atomic_open, atomic_write_text
from kseg.losses import build_loss
from kseg.metrics import label_counts, pixel_metrics, row_dice, row_iou
from kseg.models import build_model
from kseg.split import STATS_NAME, read_folds
from kseg.tracking import open_trackers

StepCallback = Callable[[int, int, int, float, float], None]  # epoch, step, steps, loss, images/s


@dataclass
class EpochStats:
    """One epoch's figures (one row of ``metrics.csv``)."""

    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_dice: float
    class_dice: dict[str, float]
    class_iou: dict[str, float]
    images_per_s: float
    seconds: float
    best: bool = False
    pixel_accuracy: float = float("nan")
    class_precision: dict[str, float] = field(default_factory=dict)
    class_recall: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        out = {
            "epoch": self.epoch,
            "lr": self.lr,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_dice": self.val_dice,
            "val_pixel_accuracy": self.pixel_accuracy,
        }
        out.update({f"dice_{k}": v for k, v in self.class_dice.items()})
        out.update({f"iou_{k}": v for k, v in self.class_iou.items()})
        out.update({f"precision_{k}": v for k, v in self.class_precision.items()})
        out.update({f"recall_{k}": v for k, v in self.class_recall.items()})
        return out


@dataclass
class FoldResult:
    """What ``train_fold`` did."""

    fold: int
    dir: Path
    best_epoch: int
    best_score: float
    epochs_done: int
    stopped_early: bool
    metrics: pd.DataFrame
    weights_from: str
    device: str
    precision: str
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- setup


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is 'cuda' but no CUDA GPU is visible; set train.device: auto or cpu")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 / fp16 on CUDA, none (plain fp32) on CPU or when off."""
    if device.type != "cuda" or cfg.train.amp == "off":
        return None
    if cfg.train.amp == "fp16":
        return torch.float16
    if cfg.train.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: not on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.train.weight_decay)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule; stepped after every optimiser step except ``plateau`` (per epoch)."""
    total = max(1, steps_per_epoch * cfg.train.epochs)
    warmup = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    kind = cfg.train.scheduler
    if kind == "cosine":

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if kind == "onecycle":
        if total < 4:  # too few steps for the three phases of a cycle: constant rate
            return None
        pct = min(0.5, max(2 / total, warmup / total)) if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr, total_steps=total, pct_start=pct)
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None


def distributed() -> tuple[int, int]:
    """``(rank, world size)``, joining the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _broadcast(value, rank: int, world: int):
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def fold_tables(cfg: Config, fold: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """A fold's training and validation rows of ``folds.csv`` joined to the samples, and the training
    rows' class pixel counts (``None`` without ``class_pixels.csv``).

    Raises:
        TrainError: The fold does not exist, or an image is missing from ``folds.csv``.
    """
    folds = read_folds(cfg)
    n_folds = int(folds["fold"].max()) + 1
    if not 0 <= fold < n_folds:
        raise TrainError(f"fold {fold} does not exist: folds.csv has folds 0-{n_folds - 1}; pick one of them or 'all'")
    samples = list_samples(cfg.data, "train")
    merged = samples.merge(folds[[ID, "fold"]], on=ID, how="left")
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), ID].iloc[0]
        raise TrainError(
            f"image {missing!r} is not in {cfg.workdir / 'folds.csv'}: the data changed; run 'kseg split' again"
        )
    counts = None
    stats_path = cfg.workdir / STATS_NAME
    if stats_path.is_file():
        stats = pd.read_csv(stats_path, skiprows=1, dtype={ID: str})
        cols = [f"px_{c}" for c in cfg.data.classes]
        if set(cols) <= set(stats.columns):
            counts = merged[[ID]].merge(stats[[ID, *cols]], on=ID, how="left")[cols].fillna(0).to_numpy(np.int64)
    train = merged[merged["fold"] != fold].reset_index(drop=True)
    val = merged[merged["fold"] == fold].reset_index(drop=True)
    if counts is not None:
        counts = counts[(merged["fold"] != fold).to_numpy()]
    return train, val, counts


# ------------------------------------------------------------------------------------- validation


def evaluate(
    predictor: Predictor,
    val: pd.DataFrame,
    cfg: Config,
    loss_fn: nn.Module,
    oof: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Predict the validation images at their original size and count, per image and class, the
    intersection, predicted and true pixels (ignore pixels left out), exactly as ``kseg score`` does.

    Args:
        oof: Optional ``(N, K, H, W)`` uint8 array (memmap) to receive the probabilities at
            ``data.image_size``.

    Returns:
        ``(mean validation loss, counts (N, 3, K))``.
    """
    spec = MaskSpec.from_config(cfg.data)
    k = len(cfg.data.classes)
    counts = np.zeros((len(val), 3, k), dtype=np.int64)
    losses = []
    step = predictor.batch
    for first in range(0, len(val), step):
        rows = val.iloc[first : first + step]
        images = [load_image(p, cfg.model.in_channels) for p in rows["image"]]
        masks = [read_mask(Path(p), spec) for p in rows["mask"]]
        for i, (probs, mask) in enumerate(zip(predictor.predict(images), masks, strict=True)):
            target = torch.from_numpy(mask.astype(np.int64))[None]
            with torch.no_grad():  # log-probabilities are logits whose softmax is the prediction itself
                losses.append(float(loss_fn(torch.log(probs.clamp_min(1e-7))[None], target)))
            counts[first + i] = label_counts(probs.argmax(0).numpy(), mask, k, cfg.data.ignore_index)
            if oof is not None:
                small = nn.functional.interpolate(probs[None], size=tuple(cfg.data.image_size), mode="area")[0]
                oof[first + i] = (small * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return float(np.mean(losses)) if losses else float("nan"), counts


def summarize(counts: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float], dict[str, float]]:
    """Mean row Dice (the competition metric) and per-class Dice / IoU from ``(N, 3, K)`` counts."""
    inter, pred, true = counts[:, 0], counts[:, 1], counts[:, 2]
    dice = row_dice(inter, pred, true)
    iou = row_iou(inter, pred, true)
    return (
        float(dice.mean()) if dice.size else float("nan"),
        {c: float(dice[:, j].mean()) for j, c in enumerate(classes)},
        {c: float(iou[:, j].mean()) for j, c in enumerate(classes)},
    )


def _write_oof_masks(val: pd.DataFrame, cfg: Config, fold_dir: Path) -> None:
    spec = MaskSpec.from_config(cfg.data)
    height, width = cfg.data.image_size
    masks = np.zeros((len(val), height, width), dtype=np.uint8)
    sizes = []
    for i, path in enumerate(val["mask"]):
        mask = read_mask(Path(path), spec)
        sizes.append(mask.shape)
        masks[i] = (
            nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(height, width), mode="nearest")[
                0, 0
            ]
            .to(torch.uint8)
            .numpy()
        )
    with atomic_open(fold_dir / "oof_masks.npy", "wb") as handle:
        np.save(handle, masks)
    table = pd.DataFrame({ID: val[ID], "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})
    atomic_write_text(fold_dir / "oof.csv", table.to_csv(index=False))


# ------------------------------------------------------------------------------------ checkpoints


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict:
    """A kseg checkpoint (our own file: it also holds RNG states, so not weights-only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TrainError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it and train again"
        ) from None


def checkpoint_mismatch(checkpoint: dict, cfg: Config) -> str | None:
    """How a checkpoint's model or classes differ from the config's (``None`` when they agree)."""
    saved = checkpoint.get("config", {}).get("model", {})
    for key in ("arch", "encoder_name", "in_channels"):
        if saved.get(key) != getattr(cfg.model, key):
            return f"was trained with model.{key}={saved.get(key)!r} but the config says {getattr(cfg.model, key)!r}"
    if checkpoint.get("classes") != list(cfg.data.classes):
        return f"was trained on classes {checkpoint.get('classes')}, not {list(cfg.data.classes)}"
    return None


def _plot(history: pd.DataFrame, path: Path, fold: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history["epoch"], history["train_loss"], label="train", marker=".")
    ax_loss.plot(history["epoch"], history["val_loss"], label="validation", marker=".")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"fold {fold}: loss")
    ax_loss.legend()
    for col in [c for c in history.columns if c.startswith("dice_")]:
        ax_dice.plot(history["epoch"], history[col], lw=0.8, alpha=0.6, label=col[5:])
    ax_dice.plot(history["epoch"], history["val_dice"], color="black", lw=2, marker=".", label="mean row Dice")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title=f"fold {fold}: validation", ylim=(0, 1.02))
    ax_dice.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- loop


def train_fold(
    cfg: Config,
    fold: int,
    resume: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> FoldResult:
    """Train one fold.

    Args:
        cfg: The experiment config.
        fold: Fold number of ``folds.csv`` to hold out.
        resume: Continue from ``fold<N>/last.pt`` (optimiser, scheduler, scaler and RNG state included);
            with a larger ``train.epochs`` the run trains on to the new count.
        on_step: Progress ``callback(epoch, step, steps, loss, images_per_s)``.
        on_epoch: Called with each epoch's figures, after its checkpoints are written.
        on_note: Called with one-line notes (device, precision, weights, resume point).
    """
    note = on_note or (lambda _msg: None)
    rank, world = distributed()
    main = rank == 0
    device = resolve_device(cfg)
    amp = amp_dtype(cfg, device)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp]
    train_s, val_s, counts = fold_tables(cfg, fold)
    if len(train_s) == 0 or len(val_s) == 0:
        raise TrainError(
            f"fold {fold} leaves {len(train_s)} training and {len(val_s)} validation images; "
            "run 'kseg split' with fewer folds"
        )
    classes = list(cfg.data.classes)
    fold_dir = cfg.workdir / f"fold{fold}"
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    checkpoint = None
    if resume:
        if not last_path.is_file():
            raise TrainError(
                f"no checkpoint to resume: {last_path} does not exist; run 'kseg train --fold {fold}' without --resume"
            )
        checkpoint = load_checkpoint(last_path)
        mismatch = checkpoint_mismatch(checkpoint, cfg)
        if mismatch:
            raise TrainError(
                f"{last_path} {mismatch}; resume with the same model and classes, or train without --resume"
            )

    seed_everything(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    model, weights_from = build_model(cfg.model, len(classes))
    if checkpoint is not None:
        if (checkpoint.get("ema_decay") is not None) != (cfg.train.ema is not None):
            raise TrainError(
                f"{last_path} was trained with train.ema {checkpoint.get('ema_decay')} and the config says "
                f"{cfg.train.ema}; resume with the same train.ema, or train without --resume"
            )
        # with EMA, "model" holds the averaged weights (what inference loads), "raw_model" the trained ones
        model.load_state_dict(checkpoint.get("raw_model", checkpoint["model"]))
        weights_from = f"resumed from {last_path} (epoch {checkpoint['epoch']})"
    model.to(device)
    if cfg.train.channels_last:  # faster on GPUs and, measured here, on CPUs too (scripts/bench_train.py)
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.train.ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # BatchNorm statistics are averaged too (use_buffers), so the averaged model needs no recalibration
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
        if checkpoint is not None:
            ema.module.load_state_dict(checkpoint["model"])
            ema.n_averaged.fill_(checkpoint["ema_updates"])
    eval_model = ema.module if ema is not None else model
    class_pixels = counts.sum(0) if counts is not None else None
    loss_fn = build_loss(cfg, class_pixels).to(device)
    val_loss_fn = build_loss(cfg, class_pixels)  # on the CPU, where validation probabilities land
    optimizer = build_optimizer(cfg, model)
    dataset = TrainDataset(train_s, cfg, train_transforms(cfg))
    weights = None
    if cfg.train.sampling == "rare":
        if counts is None:
            raise TrainError("train.sampling: rare needs the class pixel counts of 'kseg split'; run it first")
        weights = rare_class_weights(counts)
    steps_per_epoch = math.ceil(len(train_loader(dataset, cfg, 0, weights, rank, world)) / cfg.train.accumulate)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    per_step = scheduler is not None and cfg.train.scheduler != "plateau"
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start_epoch, best_score, best_epoch, bad_epochs, history = 0, -math.inf, -1, 0, []
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"]
        best_score, best_epoch = checkpoint["best_score"], checkpoint["best_epoch"]
        bad_epochs, history = checkpoint["bad_epochs"], checkpoint["history"]
        if scheduler is not None:
            if checkpoint["total_epochs"] == cfg.train.epochs or not per_step:
                scheduler.load_state_dict(checkpoint["scheduler"])
            else:  # train.epochs changed: the schedule is stretched to the new length from where it was
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _ in range(checkpoint["steps_done"]):
                        scheduler.step()
                note(f"train.epochs changed {checkpoint['total_epochs']} -> {cfg.train.epochs}: schedule stretched")
        rng = checkpoint.get("rng", {})
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
    train_model: nn.Module = model
    if cfg.train.compile and device.type == "cuda":
        try:
            train_model = torch.compile(model)
        except Exception as exc:  # compile is an optimisation: never a reason to stop
            note(f"torch.compile unavailable ({type(exc).__name__}); training uncompiled")
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    pin = cfg.train.pin_memory if cfg.train.pin_memory is not None else device.type == "cuda"
    note(
        f"fold {fold}: {len(train_s)} train / {len(val_s)} validation images on {device} ({precision}"
        f"{', ' + str(world) + ' processes' if world > 1 else ''}); weights: {weights_from}"
    )
    if main:
        fold_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, fold_dir / "config.yaml")
        if cfg.train.save_oof and not (fold_dir / "oof_masks.npy").is_file():
            _write_oof_masks(val_s, cfg, fold_dir)
    if start_epoch >= cfg.train.epochs:
        note(
            f"fold {fold} has already trained {start_epoch} epochs (train.epochs is {cfg.train.epochs}); "
            "raise train.epochs to train on"
        )
    predictor = Predictor([eval_model], cfg, device, amp)
    stopped_early = False
    steps_done = checkpoint["steps_done"] if checkpoint is not None else 0
    aug = cfg.train.augment
    mixing = aug.cutmix > 0 or aug.copy_paste > 0
    pasted = paste_classes(cfg, class_pixels) if aug.copy_paste > 0 else []
    if pasted:
        note("copy-paste classes: " + ", ".join(cfg.data.classes[c] for c in pasted))
    trackers = open_trackers(cfg, fold, fold_dir) if main else []
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            t_epoch = time.perf_counter()
            seed_everything(cfg.train.seed * 1000 + epoch)
            loader = train_loader(dataset, cfg, epoch, weights, rank, world, pin)
            train_model.train()
            running, seen, t0 = 0.0, 0, time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            n_batches = len(loader)
            for step, (images, masks) in enumerate(loader):
                if mixing:  # batch-level augmentations, on the CPU tensors, from the epoch-seeded generator
                    images, masks = cutmix(images, masks, aug.cutmix)
                    images, masks = copy_paste(images, masks, aug.copy_paste, pasted)
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(device, amp):
                    logits = train_model(images)
                loss = loss_fn(logits, masks)
                scaler.scale(loss / cfg.train.accumulate).backward()
                if (step + 1) % cfg.train.accumulate == 0 or step + 1 == n_batches:
                    if cfg.train.clip_grad:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    steps_done += 1
                    if ema is not None:
                        ema.update_parameters(model)
                    if per_step:
                        scheduler.step()
                running += float(loss.detach()) * len(images)
                seen += len(images)
                if on_step and main:
                    on_step(
                        epoch, step + 1, n_batches, running / seen, seen * world / max(time.perf_counter() - t0, 1e-9)
                    )
            images_per_s = seen * world / max(time.perf_counter() - t0, 1e-9)
            train_loss = running / max(seen, 1)
            if world > 1:
                import torch.distributed as dist

                total = torch.tensor([running, seen], dtype=torch.float64)
                dist.all_reduce(total)
                train_loss = float(total[0] / max(total[1], 1))
            lr = optimizer.param_groups[0]["lr"]
            stats = None
            if main:
                eval_model.eval()
                oof_tmp = fold_dir / "oof.npy.partial"
                oof = None
                if cfg.train.save_oof:
                    shape = (len(val_s), len(classes), *cfg.data.image_size)
                    oof = np.lib.format.open_memmap(oof_tmp, mode="w+", dtype=np.uint8, shape=shape)
                val_loss, val_counts = evaluate(predictor, val_s, cfg, val_loss_fn, oof)
                score, class_dice, class_iou = summarize(val_counts, classes)
                accuracy, class_precision, class_recall = pixel_metrics(val_counts)
                improved = score > best_score
                if oof is not None:
                    oof.flush()
                    del oof
                    if improved:
                        os.replace(oof_tmp, fold_dir / "oof.npy")
                    else:
                        oof_tmp.unlink(missing_ok=True)
                if improved:
                    best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                else:
                    bad_epochs += 1
                stats = EpochStats(
                    epoch + 1,
                    lr,
                    train_loss,
                    val_loss,
                    score,
                    class_dice,
                    class_iou,
                    images_per_s,
                    time.perf_counter() - t_epoch,
                    improved,
                    accuracy,
                    dict(zip(classes, class_precision.tolist(), strict=True)),
                    dict(zip(classes, class_recall.tolist(), strict=True)),
                )
                history.append(stats.row())
            history = _broadcast(history, rank, world)
            best_score, best_epoch, bad_epochs = _broadcast((best_score, best_epoch, bad_epochs), rank, world)
            if scheduler is not None and not per_step:
                scheduler.step(history[-1]["val_dice"])
            if main:
                state = {
                    "model": eval_model.state_dict() if ema is not None else _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "total_epochs": cfg.train.epochs,
                    "steps_done": steps_done,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "config": cfg.model_dump(mode="json"),
                    "classes": classes,
                    "fold": fold,
                    "kseg_version": __version__,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "numpy": np.random.get_state(),
                        "python": random.getstate(),
                    },
                }
                if ema is not None:
                    state["raw_model"] = _unwrap(model).state_dict()
                    state["ema_decay"] = cfg.train.ema
                    state["ema_updates"] = int(ema.n_averaged)
                if stats is not None and stats.best:
                    save_checkpoint(best_path, state)
                save_checkpoint(last_path, state)
                table = pd.DataFrame(history)
                atomic_write_text(fold_dir / "metrics.csv", table.to_csv(index=False))
                _plot(table, fold_dir / "curves.png", fold)
                if stats is not None:
                    for tracker in trackers:
                        tracker.log(stats.row(), stats.epoch)
                if on_epoch and stats is not None:
                    on_epoch(stats)
            _barrier(world)
            if cfg.train.patience and bad_epochs >= cfg.train.patience:
                stopped_early = True
                note(f"early stop: no better validation Dice for {bad_epochs} epochs (train.patience)")
                break
    finally:
        for tracker in trackers:
            tracker.close()
    metrics = pd.DataFrame(history)
    return FoldResult(
        fold=fold,
        dir=fold_dir,
        best_epoch=best_epoch,
        best_score=best_score,
        epochs_done=len(history),
        stopped_early=stopped_early,
        metrics=metrics,
        weights_from=weights_from,
        device=str(device),
        precision=precision,
    )
