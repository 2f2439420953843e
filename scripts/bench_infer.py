"""Benchmark inference: TTA throughput against a per-view loop, and memory against the number of images.

1. images/s of UNet-ResNet50 at 384x512 (12 classes) with TTA none, flip (4 views) and d4 (8 views):
   kseg (all views of a batch in one forward pass; 90-degree views in a second pass on non-square images)
   against ttach's SegmentationTTAWrapper (one forward pass per view), same model, same images.
2. Peak resident memory (RSS) of `run_inference` streaming 64 and then 648 synthetic test images to disk,
   each in a fresh process (goal: within 10%: memory must not grow with the number of images).

Runs on the GPU when there is one, else on the CPU (and says so).
Usage: python scripts/bench_infer.py [--images 4] [--rss-encoder resnet50] [--skip-rss] [--smoke]
(--smoke: 64x96 images, ResNet18, 2 images per batch, 8 and 16 streamed images: seconds, for CI)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

H, W, K = 384, 512, 12


def _cfg(root: Path, encoder: str, batch: int | None):
    from kseg.config import build_config

    tree = {
        "workdir": str(root / "work"),
        "data": {"root": str(root), "classes": [f"c{k}" for k in range(K)], "image_size": [H, W]},
        "model": {"arch": "Unet", "encoder_name": encoder, "encoder_weights": None},
        "infer": {"batch_size": batch},
        "train": {"num_workers": 2},
    }
    return build_config(tree, root)


ENCODER = "resnet50"
RSS_COUNTS = (64, 648)


def throughput(n_images: int, device: torch.device) -> None:
    import segmentation_models_pytorch as smp

    from kseg.prediction.predictor import Predictor

    try:
        import ttach
    except ImportError:
        ttach = None
        print("(ttach not installed: pip install ttach for the per-view comparison)")
    torch.manual_seed(0)
    model = smp.Unet(ENCODER, encoder_weights=None, classes=K).eval().to(device)
    cfg = _cfg(Path(tempfile.gettempdir()), ENCODER, batch=None)  # kseg's default chunking
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n_images)]
    batch = torch.stack([Predictor.from_config([model], cfg, device)._prepare(im) for im in images])
    transforms = {"none": None, "flip": "flip_transform", "d4": "d4_transform"}
    print(f"UNet-{ENCODER} {H}x{W}, {K} classes, {n_images} images per batch on {device_name(device)}")
    for name, alias in transforms.items():
        predictor = Predictor.from_config([model], cfg, device, tta=name)
        predictor.predict_batch(batch[:1])  # warm-up
        t0 = time.perf_counter()
        ours = predictor.predict_batch(batch)[0]
        sync(device)
        kseg_rate = n_images / (time.perf_counter() - t0)
        line = f"  TTA {name:5s} ({len(predictor.views)} views): kseg {kseg_rate:6.2f} images/s"
        if ttach is not None and alias is not None:
            wrapper = ttach.SegmentationTTAWrapper(
                torch.nn.Sequential(model, torch.nn.Softmax(1)), getattr(ttach.aliases, alias)(), merge_mode="mean"
            )
            t0 = time.perf_counter()
            with torch.inference_mode():
                theirs = wrapper(batch.to(device)).cpu()
            sync(device)
            rate = n_images / (time.perf_counter() - t0)
            diff = float((ours - theirs).abs().max())
            line += f" | per-view loop (ttach) {rate:6.2f} images/s ({kseg_rate / rate:.2f}x; max |diff| {diff:.1e})"
        print(line)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores; no GPU)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_child(n: int, encoder: str, folder: Path) -> None:
    """Run in a fresh process: stream n images through inference, print peak RSS (MiB) as JSON."""
    import pandas as pd

    from kseg.models.build import build_model
    from kseg.prediction.ensemble import Ensemble
    from kseg.prediction.infer import run_inference

    cfg = _cfg(folder, encoder, batch=None)
    torch.manual_seed(0)
    model = build_model(cfg.model, K)[0].eval()
    ids = [f"t{i:04d}" for i in range(n)]
    table = pd.DataFrame({"ImageID": ids, "image": [str(folder / "images" / f"t{i % 64:04d}.jpg") for i in range(n)]})
    t0 = time.perf_counter()
    result = run_inference(Ensemble(cfg, [model], [0], None, "bench"), table, folder / f"out{n}", "none")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "peak_mib": peak, "seconds": time.perf_counter() - t0, "written": result.n_images}))


def rss(encoder: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        rng = np.random.default_rng(0)
        for i in range(64):  # 64 distinct files; the 648-image run cycles through them
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / "images" / f"t{i:04d}.jpg")
        peaks = {}
        for n in RSS_COUNTS:
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--rss-child",
                    str(n),
                    "--rss-encoder",
                    encoder,
                    "--rss-folder",
                    str(folder),
                    *(["--smoke"] if H == 64 else []),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            info = json.loads(run.stdout.strip().splitlines()[-1])
            peaks[n] = info["peak_mib"]
            print(
                f"  {n:4d} images: peak RSS {info['peak_mib']:7.1f} MiB "
                f"({info['written']} written in {info['seconds']:.0f} s, UNet-{encoder}, TTA none)"
            )
        small, large = RSS_COUNTS
        print(f"  {large} vs {small} images: {100 * (peaks[large] / peaks[small] - 1):+.1f}% peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="images per throughput batch (4 on CPU, 32 on GPU)")
    parser.add_argument("--rss-encoder", default="resnet50")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        global H, W, ENCODER, RSS_COUNTS
        H, W, ENCODER, RSS_COUNTS = 64, 96, "resnet18", (8, 16)
        args.images = args.images or 2
        args.rss_encoder = "resnet18"
    if args.rss_child is not None:
        rss_child(args.rss_child, args.rss_encoder, args.rss_folder)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    throughput(args.images or (32 if device.type == "cuda" else 4), device)
    if not args.skip_rss:
        print("streaming memory:")
        rss(args.rss_encoder)


if __name__ == "__main__":
    main()
