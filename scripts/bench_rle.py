"""Benchmark kseg's RLE codec against the two encoders competitors use, on one realistic submission.

648 label maps of 384x512 with 12 classes (synthetic aerial scenes made prediction-like: ragged class
boundaries and stray specks, as a model's argmax gives), to the 7,776-row Kaggle CSV, and back.

  (a) notebook  the per-class numpy encoder of most Kaggle notebooks: flatten in column order, pad,
                find changes, ' '.join(str) per mask; decoding loops over runs per row
  (b) coco      pycocotools' C encoder (RLE counts, column-major) converted to Kaggle runs with
                vectorised numpy, then ' '.join(str); decoding through pycocotools' C decoder
  (c) kseg      kseg.rle.encode_batch / decode_batch, on 1 thread and on every core

All encoders must produce byte-identical CSV text; the script checks it. Timings are the best of
--repeat runs. Usage: python scripts/bench_rle.py [--repeat 3] [--images 648]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from kseg import rle
from kseg.submission import format_csv
from kseg.synth.aerial import synth_scene

H, W, K = 384, 512, 12


def fragment(label: np.ndarray, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """Make a clean label map look like a prediction: ragged boundaries and stray specks."""
    h, w = label.shape
    out = label.copy()
    for dy, dx in ((1, 0), (0, 1), (-1, 0), (0, -1), (2, 1), (-1, 2)):
        sel = rng.random((h, w)) < 0.8 / 3
        out[sel] = np.roll(label, (dy, dx), axis=(0, 1))[sel]
    ys, xs = rng.integers(0, h - 3, 600), rng.integers(0, w - 3, 600)
    for y, x, k, s in zip(ys, xs, rng.integers(0, n_classes, 600), rng.integers(1, 4, 600), strict=True):
        out[y : y + s, x : x + s] = k
    return out


def _make(i: int) -> np.ndarray:
    rng = np.random.default_rng([7, 1, i])
    return fragment(synth_scene(rng, H, W, K)[1], rng, K)


def label_maps(n: int, cache: Path) -> np.ndarray:
    path = cache / f"bench_rle_{n}.npy"
    if path.exists():
        return np.load(path)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        maps = np.stack(list(pool.map(_make, range(n), chunksize=16)))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, maps)
    return maps


# ------------------------------------------------------------------------------ (a) notebook


def notebook_encode(mask: np.ndarray) -> str:
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def notebook_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    s = text.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape[1], shape[0]).T


# ---------------------------------------------------------------------------------- (b) coco


def coco_encode_map(label: np.ndarray, mask_util) -> list[str]:
    """All classes of one map through pycocotools, the counts of all 12 decoded in one numpy pass."""
    # (K, W, H) C-contiguous is (H, W, K) Fortran-contiguous: the layout pycocotools wants, built directly.
    columns = np.ascontiguousarray(label.T)
    stack = (columns[None] == np.arange(K, dtype=np.uint8)[:, None, None]).view(np.uint8).transpose(2, 1, 0)
    packed = [encoded["counts"] for encoded in mask_util.encode(stack)]
    # Numbers never straddle two strings, so the strings can be decoded as one.
    counts_all = coco_counts_many(packed)
    out = []
    for counts in counts_all:
        ends = np.cumsum(counts)
        runs = np.empty(2 * (len(counts) // 2), dtype=np.int64)
        runs[0::2] = ends[0::2][: len(counts) // 2] + 1
        runs[1::2] = counts[1::2]
        out.append(" ".join(map(str, runs.tolist())))
    return out


def coco_counts_many(packed: list[bytes]) -> list[np.ndarray]:
    c = np.frombuffer(b"".join(packed), dtype=np.uint8).astype(np.int64) - 48
    more = (c & 0x20) != 0
    ends = np.flatnonzero(~more)
    first = np.concatenate([[0], ends[:-1] + 1])
    number = np.concatenate([[0], np.cumsum(~more[:-1])])
    shift = 5 * (np.arange(len(c)) - first[number])
    values = np.bincount(number, weights=(c & 0x1F) << shift).astype(np.int64)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (ends - first + 1)[negative])
    per_string = np.cumsum([0] + [len(p) for p in packed])
    string_of = np.searchsorted(per_string, ends, side="right") - 1
    bounds = np.searchsorted(string_of, np.arange(len(packed) + 1))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        v = values[a:b].copy()
        v[1::2] = np.cumsum(v[1::2])  # counts[m] += counts[m-2] for m > 2
        v[2::2] = np.cumsum(v[2::2])
        out.append(v)
    return out


def coco_counts_of(text: str, size: int) -> list[int]:
    """Kaggle runs -> uncompressed COCO counts (alternating background / foreground lengths)."""
    nums = np.array(text.split(), dtype=np.int64)
    starts, lengths = nums[0::2] - 1, nums[1::2]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    prev_end = np.concatenate([[0], starts[:-1] + lengths[:-1]])
    counts[0:-1:2] = starts - prev_end
    counts[1::2] = lengths
    counts[-1] = size - (starts[-1] + lengths[-1] if len(starts) else 0)
    return counts.tolist()


def coco_decode_map(texts: list[str], shape: tuple[int, int], mask_util) -> np.ndarray:
    """All classes of one image through pycocotools' C decoder (one call), then painted into labels."""
    size = shape[0] * shape[1]
    objs = mask_util.frPyObjects([{"counts": coco_counts_of(t, size), "size": list(shape)} for t in texts], *shape)
    masks = mask_util.decode(objs)  # (H, W, K), Fortran order: each class plane is contiguous
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(masks.shape[2]):
        label[masks[:, :, k] == 1] = k
    return label


