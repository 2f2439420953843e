"""Class statistics of the training masks: one pass over every mask, checked against its image.

The scan reads every training mask once (in parallel), checks it against its image, and counts the
pixels of each class; the counts are cached in ``<workdir>/class_pixels.csv`` (re-used for files whose
size and modification time are unchanged) and later give class weights and stratification targets.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kseg.bits import class_planes
from kseg.common import Progress
from kseg.config import DataConfig, SplitConfig
from kseg.data.labels import mask_file
from kseg.data.reading import (
    ID,
    MaskSpec,
    decode_mask,
    hex_color,
    image_size,
    list_samples,
    read_image,
    read_mask_raw,
    unknown_error,
)
from kseg.errors import DataError
from kseg.parallel import parallel_map
from kseg.workspace.workdir import WorkDir

_STAT_KEYS = ["mask", "mask_mtime_ns", "mask_bytes", "image", "image_mtime_ns", "image_bytes"]


def scan_one(item: tuple) -> dict:
    """Worker: decode one mask, check it against its image, count its classes."""
    image_id, mask_path, image_path, spec, verify_image = item
    try:
        labels, unknown = decode_mask(read_mask_raw(Path(mask_path), spec), spec, mask_path)
        if unknown and spec.unknown == "error":
            raise unknown_error(mask_path, unknown, spec)
        height, width = labels.shape
        ih, iw = read_image(Path(image_path)).shape[:2] if verify_image else image_size(Path(image_path))
        if (ih, iw) != (height, width):
            raise DataError(
                f"mask {mask_path} is {height}x{width} but image {image_path} is {ih}x{iw}; "
                "each mask must have its image's size"
            )
    except DataError as exc:
        return {ID: image_id, "error": str(exc)}
    counts = np.bincount(labels.ravel(), minlength=256)
    per_class = counts[: spec.n_classes]
    if spec.multilabel:  # pixels of each class, counted once per class they belong to
        per_class = class_planes(labels, spec.n_classes, True, spec.ignore_index).reshape(spec.n_classes, -1).sum(1)
    return {
        ID: image_id,
        "height": height,
        "width": width,
        "counts": per_class,
        "ignore": int(counts[spec.ignore_index]),
        "unknown": {str(k): v for k, v in unknown.items()},
    }


def _file_keys(path: str) -> tuple[int, int]:
    st = os.stat(mask_file(path))  # an RLE mask reference: its table
    return st.st_mtime_ns, st.st_size


@dataclass
class ClassStats:
    """Per-image class pixel counts of the training set.

    Attributes:
        table: ``ImageID, height, width, ignore, px_<class>...`` one row per training image.
        classes: Class names, in index order.
        unknown: ``{value or colour: (pixels, masks)}`` of mask values mapped to the ignore index.
        n_scanned: Masks read in this call (the rest came from the cache).
    """

    table: pd.DataFrame
    classes: list[str]
    unknown: dict[str, tuple[int, int]] = field(default_factory=dict)
    n_scanned: int = 0

    @property
    def counts(self) -> np.ndarray:
        """Shape: ``(n_images, n_classes)`` int64."""
        return self.table[[f"px_{c}" for c in self.classes]].to_numpy(np.int64)

    @property
    def class_pixels(self) -> np.ndarray:
        """Total pixels per class over the training set. Shape: ``(n_classes,)``."""
        return self.counts.sum(0)


def _spec_fingerprint(spec: MaskSpec, classes: list[str], verify: bool) -> str:
    return hashlib.sha1(repr((spec, classes, verify)).encode()).hexdigest()[:16]


def scan_masks(
    data: DataConfig,
    split: SplitConfig,
    workdir: Path,
    samples: pd.DataFrame | None = None,
    on_progress: Progress | None = None,
) -> ClassStats:
    """Count class pixels in every training mask, checking masks against images; cached in ``workdir``.

    Args:
        data: The ``data`` section (layout, classes, mask format).
        split: The ``split`` section (``workers``, ``verify_images``).
        workdir: The work folder, for the cache.
        samples: The training table (default: ``list_samples(data, "train")``).
        on_progress: Optional ``callback(done, total)``.

    Raises:
        DataError: On the first bad file (named), with a count of the others.
    """
    samples = list_samples(data, "train") if samples is None else samples
    spec = MaskSpec.from_config(data)
    classes = data.classes
    px_cols = [f"px_{c}" for c in classes]
    fingerprint = _spec_fingerprint(spec, classes, split.verify_images)
    keys = pd.DataFrame({ID: samples[ID], "mask": samples["mask"], "image": samples["image"]})
    keys[["mask_mtime_ns", "mask_bytes"]] = [_file_keys(p) for p in samples["mask"]]
    keys[["image_mtime_ns", "image_bytes"]] = [_file_keys(p) for p in samples["image"]]

    work = WorkDir(workdir)
    cached = _usable_cache(work.read_class_pixels(fingerprint), px_cols)
    if cached is not None:
        merged = keys.merge(cached, on=[ID, *_STAT_KEYS], how="left")
        todo = merged["height"].isna().to_numpy()
    else:
        merged, todo = None, np.ones(len(keys), dtype=bool)

    items = [(r[ID], r["mask"], r["image"], spec, split.verify_images) for r in keys[todo].to_dict("records")]
    results = parallel_map(scan_one, items, split.workers, on_progress)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        more = f" ({len(errors) - 1} more bad mask(s) after this one)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)

    fresh = keys[todo].reset_index(drop=True)  # results come back in item order
    fresh["height"] = np.array([r["height"] for r in results], dtype=np.int64)
    fresh["width"] = np.array([r["width"] for r in results], dtype=np.int64)
    fresh["ignore"] = np.array([r["ignore"] for r in results], dtype=np.int64)
    fresh["unknown"] = [json.dumps(r["unknown"]) for r in results]
    counts = np.stack([r["counts"] for r in results]) if results else np.zeros((0, len(px_cols)), np.int64)
    fresh[px_cols] = counts
    table = fresh if merged is None else pd.concat([merged[~todo], fresh])
    table = keys[[ID]].merge(table, on=ID, how="left")  # back to the samples' order
    int_cols = ["height", "width", "ignore", *px_cols]
    table[int_cols] = table[int_cols].astype(np.int64)
    table["unknown"] = table["unknown"].fillna("{}")
    if spec.multilabel and spec.format == "index" and len(table):
        check_bitmask_reading(table[px_cols].to_numpy(np.int64).sum(0), list(classes), str(samples["mask"].iloc[0]))

    work.write_class_pixels(table, fingerprint)
    unknown = tally_unknown([json.loads(blob) for blob in table["unknown"]], spec)
    out = table[[ID, "height", "width", "ignore", *px_cols]].reset_index(drop=True)
    return ClassStats(out, list(classes), unknown, n_scanned=len(items))


def check_bitmask_reading(pixels: np.ndarray, classes: list[str], example: str) -> None:
    """Refuse index masks read as bitmasks (``data.multilabel: true`` on masks of class indices).

    Class indices 0..K-1 read as bitmasks never set the bits of the classes whose bit value ``2**k`` is K or
    more, so those classes get no pixel in any mask; bitmask masks of a real multilabel set show each
    class's bit where the class is alone.

    Args:
        pixels: Pixels per class over every training mask, read as bitmasks. Shape: ``(K,)``.
        classes: Class names, in index order.
        example: A mask file, to name in the message.
    """
    k = len(classes)
    high = [c for c in range(k) if 2**c >= k]
    if k < 3 or not high or pixels[high].any():
        return
    names = ", ".join(f"{classes[c]} (bit value {2**c})" for c in high)
    raise DataError(
        f"read as bitmasks (data.multilabel: true), the training masks (e.g. {example}) give no pixel to {names}: "
        f"their values stay below {k}, as the class indices of {k} classes do; if the masks hold one class "
        "index per pixel, set data.multilabel: false (a bitmask mask sets bit k for class k)"
    )


def _usable_cache(table: pd.DataFrame | None, px_cols: list[str]) -> pd.DataFrame | None:
    needed = {ID, *_STAT_KEYS, "height", "width", "ignore", "unknown", *px_cols}
    return table if table is not None and needed <= set(table.columns) else None


def tally_unknown(per_mask: list[dict[str, int]], spec: MaskSpec) -> dict[str, tuple[int, int]]:
    """``{value or colour: (pixels, masks)}`` of mask values outside the classes, summed over masks.

    Args:
        per_mask: Each mask's ``{value: pixels}`` (``scan_one``'s ``unknown``; colours packed as ints).
        spec: The mask spec (colour masks name their values as ``#RRGGBB``).
    """
    unknown: dict[str, tuple[int, int]] = {}
    for counts in per_mask:
        for value, count in counts.items():
            pixels, masks = unknown.get(str(value), (0, 0))
            unknown[str(value)] = (pixels + int(count), masks + 1)
    if spec.format == "color":
        unknown = {hex_color(int(k)): v for k, v in unknown.items()}
    return unknown


def class_pixel_counts(workdir: WorkDir, ids: pd.Series, classes: list[str]) -> np.ndarray | None:
    """Per-image class pixel counts of ``ids`` from the scan cache (``None`` without it).

    Shape:
        Returns ``(len(ids), K)`` int64; images the cache lacks count zero.
    """
    stats = workdir.read_class_pixels()
    cols = [f"px_{c}" for c in classes]
    if stats is None or not set(cols) <= set(stats.columns):
        return None
    counts = pd.DataFrame({ID: ids}).merge(stats[[ID, *cols]], on=ID, how="left")[cols]
    return counts.fillna(0).to_numpy(np.int64)


__all__ = ["ClassStats", "class_pixel_counts", "scan_masks", "scan_one", "tally_unknown"]
