"""Benchmark `kseg split`: scan and split 3,269 synthetic 384x512 masks with 12 classes.

The data set is laid out like the 12-class drone competition (train.csv, imgs/imgs/<id>.jpg,
masks/masks/<id>.png), generated once into --data (kept between runs), then timed:

  cold   the full split with an empty cache (mask scan in parallel + stratified K-fold)
  serial the same with one worker
  warm   the split again with the scan cache in place

Usage: python scripts/bench_split.py [--data /tmp/kseg-bench-split] [--n 3269] [--smoke]
(--smoke: 40 masks, for CI)
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kseg.config import build_config
from kseg.data.scan import scan_masks
from kseg.data.split import assign_folds, make_folds
from kseg.synth.aerial import class_names, synth_scene

H, W, K = 384, 512, 12


def _write(args: tuple[Path, int]) -> None:
    root, i = args
    image, label = synth_scene(np.random.default_rng([2024, 0, i]), H, W, K)
    Image.fromarray(image).save(root / "imgs" / "imgs" / f"{i:05d}.jpg", quality=90)
    Image.fromarray(label).save(root / "masks" / "masks" / f"{i:05d}.png")


def prepare(root: Path, n: int) -> None:
    marker = root / f".complete-{n}"
    if marker.exists():
        return
    print(f"generating {n} synthetic {H}x{W} images and masks in {root} (once) ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    (root / "imgs" / "imgs").mkdir(parents=True)
    (root / "masks" / "masks").mkdir(parents=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, [(root, i) for i in range(n)], chunksize=32))
    (root / "train.csv").write_text("ImageID\n" + "".join(f"{i:05d}\n" for i in range(n)))
    marker.touch()


def config(root: Path, work: Path, workers: int):
    tree = {
        "workdir": str(work),
        "data": {
            "root": str(root),
            "classes": class_names(K),
            "image_template": "imgs/imgs/{id}.jpg",
            "mask_template": "masks/masks/{id}.png",
            "test_csv": None,
        },
        "split": {"n_folds": 5, "seed": 42, "workers": workers},
    }
    return build_config(tree, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/kseg-bench-split"))
    parser.add_argument("--n", type=int, default=3269)
    parser.add_argument("--smoke", action="store_true", help="40 masks (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.data = 40, args.data.with_name(args.data.name + "-smoke")
    prepare(args.data, args.n)
    work = args.data / "work"
    t0 = time.perf_counter()
    import iterstrat.ml_stratifiers  # noqa: F401  (pulls in scikit-learn: a one-off cost per process)

    print(f"import iterative-stratification + scikit-learn: {time.perf_counter() - t0:.2f} s (once per process)")
    cores = os.cpu_count() or 1
    print(f"{args.n} masks of {H}x{W}, {K} classes, 5 folds, {cores} cores")

    for label, workers in (("cold, serial (1 worker)", 1), (f"cold, parallel ({cores} workers)", cores)):
        shutil.rmtree(work, ignore_errors=True)
        cfg = config(args.data, work, workers)
        t0 = time.perf_counter()
        stats = scan_masks(cfg.data, cfg.split, cfg.workdir)
        t1 = time.perf_counter()
        assign_folds(stats.counts, 5, 42, 3)
        t2 = time.perf_counter()
        print(f"{label:32s} scan {t1 - t0:6.2f} s   stratified 5-fold {t2 - t1:5.2f} s   total {t2 - t0:6.2f} s")

    cfg = config(args.data, work, cores)
    t0 = time.perf_counter()
    result = make_folds(cfg)
    t1 = time.perf_counter()
    print(f"{'warm (scan cache in place)':32s} whole make_folds {t1 - t0:6.2f} s (scanned {result.stats.n_scanned})")
    print(f"imbalance {result.imbalance:.2f}% vs {result.plain_imbalance:.2f}% for plain KFold")


if __name__ == "__main__":
    main()