# ------------------------------------------------------------------------------------ timing


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def end_to_end(maps: np.ndarray, ids: list[str], cache: Path, repeat: int) -> dict[str, float]:
    """``kseg submit`` and ``kseg validate`` on PNG predictions: in-process (``write_submission``,
    ``validate_file``) and as the command line runs them (a fresh process each, start-up included)."""
    from PIL import Image

    from kseg.config import load_config
    from kseg.submission import validate_file, write_submission

    root = cache / f"e2e-{len(maps)}"
    pred = root / "predictions"
    pred.mkdir(parents=True, exist_ok=True)
    image_ids = [f"img{i:04d}" for i in range(len(maps))]
    for image_id, label in zip(image_ids, maps, strict=True):
        if not (pred / f"{image_id}.png").exists():
            Image.fromarray(label).save(pred / f"{image_id}.png")
    (root / "test.csv").write_text("ImageID\n" + "\n".join(image_ids) + "\n")
    pd.DataFrame({"ImageID": ids, "EncodedPixels": ""}).to_csv(root / "sample_submission.csv", index=False)
    classes = ", ".join(f"c{k}" for k in range(K))
    (root / "kseg.yaml").write_text(
        f"workdir: work\ndata:\n  root: .\n  classes: [{classes}]\n  test_image_template: predictions/{{id}}.png\n"
        f"submission:\n  predictions: predictions\n  path: submission.csv\n  size: [{H}, {W}]\n"
        "  require_manifest: false\n"
    )
    cfg = load_config(root / "kseg.yaml")
    out = {}
    out["submit, in-process"], _ = best(lambda: write_submission(cfg), repeat)
    out["validate, in-process"], report = best(lambda: validate_file(root / "submission.csv", cfg), repeat)
    assert report.ok

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "kseg", *args], cwd=root, check=True, capture_output=True)

    out["submit, CLI"], _ = best(lambda: cli("submit"), repeat)
    out["validate, CLI"], _ = best(lambda: cli("validate"), repeat)
    out["file MB"] = (root / "submission.csv").stat().st_size / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=648)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/kseg-bench"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (scripts/bench_all.py)")
    parser.add_argument("--smoke", action="store_true", help="16 maps, one repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.repeat = 16, 1
    cores = os.cpu_count() or 1
    maps = label_maps(args.images, args.cache)
    ids = [f"img{i:04d}_{k}" for i in range(len(maps)) for k in range(K)]
    header = ["ImageID", "EncodedPixels"]
    print(f"{len(maps)} label maps {H}x{W}, {K} classes -> {len(ids)} rows; {cores} cores; best of {args.repeat}")

    results: dict[str, float] = {}
    t, rows_a = best(lambda: [notebook_encode((m == k).astype(np.uint8)) for m in maps for k in range(K)], args.repeat)
    results["encode (a) notebook"] = t
    csv_a = format_csv(header, ids, [r.encode() for r in rows_a])
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        mask_util = None
        print("(b) skipped: pip install pycocotools (or pip install -e '.[bench]')")
    if mask_util is not None:
        t, rows_b = best(lambda: [r for m in maps for r in coco_encode_map(m, mask_util)], args.repeat)
        results["encode (b) pycocotools"] = t
        assert format_csv(header, ids, [r.encode() for r in rows_b]) == csv_a, "(b) differs from (a)"
    for threads in sorted({1, cores}):
        t, enc = best(lambda th=threads: rle.encode_batch(maps, K, threads=th), args.repeat)
        results[f"encode (c) kseg, {threads} thread(s)"] = t
        csv_c = format_csv(header, ids, [r for rows in enc for r in rows])
        assert csv_c == csv_a, f"kseg ({threads} threads) differs from (a)"
    print(f"CSV text byte-identical across encoders: {len(csv_a) / 1e6:.1f} MB")

    target = args.cache / "bench_submission.csv"
    t, _ = best(lambda: format_csv(header, ids, [r for rows in enc for r in rows]), args.repeat)
    results["assemble CSV bytes (kseg)"] = t
    t, _ = best(lambda: target.write_bytes(csv_a), args.repeat)
    results["write the file"] = t
    t, _ = best(
        lambda: pd.DataFrame({"ImageID": ids, "EncodedPixels": rows_a}).to_csv(target, index=False), args.repeat
    )
    results["pandas to_csv (notebooks)"] = t

    table = pd.read_csv(io.BytesIO(csv_a), dtype=str, keep_default_na=False)
    texts = table["EncodedPixels"].tolist()
    row_image = np.repeat(np.arange(len(maps)), K)
    row_class = np.tile(np.arange(K), len(maps))
    shapes = np.tile([H, W], (len(maps), 1))

    def decode_a():
        out = []
        for i in range(len(maps)):
            label = np.zeros((H, W), np.uint8)
            for k in range(K):
                label[notebook_decode(texts[i * K + k], (H, W)) == 1] = k
            out.append(label)
        return out

    t, dec = best(decode_a, 1)
    results["decode (a) notebook"] = t
    assert all((d == m).all() for d, m in zip(dec, maps, strict=True))
    if mask_util is not None:

        def decode_b():
            return [coco_decode_map(texts[i * K : (i + 1) * K], (H, W), mask_util) for i in range(len(maps))]

        t, dec = best(decode_b, args.repeat)
        results["decode (b) pycocotools"] = t
        assert all((d == m).all() for d, m in zip(dec, maps, strict=True))
    for threads in sorted({1, cores}):
        t, dec = best(lambda th=threads: rle.decode_batch(texts, row_image, row_class, shapes, threads=th), args.repeat)
        results[f"decode (c) kseg, {threads} thread(s)"] = t
        assert all((d == m).all() for d, m in zip(dec, maps, strict=True))
    t, _ = best(lambda: pd.read_csv(target, dtype=str, keep_default_na=False), args.repeat)
    results["read the CSV (pandas)"] = t

    e2e = end_to_end(maps, ids, args.cache, args.repeat)
    results["kseg submit, in-process (PNG read + encode + validate + write)"] = e2e["submit, in-process"]
    results["kseg validate, in-process"] = e2e["validate, in-process"]
    results["kseg submit, command line (a fresh process)"] = e2e["submit, CLI"]
    results[f"kseg validate of the {e2e['file MB']:.0f} MB file, command line"] = e2e["validate, CLI"]
    if args.json is not None:
        args.json.write_text(json.dumps({"images": len(maps), "cores": cores, **results, **e2e}, indent=2))

    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"  {name:{width}s} {seconds:7.3f} s")
    for stage in ("encode", "decode"):
        for threads in sorted({1, cores}):
            ours = results[f"{stage} (c) kseg, {threads} thread(s)"]
            ratios = [f"{results[f'{stage} (a) notebook'] / ours:5.1f}x vs (a)"]
            if f"{stage} (b) pycocotools" in results:
                ratios.append(f"{results[f'{stage} (b) pycocotools'] / ours:5.1f}x vs (b)")
            print(f"{stage} kseg on {threads} thread(s): " + ", ".join(ratios))


if __name__ == "__main__":
    main()
