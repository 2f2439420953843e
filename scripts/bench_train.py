"""Benchmark training throughput: UNet-ResNet50 at 384x512, and the data loader alone.

Prints images/s of full training steps (forward, CE + Dice loss, backward, AdamW step) under
  fp32                      plain float32, contiguous tensors
  amp + channels_last       bf16 (or fp16) autocast and channels_last memory format
  presence head             fp32 + channels_last with model.presence_head (its head and BCE term)
and the images/s the data loader delivers by itself (JPEG decode + mask decode + augmentations +
normalisation, with --workers processes), so a GPU starved by its loader is visible: if the loader is
slower than the step, the GPU waits.

On a machine without a GPU it runs on the CPU and says so (autocast on CPU is bf16).
Usage: python scripts/bench_train.py [--device auto|cpu|cuda] [--batch N] [--steps N] [--workers N] [--smoke]
(--smoke: 64x96 images, ResNet18, batch 2, one timed step: seconds, for CI)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from kseg.config import build_config
from kseg.models.build import build_model
from kseg.runtime import loader_workers
from kseg.synth.aerial import make_competition
from kseg.training.dataset import TrainDataset, train_loader
from kseg.training.losses import loss_from_config
from kseg.training.optim import build_optimizer

H, W, K = 384, 512, 12
ENCODER = "resnet50"


def step_rate(device: torch.device, amp: bool, batch: int, steps: int, cfg, channels_last: bool = False) -> float:
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, K)
    model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = loss_from_config(cfg).to(device)
    optimizer = build_optimizer(cfg.train, model)
    dtype = (
        (torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(batch, 3, H, W, device=device)
    masks = torch.randint(0, K, (batch, H, W), device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def one_step() -> None:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = loss_fn(logits, masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up: allocations, cuDNN autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def loader_rate(cfg, root: Path, batch: int, batches: int) -> float:
    from kseg.data.reading import list_samples

    samples = list_samples(cfg.data, "train")
    dataset = TrainDataset.from_config(samples, cfg)
    workers = loader_workers(cfg.runtime)
    loader = train_loader(dataset, batch_size=cfg.train.batch_size, seed=cfg.train.seed, epoch=0, workers=workers)
    it = iter(loader)
    next(it)  # start the workers
    t0 = time.perf_counter()
    n = 0
    for _ in range(min(batches, len(loader) - 1)):
        images, _ = next(it)
        n += len(images)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 30 on GPU)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    global H, W, ENCODER
    if args.smoke:
        H, W, ENCODER = 64, 96, "resnet18"
        args.batch, args.steps, args.workers = args.batch or 2, args.steps or 1, 0
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (16 if cuda else 2)
    steps = args.steps or (30 if cuda else 3)
    where = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads; no GPU)"
    )
    print(f"UNet-{ENCODER}, {H}x{W}, {K} classes, batch {batch}, {steps} timed steps on {where}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_competition(root, n_train=max(64, batch * 8), n_test=1, height=H, width=W, n_classes=K, seed=0)
        tree = {
            "workdir": str(root / "work"),
            "data": {
                "root": str(root),
                "classes": [f"c{k}" for k in range(K)],
                "image_size": [H, W],
                "test_mask_template": None,
            },
            "model": {"arch": "Unet", "encoder_name": ENCODER, "encoder_weights": None},
            "train": {"batch_size": batch, "num_workers": args.workers},
        }
        cfg = build_config(tree, root)
        fp32 = step_rate(device, False, batch, steps, cfg)
        fp32_cl = step_rate(device, False, batch, steps, cfg, channels_last=True)
        amp = step_rate(device, True, batch, steps, cfg, channels_last=True)
        headed = cfg.model_copy(update={"model": cfg.model.model_copy(update={"presence_head": True})})
        head = step_rate(device, False, batch, steps, headed, channels_last=True)
        label = "bf16 autocast + channels_last (CPU)" if not cuda else "AMP + channels_last"
        rows = [
            ("train step, fp32", fp32),
            ("train step, fp32 + channels_last", fp32_cl),
            (f"train step, {label}", amp),
            ("train step, fp32 + channels_last, presence head", head),
        ]
        loader = loader_rate(cfg, root, batch, batches=max(8, 64 // batch))
        rows.append((f"data loader alone ({args.workers} workers)", loader))
        width = max(len(name) for name, _ in rows)
        for name, rate in rows:
            print(f"  {name:<{width}s} {rate:8.2f} images/s")
        print(f"  fp32 + channels_last vs fp32: {fp32_cl / fp32:.2f}x; amp + channels_last vs fp32: {amp / fp32:.2f}x")
        print(f"  the presence head (model.presence_head) costs {fp32_cl / head - 1:+.1%} time per step")
        faster = max(fp32, fp32_cl, amp)
        verdict = "keeps up with" if loader >= faster else "STARVES"
        print(f"the loader {verdict} the fastest step ({loader / faster:.1f}x its rate)")
    if not cuda:
        print("no GPU here: run this script on one to get GPU figures (python scripts/bench_train.py)")


if __name__ == "__main__":
    main()
