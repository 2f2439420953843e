"""Cut large georeferenced rasters into training tiles, and stitch tile predictions back into one GeoTIFF.

Satellite scenes (a Sentinel-2 style multiband GeoTIFF, 30,000 px a side, with a land-cover raster at
another resolution) are far too big to load; every read and write here is windowed:

- The image is read one tile window at a time (``tile.bands``, 1-based, chosen bands only).
- The mask raster is read over the **same ground footprint** (its window comes from the image window's
  bounds in the mask's own grid) and resampled onto the tile's pixel grid by GDAL while reading:
  ``tile.mask_resampling: nearest`` or ``mode`` (the majority class of the finer pixels under each
  image pixel). Mask pixels outside the mask raster or equal to its nodata become ``data.ignore_index``.
- Tiles are dropped by rule: all image pixels nodata (``tile.drop_nodata``), or every labelled pixel in
  ``tile.drop_classes`` (e.g. sea only).
- Tiles are written as ``images/<stem>_y<row>_x<col>.npy`` (``(H, W, C)``, the raster's dtype) or
  ``.png`` for 3-band 8-bit rasters, masks as index PNGs, and ``tiles.csv`` (``ImageID`` plus
  ``source, row, col, height, width, labelled``) that ``data.layout: csv`` reads as a competition;
  ``tiles.json`` keeps the source's georeference and the per-band mean / std of the kept tiles'
  valid pixels (``data.mean`` / ``data.std`` in the raster's units), and ``data.yaml`` is the matching
  ``data:`` section.
- ``stitch`` writes tile predictions into a GeoTIFF with the source's CRS and transform; where tiles
  overlap, each pixel comes from the tile whose centre is nearest.

rasterio is an optional dependency: ``pip install -e ".[geo]"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from kseg.config import TileConfig
from kseg.errors import TileError
from kseg.io import atomic_dir, atomic_write_text

INDEX_NAME = "tiles.csv"
META_NAME = "tiles.json"
GDAL_CACHE_MB = 64  # GDAL's block cache would otherwise grow to 5% of RAM and hide the windowed reads


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise TileError('kseg tile needs rasterio, which is not installed; run: pip install -e ".[geo]"') from None
    return rasterio


@dataclass
class TileResult:
    """What ``tile_raster`` wrote.

    Attributes:
        index: ``tiles.csv`` as a table (kept tiles only).
        out: Output folder.
        n_candidates: Tile windows considered.
        dropped_nodata: Windows dropped because every image pixel was nodata.
        dropped_classes: Windows dropped because every labelled pixel was in ``tile.drop_classes``.
        mean, std: Per-band statistics of the kept tiles' valid pixels, in the raster's units.
    """

    index: pd.DataFrame
    out: Path
    n_candidates: int
    dropped_nodata: int
    dropped_classes: int
    mean: list[float]
    std: list[float]


def tile_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` every ``stride`` that cover ``0..length``; the last one is
    moved back to end exactly at ``length`` so that every tile is whole."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _georeferenced(src) -> bool:
    return src.crs is not None and not src.transform.is_identity


def _check_inputs(src, mask_src, options: TileConfig, image: Path, mask: Path | None) -> list[int]:
    if not _georeferenced(src):
        raise TileError(
            f"{image} has no georeference (no CRS or an identity transform); tiles could not be placed on the "
            "mask or stitched back: assign one first, e.g. gdal_edit.py -a_srs EPSG:32640 -a_ullr ..."
        )
    size = options.size
    if size > src.height or size > src.width:
        raise TileError(
            f"tile.size {size} is larger than {image} ({src.height}x{src.width} px); "
            f"use a tile.size of at most {min(src.height, src.width)}"
        )
    bands = options.bands or list(range(1, src.count + 1))
    bad = [b for b in bands if not 1 <= b <= src.count]
    if bad:
        raise TileError(
            f"tile.bands {bad} out of range: {image} has bands 1..{src.count}; pick band numbers in that range"
        )
    if mask_src is not None:
        if not _georeferenced(mask_src):
            raise TileError(f"mask {mask} has no georeference (no CRS or an identity transform); assign one first")
        if mask_src.crs != src.crs:
            raise TileError(
                f"mask {mask} is in {mask_src.crs} but image {image} is in {src.crs}; reproject the mask "
                f"first, e.g. gdalwarp -t_srs {src.crs} -r mode mask.tif mask_{src.crs.to_epsg() or 'same'}.tif"
            )
    return bands


def tile_raster(
    image: Path,
    out: Path,
    options: TileConfig,
    mask: Path | None = None,
    ignore_index: int = 255,
    on_progress: Callable[[int, int], None] | None = None,
) -> TileResult:
    """Cut ``image`` (and its ``mask`` raster) into tiles under ``out``.

    Args:
        image: A georeferenced raster (GeoTIFF), any number of bands.
        out: Output folder (``images/``, ``masks/``, ``tiles.csv``, ``tiles.json``, ``data.yaml``).
        options: The ``tile`` config section.
        mask: Optional class raster (band 1 holds class indices), any resolution, same CRS.
        ignore_index: Label for mask pixels that are nodata or outside the mask raster.
        on_progress: Optional ``callback(done, total)``.

    Raises:
        TileError: No georeference, CRS mismatch, tile larger than the raster, band out of range, no rasterio.
    """
    rasterio = _rasterio()
    image, out = Path(image), Path(out)
    for path, what in ((image, "image"), (mask, "mask")):
        if path is not None and not Path(path).is_file():
            raise TileError(f"{what} raster {path} does not exist; check the path")
    with warnings.catch_warnings():  # a raster without georeference gets kseg's one-line error, not a warning
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(image) as src:
            mask_src = rasterio.open(mask) if mask is not None else None
            # built next to its place and renamed into it: an interrupted run leaves no half-made tile set
            with atomic_dir(out) as work:
                result = _tile(rasterio, src, mask_src, image, work, options, mask, ignore_index, on_progress)
                (work / "data.yaml").write_text(_data_yaml(out, json.loads((work / META_NAME).read_text()), mask))
            result.out = out
            return result


def _tile(rasterio, src, mask_src, image, out, options, mask, ignore_index, on_progress) -> TileResult:
    """Cut every window of ``src`` into ``out``, then write ``tiles.csv`` and ``tiles.json``."""
    try:
        bands = _check_inputs(src, mask_src, options, image, mask)
        cutter = _Cutter.start(src, mask_src, bands, options, ignore_index, out)
        stride = options.stride or options.size
        rows, cols = tile_origins(src.height, options.size, stride), tile_origins(src.width, options.size, stride)
        origins = [(row, col) for row in rows for col in cols]
        for done, (row, col) in enumerate(origins, 1):
            cutter.cut(f"{image.stem}_y{row:05d}_x{col:05d}", image.name, row, col)
            if on_progress is not None:
                on_progress(done, len(origins))
    finally:
        if mask_src is not None:
            mask_src.close()
    if not cutter.records:
        raise TileError(
            f"every tile of {image} was dropped ({cutter.dropped_nodata} all nodata, {cutter.dropped_classes} "
            f"only tile.drop_classes {sorted(cutter.drop)}); relax tile.drop_nodata / tile.drop_classes"
        )
    return _write_index(out, image, src, options, cutter, len(origins))


@dataclass
class _Cutter:
    """Cuts one raster's windows into tile files, keeping the index rows, the drop counts and the per-band
    pixel moments of the kept tiles' valid pixels."""

    src: Any
    mask_src: Any
    bands: list[int]
    size: int
    nodata: float | None
    drop_nodata: bool
    drop: set[int]
    resampling: Any
    ignore_index: int
    as_png: bool
    out: Path
    records: list[tuple] = field(default_factory=list)
    dropped_nodata: int = 0
    dropped_classes: int = 0
    moments: np.ndarray = field(default_factory=lambda: np.zeros((3, 0)))  # count, sum, sum of squares

    @classmethod
    def start(cls, src, mask_src, bands: list[int], options: TileConfig, ignore_index: int, out: Path) -> _Cutter:
        """The cutter for ``options``, with the output folders made."""
        from rasterio.enums import Resampling

        dtype = np.dtype(src.dtypes[bands[0] - 1])
        (out / "images").mkdir(parents=True)
        if mask_src is not None:
            (out / "masks").mkdir(parents=True, exist_ok=True)
        return cls(
            src,
            mask_src,
            bands,
            options.size,
            options.nodata if options.nodata is not None else src.nodata,
            options.drop_nodata,
            set(options.drop_classes),
            {"nearest": Resampling.nearest, "mode": Resampling.mode}[options.mask_resampling],
            ignore_index,
            len(bands) == 3 and dtype == np.uint8,
            out,
            moments=np.zeros((3, len(bands))),
        )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.src.dtypes[self.bands[0] - 1])

    def cut(self, name: str, source: str, row: int, col: int) -> None:
        """Write the window at ``(row, col)`` as tile ``name``, unless a drop rule takes it."""
        from rasterio.windows import Window

        window = Window(col, row, self.size, self.size)
        pixels = self.src.read(self.bands, window=window)  # (C, size, size)
        # a pixel is nodata when every chosen band says so
        valid = np.ones(pixels.shape[1:], bool) if self.nodata is None else ~(pixels == self.nodata).all(0)
        if self.drop_nodata and not valid.any():
            self.dropped_nodata += 1
            return
        labels = None
        if self.mask_src is not None:
            labels = _read_labels(self.src, self.mask_src, window, valid, self.resampling, self.ignore_index)
            labelled = labels[labels != self.ignore_index]
            if self.drop and labelled.size and set(np.unique(labelled).tolist()) <= self.drop:
                self.dropped_classes += 1
                return
        share = _write_tile(self.out, name, pixels, labels, self.as_png, self.ignore_index)
        flat = pixels.reshape(len(self.bands), -1)[:, valid.ravel()].astype(np.float64)
        self.moments += [np.full(len(self.bands), flat.shape[1]), flat.sum(1), (flat * flat).sum(1)]
        self.records.append((name, source, row, col, self.size, self.size, round(share, 4)))


