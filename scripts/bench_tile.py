"""Peak memory and time of `kseg tile` on a large generated scene (needs kseg[geo]).

Writes a SIZE x SIZE raster with BANDS uint16 bands and a class mask FINE times finer (so a 4,000 px,
10-band scene has a 40,000 x 40,000 mask), both tiled and compressed GeoTIFFs, then tiles them in a
fresh process and reports that process's peak resident memory next to the rasters' sizes.

    python scripts/bench_tile.py                      # 4,000 px, 10 bands, mask 10x finer, 512 px tiles
    python scripts/bench_tile.py --size 2000 --fine 4
    python scripts/bench_tile.py --smoke              # 256 px, 3 bands, mask 2x finer, 64 px tiles (CI)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_scene(root: Path, size: int, bands: int, fine: int) -> tuple[Path, Path]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    common = {"driver": "GTiff", "crs": "EPSG:32640", "tiled": True, "blockxsize": 512, "blockysize": 512}
    image = root / "scene.tif"
    profile = {**common, "height": size, "width": size, "count": bands, "dtype": "uint16", "compress": "lzw"}
    profile["transform"] = from_origin(500000, 2800000, 10, 10)
    rng = np.random.default_rng(0)
    with rasterio.open(image, "w", **profile) as dst:
        for y in range(0, size, 512):
            h = min(512, size - y)
            dst.write(rng.integers(0, 10000, (bands, h, size), dtype=np.uint16), window=Window(0, y, size, h))
    mask = root / "mask.tif"
    side = size * fine
    profile = {**common, "height": side, "width": side, "count": 1, "dtype": "uint8", "compress": "deflate"}
    profile["transform"] = from_origin(500000, 2800000, 10 / fine, 10 / fine)
    cols = np.arange(side)
    with rasterio.open(mask, "w", **profile) as dst:
        for y in range(0, side, 512):
            h = min(512, side - y)
            rows = np.arange(y, y + h)[:, None]
            labels = ((rows // 37 + cols[None, :] // 53) % 6).astype(np.uint8)  # blocky land cover, 6 classes
            dst.write(labels[None], window=Window(0, y, side, h))
    return image, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--bands", type=int, default=10)
    parser.add_argument("--fine", type=int, default=10)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.bands, args.fine, args.tile = 256, 3, 2, 64
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        image, mask = write_scene(root, args.size, args.bands, args.fine)
        made = time.perf_counter() - t0
        image_mb = args.size**2 * args.bands * 2 / 2**20
        mask_mb = (args.size * args.fine) ** 2 / 2**20
        print(
            f"scene: {args.size}x{args.size} px x {args.bands} bands uint16 ({image_mb:,.0f} MiB in memory), "
            f"mask {args.size * args.fine}x{args.size * args.fine} px uint8 ({mask_mb:,.0f} MiB); "
            f"written in {made:.1f} s ({(image.stat().st_size + mask.stat().st_size) / 2**20:,.0f} MiB on disk)"
        )
        baseline = _peak("import rasterio, numpy, kseg.cli, kseg.data.tile")
        argv = ["kseg", "tile", str(image), "--mask", str(mask), "--out", str(root / "tiles"), "--size", str(args.tile)]
        t0 = time.perf_counter()
        peak = _peak(f"import sys; sys.argv = {argv!r}; from kseg.cli import app; app()", cwd=root)
        took = time.perf_counter() - t0
        n = len((root / "tiles" / "tiles.csv").read_text().splitlines()) - 1
        print(f"kseg tile: {n} tiles of {args.tile} px in {took:.1f} s")
        print(
            f"peak resident memory of the tiling process: {peak:,.0f} MiB "
            f"(python + numpy + rasterio alone: {baseline:,.0f} MiB); "
            f"the rasters hold {image_mb + mask_mb:,.0f} MiB: {100 * peak / (image_mb + mask_mb):.1f}% of it"
        )


_WRAP = """
import sys
try:
    exec(sys.argv[1])
except SystemExit as exc:
    if exc.code:
        raise
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_KIB", line.split()[1])
"""


def _peak(code: str, cwd: Path | None = None) -> float:
    """Peak RSS (MiB) of a fresh Python process running ``code``: its own high-water mark (VmHWM), which
    unlike the children's rusage does not count the pages of this (large) process it was forked from."""
    result = subprocess.run([sys.executable, "-c", _WRAP, code], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    kib = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("PEAK_KIB")]
    return int(kib[-1]) / 1024


if __name__ == "__main__":
    main()
