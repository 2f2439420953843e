"""Class statistics of the training masks, and stratified (group) K-fold splits.

The scan reads every training mask once (in parallel), checks it against its image, and counts the
pixels of each class; the counts are cached in ``<workdir>/class_pixels.csv`` (re-used for files whose
size and modification time are unchanged) and later give class weights. Folds come from
``MultilabelStratifiedKFold`` over per-class presence plus per-class area bins, so both rare classes and
the area of common ones are balanced across folds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kseg.config import Config, save_resolved
from kseg.data import (
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
from kseg.errors import DataError, KsegError, SplitError
from kseg.io import atomic_write_text

Progress = Callable[[int, int], None]
STATS_NAME = "class_pixels.csv"
FOLDS_NAME = "folds.csv"
_STAT_KEYS = ["mask", "mask_mtime_ns", "mask_bytes", "image", "image_mtime_ns", "image_bytes"]


# ---------------------------------------------------------------------------------------- scan


def _scan_one(item: tuple) -> dict:
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
    return {
        ID: image_id,
        "height": height,
        "width": width,
        "counts": counts[: spec.n_classes],
        "ignore": int(counts[spec.ignore_index]),
        "unknown": {str(k): v for k, v in unknown.items()},
    }


def _apply_chunk(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def _file_keys(path: str) -> tuple[int, int]:
    st = os.stat(path)
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


def scan_masks(cfg: Config, samples: pd.DataFrame | None = None, on_progress: Progress | None = None) -> ClassStats:
    """Count class pixels in every training mask, checking masks against images; cached in the workdir.

    Args:
        cfg: The experiment config.
        samples: The training table (default: ``list_samples(cfg.data, "train")``).
        on_progress: Optional ``callback(done, total)``.

    Raises:
        DataError: On the first bad file (named), with a count of the others.
    """
    samples = list_samples(cfg.data, "train") if samples is None else samples
    spec = MaskSpec.from_config(cfg.data)
    classes = cfg.data.classes
    px_cols = [f"px_{c}" for c in classes]
    fingerprint = _spec_fingerprint(spec, classes, cfg.split.verify_images)
    keys = pd.DataFrame({ID: samples[ID], "mask": samples["mask"], "image": samples["image"]})
    keys[["mask_mtime_ns", "mask_bytes"]] = [_file_keys(p) for p in samples["mask"]]
    keys[["image_mtime_ns", "image_bytes"]] = [_file_keys(p) for p in samples["image"]]

    cache_path = cfg.workdir / STATS_NAME
    cached = _load_cache(cache_path, fingerprint, px_cols)
    if cached is not None:
        merged = keys.merge(cached, on=[ID, *_STAT_KEYS], how="left")
        todo = merged["height"].isna().to_numpy()
    else:
        merged, todo = None, np.ones(len(keys), dtype=bool)

    items = [(r[ID], r["mask"], r["image"], spec, cfg.split.verify_images) for r in keys[todo].to_dict("records")]
    results = parallel_map(_scan_one, items, cfg.split.workers, on_progress)
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

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache_path, f"# kseg class pixel counts, spec {fingerprint}\n" + table.to_csv(index=False))

    unknown: dict[str, tuple[int, int]] = {}
    for blob in table["unknown"]:
        for value, count in json.loads(blob).items():
            pixels, masks = unknown.get(value, (0, 0))
            unknown[value] = (pixels + int(count), masks + 1)
    if spec.format == "color":
        unknown = {hex_color(int(k)): v for k, v in unknown.items()}
    out = table[[ID, "height", "width", "ignore", *px_cols]].reset_index(drop=True)
    return ClassStats(out, list(classes), unknown, n_scanned=len(items))


def _load_cache(path: Path, fingerprint: str, px_cols: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.readline()
        if fingerprint not in head:
            return None
        table = pd.read_csv(
            path,
            comment=None,
            skiprows=1,
            dtype={ID: str, "mask": str, "image": str, "unknown": str},
            keep_default_na=False,
        )
    except (OSError, ValueError, pd.errors.ParserError):
        return None  # a damaged cache is only a cache: scan again
    needed = {ID, *_STAT_KEYS, "height", "width", "ignore", "unknown", *px_cols}
    return table if needed <= set(table.columns) else None


def parallel_map(fn: Callable, items: list, workers: int | None, on_progress: Progress | None = None) -> list:
    """``[fn(item) for item in items]`` in worker processes (chunked; in order), with progress.

    ``fn`` must be a module-level function (it is pickled); small inputs run in this process.
    """
    total = len(items)
    if on_progress:
        on_progress(0, total)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total < 64:
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_progress:
                on_progress(i + 1, total)
        return results
    chunk = max(8, min(64, total // (workers * 8)))
    chunks = [items[i : i + chunk] for i in range(0, total, chunk)]
    out: list[list | None] = [None] * len(chunks)
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_apply_chunk, fn, c): i for i, c in enumerate(chunks)}
        for future in as_completed(futures):
            out[futures[future]] = future.result()
            done += len(chunks[futures[future]])
            if on_progress:
                on_progress(done, total)
    return [r for part in out for r in part]


# --------------------------------------------------------------------------------------- folds


def stratification_labels(counts: np.ndarray, area_bins: int) -> np.ndarray:
    """Binary targets to stratify on: class presence, and which area bin a present class falls in.

    Args:
        counts: Pixel counts per sample and class.
        area_bins: Quantile bins of a present class's area share (0 turns them off).

    Shape:
        counts ``(N, K)``; returns ``(N, L)`` uint8 with constant columns dropped.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    columns = [present]
    if area_bins > 1:
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        for k in range(counts.shape[1]):
            on = present[:, k]
            if on.sum() < area_bins:
                continue
            edges = np.quantile(share[on, k], np.linspace(0, 1, area_bins + 1)[1:-1])
            bins = np.searchsorted(edges, share[:, k], side="right")
            onehot = (bins[:, None] == np.arange(area_bins)[None, :]) & on[:, None]
            columns.append(onehot)
    labels = np.concatenate(columns, axis=1).astype(np.uint8)
    varying = labels.min(0) != labels.max(0)
    return labels[:, varying]