def _write_index(out: Path, image: Path, src, options: TileConfig, cutter: _Cutter, n: int) -> TileResult:
    """``tiles.csv`` (the kept tiles) and ``tiles.json`` (georeference, bands, their mean and std)."""
    count, sums, squares = cutter.moments
    mean, std = _band_stats(count, sums, squares, cutter.as_png)
    index = pd.DataFrame(cutter.records, columns=["ImageID", "source", "row", "col", "height", "width", "labelled"])
    atomic_write_text(out / INDEX_NAME, index.to_csv(index=False))
    meta = {
        "source": str(image.resolve()),
        "crs": src.crs.to_wkt(),
        "transform": list(src.transform)[:6],
        "height": src.height,
        "width": src.width,
        "size": options.size,
        "stride": options.stride or options.size,
        "bands": cutter.bands,
        "dtype": str(cutter.dtype),
        "mean": mean,
        "std": std,
        "suffix": ".png" if cutter.as_png else ".npy",
    }
    atomic_write_text(out / META_NAME, json.dumps(meta, indent=1))
    return TileResult(index, out, n, cutter.dropped_nodata, cutter.dropped_classes, mean, std)


def _band_stats(total: np.ndarray, sums: np.ndarray, squares: np.ndarray, as_png: bool) -> tuple[list, list]:
    """Per-band mean and std of the kept tiles' valid pixels (8-bit images on the 0-1 scale)."""
    mean = (sums / np.maximum(total, 1)).tolist()
    std = np.sqrt(np.maximum(squares / np.maximum(total, 1) - np.square(mean), 0)).tolist()
    if as_png:
        mean, std = [m / 255 for m in mean], [s / 255 for s in std]
    return mean, [max(s, 1e-6) for s in std]


