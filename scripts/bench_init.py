"""Benchmark `kseg init` on a drone-sized download: 3,269 training images 384x512 with PNG masks (12
classes) and 648 test images, laid out as the 12-class drone competition (train.csv / test.csv with an
ImageID column, imgs/imgs/<id>.jpg, masks/masks/<id>.png, sample_submission.csv with 12 rows per test
image). The download is generated once into --data (kept between runs), then timed:

  cold     the fingerprint and plan with an empty cache: every image header, hash and thumbnail, every mask
  warm     the same again: the per-file cache in place
  headers  cold, without hashing images for duplicates (headers and masks only)

Usage: python scripts/bench_init.py [--data /tmp/kseg-bench-init] [--n 3269] [--test 648] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kseg.planning.rules import make_plan
from kseg.planning.stage import CACHE, run_init
from kseg.planning.survey import take_fingerprint
from kseg.synth.aerial import synth_scene

K = 12


def _write(args: tuple[Path, str, int, int, int, bool]) -> None:
    root, image_id, i, height, width, with_mask = args
    image, label = synth_scene(np.random.default_rng([2026, 0, i]), height, width, K)
    Image.fromarray(image).save(root / "imgs" / "imgs" / f"{image_id}.jpg", quality=90)
    if with_mask:
        Image.fromarray(label).save(root / "masks" / "masks" / f"{image_id}.png")


def prepare(root: Path, n: int, n_test: int, height: int, width: int) -> None:
    marker = root / f".complete-{n}-{n_test}-{height}x{width}"
    if marker.exists():
        return
    print(f"generating {n} + {n_test} synthetic {height}x{width} images and {n} masks in {root} (once) ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    (root / "imgs" / "imgs").mkdir(parents=True)
    (root / "masks" / "masks").mkdir(parents=True)
    train = [f"{i:05d}" for i in range(n)]
    test = [f"{n + i:05d}" for i in range(n_test)]
    jobs = [(root, x, i, height, width, True) for i, x in enumerate(train)]
    jobs += [(root, x, n + i, height, width, False) for i, x in enumerate(test)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, jobs, chunksize=32))
    (root / "train.csv").write_text("ImageID\n" + "".join(f"{x}\n" for x in train))
    (root / "test.csv").write_text("ImageID\n" + "".join(f"{x}\n" for x in test))
    rows = "".join(f"{x}_{k},\n" for x in test for k in range(K))
    (root / "sample_submission.csv").write_text("ImageID,EncodedPixels\n" + rows)
    marker.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/kseg-bench-init"))
    parser.add_argument("--n", type=int, default=3269)
    parser.add_argument("--test", type=int, default=648)
    parser.add_argument("--smoke", action="store_true", help="a tiny download (CI): 40 + 8 images of 64x96")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (scripts/bench_all.py)")
    args = parser.parse_args()
    size = (64, 96) if args.smoke else (384, 512)
    n, n_test = (40, 8) if args.smoke else (args.n, args.test)
    figures: dict[str, float] = {"images": n + n_test}
    data = args.data.with_name(args.data.name + "-smoke") if args.smoke else args.data
    prepare(data, n, n_test, *size)
    cores = os.cpu_count() or 1
    print(f"{n} training images with masks + {n_test} test images, {size[0]}x{size[1]}, {K} classes, {cores} cores")
    cache = data / CACHE
    for label, duplicates in (("cold", True), ("warm (cache in place)", True)):
        if label == "cold":
            shutil.rmtree(cache.parent, ignore_errors=True)
        t0 = time.perf_counter()
        fp = take_fingerprint(data, cache=cache, duplicates=duplicates)
        t1 = time.perf_counter()
        plan = make_plan(fp)
        t2 = time.perf_counter()
        print(f"{label:24s} fingerprint {t1 - t0:7.2f} s   plan {1000 * (t2 - t1):6.1f} ms")
        figures[label.split()[0]] = t1 - t0
    t0 = time.perf_counter()
    take_fingerprint(data, cache=None, duplicates=False)
    figures["headers"] = time.perf_counter() - t0
    print(f"{'headers (no hashes)':24s} fingerprint {figures['headers']:7.2f} s")
    t0 = time.perf_counter()
    result = run_init(data, out=data / "kseg.yaml", force=True)
    print(
        f"{'kseg init, cached':24s} whole run   {time.perf_counter() - t0:7.2f} s  ({len(plan.flagged)} keys to check)"
    )
    assert result.fingerprint.masks is not None and result.fingerprint.masks.count == n
    assert result.fingerprint.sample is not None and result.fingerprint.sample.id_format == "{id}_{k}"
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
