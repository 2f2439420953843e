"""The performance figures of the README in one table: each kseg figure beside its anchor, the ratio, and
the goal. Runs the benchmarks it draws on (scripts/bench_rle.py, scripts/bench_init.py) in fresh
processes, and times the command line's start-up itself.

  figure                         anchor                                  goal
  kseg --help, validate --help   -                                       under 0.4 s
  encode 648 maps, 1 thread      pycocotools' C encoder, same masks     kseg at most 0.25 s
  decode, 1 thread               pycocotools' C decoder                 kseg at most 0.25 s
  kseg submit, command line      pycocotools encoding the same masks    at most 0.75x
  kseg validate, command line    pycocotools encoding the same masks    at most 0.35x
  kseg init fingerprint          -                                       (reported: cold and cached)

The 0.25 s goals were set in a run where pycocotools encoded the masks in 1.89 s; this host's speed drifts
by a fifth over a day, so the last column also reads them as that ratio (0.132x of the same run's
pycocotools encoding), as the issue measures its other goals.

Usage: python scripts/bench_all.py [--smoke] [--images 648] [--init-images 3269]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


def start_up(args: list[str], repeat: int) -> float:
    """Best wall time of ``python -m kseg ARGS`` over ``repeat`` fresh processes."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kseg", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def figures_of(script: str, extra: list[str], folder: Path) -> dict:
    out = folder / f"{script}.json"
    subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), *extra, "--json", str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): seconds, figures meaningless")
    parser.add_argument("--images", type=int, default=648, help="label maps for the RLE figures")
    parser.add_argument("--init-images", type=int, default=3269, help="training images of the init download")
    args = parser.parse_args()
    smoke = ["--smoke"] if args.smoke else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rle = figures_of("bench_rle", [*smoke, "--images", str(args.images)], folder)
        init = figures_of("bench_init", [*smoke, "--n", str(args.init_images)], folder)
    repeat = 1 if args.smoke else 5
    help_s, validate_help_s = start_up(["--help"], repeat), start_up(["validate", "--help"], repeat)
    n = rle["images"]
    coco_encode = rle.get("encode (b) pycocotools")
    coco_decode = rle.get("decode (b) pycocotools")
    enc, dec = rle["encode (c) kseg, 1 thread(s)"], rle["decode (c) kseg, 1 thread(s)"]
    rows = [
        ("kseg --help, start", None, help_s, "under 0.4 s", verdict(help_s < 0.4)),
        ("kseg validate --help, start", None, validate_help_s, "under 0.4 s", verdict(validate_help_s < 0.4)),
        (f"encode {n} maps, 1 thread", coco_encode, enc, "at most 0.25 s", seconds_goal(enc, coco_encode)),
        (f"decode {n} maps, 1 thread", coco_decode, dec, "at most 0.25 s", seconds_goal(dec, coco_encode)),
        (f"kseg submit, command line, {n} maps", coco_encode, rle["submit, CLI"], "at most 0.75x", None),
        (
            f"kseg validate, command line, {rle['file MB']:.0f} MB",
            coco_encode,
            rle["validate, CLI"],
            "at most 0.35x",
            None,
        ),
        (f"kseg init fingerprint, {init['images']} images, cold", None, init["cold"], "reported", "-"),
        (f"kseg init fingerprint, {init['images']} images, cached", None, init["warm"], "reported", "-"),
    ]
    print("\n| figure | anchor (pycocotools) s | kseg s | ratio | goal | reached |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for name, anchor, ours, goal, reached in rows:
        a = "-" if anchor is None else f"{anchor:.3f}"
        ratio = "-" if anchor is None else f"{ours / anchor:.2f}x"
        if reached is None:  # a ratio goal against pycocotools' encoding (not installed: no verdict)
            limit = float(goal.split()[-1].rstrip("x"))
            reached = "-" if coco_encode is None else verdict(ours / coco_encode <= limit)
        print(f"| {name} | {a} | {ours:.3f} | {ratio} | {goal} | {reached} |")


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


# The issue measured its 0.25 s goals in a run where pycocotools encoded the masks in 1.89 s; this host's
# speed drifts by a fifth over a day, so the goal is also read as that ratio to the same run's anchor.
ISSUE_ANCHOR_S = 1.89


def seconds_goal(ours: float, coco_encode: float | None) -> str:
    share = 0.25 / ISSUE_ANCHOR_S
    as_ratio = "-" if coco_encode is None else verdict(ours / coco_encode <= share)
    return f"{verdict(ours <= 0.25)} in seconds; {as_ratio} as {share:.3f}x of pycocotools' encoding"


if __name__ == "__main__":
    main()