def _read_labels(src, mask_src, window, valid: np.ndarray, resampling, ignore_index: int) -> np.ndarray:
    """The mask raster over the image window's ground footprint, resampled onto the tile's pixel grid;
    pixels outside the mask, nodata or invalid in the image become ``ignore_index``."""
    from rasterio.windows import bounds, from_bounds

    size = int(window.height)
    mask_nodata = mask_src.nodata
    mwin = from_bounds(*bounds(window, src.transform), transform=mask_src.transform)
    labels = mask_src.read(
        1,
        window=mwin,
        out_shape=(size, size),
        resampling=resampling,
        boundless=True,
        fill_value=mask_nodata if mask_nodata is not None else ignore_index,
    ).astype(np.int64)
    outside = labels == mask_nodata if mask_nodata is not None else np.zeros_like(valid)
    labels = np.where(outside | ~valid | (labels < 0) | (labels > 255), ignore_index, labels)
    return labels.astype(np.uint8)


def _write_tile(
    out: Path, name: str, pixels: np.ndarray, labels: np.ndarray | None, as_png: bool, ignore_index: int
) -> float:
    """Write one tile's image (and mask); returns its labelled share."""
    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    if as_png:
        Image.fromarray(hwc).save(out / "images" / f"{name}.png")
    else:
        np.save(out / "images" / f"{name}.npy", hwc)
    if labels is None:
        return 1.0
    Image.fromarray(labels).save(out / "masks" / f"{name}.png")
    return float((labels != ignore_index).mean())