def _stratified_assign(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    folds = np.full(len(labels), -1, dtype=np.int64)
    if labels.shape[1] == 0:  # nothing varies: any shuffled split is as good
        rng = np.random.default_rng(seed)
        folds[rng.permutation(len(labels))] = np.arange(len(labels)) % n_folds
        return folds
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
        folds[val] = fold
    return folds


def plain_folds(n: int, n_folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """A shuffled, unstratified K-fold assignment (of groups when given), for comparison."""
    rng = np.random.default_rng(seed)
    if groups is None:
        folds = np.empty(n, dtype=np.int64)
        folds[rng.permutation(n)] = np.arange(n) % n_folds
        return folds
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_fold = np.empty(len(uniq), dtype=np.int64)
    group_fold[rng.permutation(len(uniq))] = np.arange(len(uniq)) % n_folds
    return group_fold[inverse]


def fold_shares(counts: np.ndarray, folds: np.ndarray, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Per fold and class: share of the fold's images that contain the class, and share of its pixels.

    Shape:
        counts ``(N, K)``, folds ``(N,)``; returns two ``(n_folds, K)`` arrays.
    """
    counts = np.asarray(counts, dtype=np.float64)
    image_share = np.zeros((n_folds, counts.shape[1]))
    pixel_share = np.zeros_like(image_share)
    for f in range(n_folds):
        part = counts[folds == f]
        if len(part):
            image_share[f] = (part > 0).mean(0)
            pixel_share[f] = part.sum(0) / max(part.sum(), 1)
    return image_share, pixel_share


def imbalance(counts: np.ndarray, folds: np.ndarray, n_folds: int) -> float:
    """How far folds stray from the whole set: mean relative deviation of each fold's per-class image
    share and pixel share from the whole set's, over classes present anywhere, in percent."""
    counts = np.asarray(counts, dtype=np.float64)
    overall_img = (counts > 0).mean(0)
    overall_px = counts.sum(0) / max(counts.sum(), 1)
    image_share, pixel_share = fold_shares(counts, folds, n_folds)
    on = overall_img > 0
    dev_img = np.abs(image_share[:, on] - overall_img[on]) / overall_img[on]
    dev_px = np.abs(pixel_share[:, on] - overall_px[on]) / overall_px[on]
    return float(100 * (dev_img.mean() + dev_px.mean()) / 2)


@dataclass
class SplitResult:
    """What ``make_folds`` decided and wrote.

    Attributes:
        folds: ``ImageID, fold``.
        stats: The class statistics it was made from.
        image_share: Per fold and class, share of images containing the class. Shape ``(F, K)``.
        pixel_share: Per fold and class, share of pixels. Shape ``(F, K)``.
        imbalance: ``imbalance()`` of these folds, percent.
        plain_imbalance: Mean ``imbalance()`` of 5 shuffled plain (group) K-folds, percent.
        n_groups: Number of split groups (``None`` without ``split.group_by``).
        path: Where ``folds.csv`` was written.
    """

    folds: pd.DataFrame
    stats: ClassStats
    image_share: np.ndarray
    pixel_share: np.ndarray
    imbalance: float
    plain_imbalance: float
    n_groups: int | None
    path: Path


def assign_folds(
    counts: np.ndarray, n_folds: int, seed: int, area_bins: int = 3, groups: np.ndarray | None = None
) -> np.ndarray:
    """Multilabel-stratified fold of each sample; with ``groups``, whole groups go to one fold.

    Args:
        counts: Class pixel counts per sample. Shape ``(N, K)``.
        n_folds: Number of folds.
        seed: Random seed.
        area_bins: Area bins per class in the stratification targets.
        groups: Optional group label per sample. Shape ``(N,)``.
    """
    counts = np.asarray(counts)
    if groups is None:
        return _stratified_assign(stratification_labels(counts, area_bins), n_folds, seed)
    uniq, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    group_counts = np.zeros((len(uniq), counts.shape[1]), dtype=np.int64)
    np.add.at(group_counts, inverse, counts)
    group_folds = _stratified_assign(stratification_labels(group_counts, area_bins), n_folds, seed)
    return group_folds[inverse]


def make_folds(cfg: Config, on_progress: Progress | None = None) -> SplitResult:
    """Scan the training masks and write ``<workdir>/folds.csv`` (``ImageID,fold``).

    Args:
        cfg: The experiment config (``split`` section).
        on_progress: Optional ``callback(done, total)`` for the mask scan.
    """
    samples = list_samples(cfg.data, "train")
    n_folds = cfg.split.n_folds
    groups = None
    if cfg.split.group_by:
        column = cfg.split.group_by
        extra = [c for c in samples.columns if c not in (ID, "image", "mask")]
        if column not in samples.columns or column in ("image", "mask"):
            choices = ", ".join(extra) if extra else "none: add a column to the CSV or a {field} to the pattern"
            raise SplitError(
                f"split.group_by {column!r} is not a column of the training table (columns: {choices}); "
                "fix split.group_by"
            )
        groups = samples[column].astype(str).to_numpy()
    if cfg.split.duplicates:  # near-copies found by 'kseg audit' never straddle folds
        from kseg.audit import merge_groups, read_duplicate_groups

        groups = merge_groups(samples[ID], groups, read_duplicate_groups(cfg))
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < n_folds:
            what = f"split.group_by {cfg.split.group_by!r}" if cfg.split.group_by else "split.duplicates"
            raise SplitError(
                f"{what} gives {n_groups} groups, fewer than split.n_folds={n_folds}; "
                f"lower split.n_folds to at most {n_groups}"
            )
    elif len(samples) < n_folds:
        raise SplitError(
            f"{len(samples)} training images cannot fill split.n_folds={n_folds} folds; lower split.n_folds"
        )

    stats = scan_masks(cfg, samples, on_progress)
    counts = stats.counts
    folds = assign_folds(counts, n_folds, cfg.split.seed, cfg.split.area_bins, groups)
    empty = sorted(set(range(n_folds)) - set(folds.tolist()))
    if empty:
        raise SplitError(f"fold(s) {empty} got no images; lower split.n_folds or change split.seed")
    table = pd.DataFrame({ID: samples[ID], "fold": folds})
    path = cfg.workdir / FOLDS_NAME
    atomic_write_text(path, table.to_csv(index=False))
    save_resolved(cfg)
    image_share, pixel_share = fold_shares(counts, folds, n_folds)
    plain = np.mean(
        [imbalance(counts, plain_folds(len(counts), n_folds, cfg.split.seed + s, groups), n_folds) for s in range(5)]
    )
    return SplitResult(
        folds=table,
        stats=stats,
        image_share=image_share,
        pixel_share=pixel_share,
        imbalance=imbalance(counts, folds, n_folds),
        plain_imbalance=float(plain),
        n_groups=None if groups is None else len(set(groups)),
        path=path,
    )


def read_folds(cfg: Config) -> pd.DataFrame:
    """``<workdir>/folds.csv`` as written by ``kseg split``."""
    path = cfg.workdir / FOLDS_NAME
    if not path.is_file():
        raise KsegError(f"{path} does not exist; run 'kseg split' first")
    table = pd.read_csv(path, dtype={ID: str})
    if list(table.columns[:2]) != [ID, "fold"]:
        raise KsegError(f"{path} does not start with columns ImageID,fold; run 'kseg split' again")
    return table


__all__ = [
    "ClassStats",
    "SplitResult",
    "assign_folds",
    "fold_shares",
    "imbalance",
    "make_folds",
    "plain_folds",
    "read_folds",
    "scan_masks",
    "stratification_labels",
]