def _data_yaml(out: Path, meta: dict, has_mask: object) -> str:
    suffix = meta["suffix"]
    lines = [
        f"# data section for the tiles of {Path(meta['source']).name}, written by kseg tile",
        "data:",
        f"  root: {out.resolve()}",
        "  layout: csv",
        f"  train_csv: {INDEX_NAME}",
        f"  image_template: images/{{id}}{suffix}",
    ]
    if has_mask:
        lines.append("  mask_template: masks/{id}.png")
    lines += [
        f"  image_size: [{meta['size']}, {meta['size']}]",
        f"  mean: [{', '.join(f'{m:.6g}' for m in meta['mean'])}]",
        f"  std: [{', '.join(f'{s:.6g}' for s in meta['std'])}]",
        "model:",
        f"  in_channels: {len(meta['bands'])}",
        "split:",
        "  group_by: source        # tiles of one scene stay in one fold",
        "",
    ]
    return "\n".join(lines)


def tiles_folder(images: Path | None) -> Path:
    """The ``kseg tile`` folder of ``--images`` (the folder itself or its parent holds ``tiles.json``)."""
    candidates = [d for d in (images, images.parent if images else None) if d and (d / META_NAME).is_file()]
    if not candidates:
        raise TileError(f"--stitch needs --images pointing at the images of a 'kseg tile' folder (with {META_NAME})")
    return candidates[0]


def stitch(tiles: Path, predictions: Path, out: Path, nodata: int = 255) -> Path:
    """Write the predicted label maps of ``tiles`` (``kseg infer --out predictions``) into one GeoTIFF.

    Args:
        tiles: The ``kseg tile`` output folder (``tiles.csv`` and ``tiles.json``).
        predictions: Folder of ``<ImageID>.png`` label maps, one per tile.
        out: GeoTIFF to write, with the source raster's CRS, transform and size (uint8, LZW, tiled).
        nodata: Value of pixels no tile covers (dropped tiles).

    Raises:
        TileError: When the index or a tile's prediction is missing.
    """
    rasterio = _rasterio()
    from rasterio.windows import Window

    tiles, predictions, out = Path(tiles), Path(predictions), Path(out)
    if not (tiles / META_NAME).is_file():
        raise TileError(f"{tiles} holds no {META_NAME}; give the folder 'kseg tile' wrote")
    meta = json.loads((tiles / META_NAME).read_text())
    index = pd.read_csv(tiles / INDEX_NAME, dtype={"ImageID": str})
    missing = [i for i in index["ImageID"] if not (predictions / f"{i}.png").is_file()]
    if missing:
        raise TileError(
            f"no prediction {predictions / (missing[0] + '.png')} ({len(missing)} of {len(index)} tiles missing); "
            f"run: kseg infer --images {tiles / 'images'} --out {predictions}"
        )
    height, width, size = meta["height"], meta["width"], meta["size"]
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": "uint8",
        "crs": rasterio.crs.CRS.from_wkt(meta["crs"]),
        "transform": rasterio.Affine(*meta["transform"]),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "lzw",
    }
    rows = sorted(set(index["row"]))
    cols = sorted(set(index["col"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(tmp, "w", **profile) as dst:
            band = 256
            for y in range(0, height, band):  # nodata everywhere first: dropped tiles stay nodata
                h = min(band, height - y)
                dst.write(np.full((1, h, width), nodata, np.uint8), window=Window(0, y, width, h))
            for r in index.itertuples(index=False):
                y0, y1 = _central(r.row, rows, size, height)
                x0, x1 = _central(r.col, cols, size, width)
                labels = np.asarray(Image.open(predictions / f"{r.ImageID}.png"))
                if labels.shape != (size, size):
                    raise TileError(
                        f"prediction {r.ImageID}.png is {labels.shape[0]}x{labels.shape[1]}, not the tile's "
                        f"{size}x{size}; predict the tiles at their own size (infer.mode: tile, or data.image_size)"
                    )
                part = labels[y0 - r.row : y1 - r.row, x0 - r.col : x1 - r.col]
                dst.write(part[None], window=Window(x0, y0, x1 - x0, y1 - y0))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _central(start: int, starts: list[int], size: int, length: int) -> tuple[int, int]:
    """The span of this tile that lies closer to its own centre than to its neighbours' centres."""
    i = starts.index(start)
    lo = start if i == 0 else (starts[i - 1] + start + size + 1) // 2  # both ends round up: no gap, no overlap
    hi = start + size if i == len(starts) - 1 else (start + starts[i + 1] + size + 1) // 2
    lo = max(lo, start)
    hi = min(hi, start + size, length)
    return lo, hi
