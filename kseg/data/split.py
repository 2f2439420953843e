"""Stratified (group) K-fold splits of the training images.

Folds come from ``MultilabelStratifiedKFold`` over per-class presence plus per-class area bins (from the
mask scan of ``kseg.data.scan``), so both rare classes and the area of common ones are balanced across folds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kseg.common import Progress
from kseg.config import Config, DataConfig, save_resolved
from kseg.data.groups import merge_groups, read_duplicate_groups
from kseg.data.reading import ID, list_samples
from kseg.data.scan import ClassStats, class_pixel_counts, scan_masks
from kseg.errors import KsegError, SplitError, TrainError
from kseg.workspace.workdir import WorkDir


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


def id_groups(ids: list[str], pattern: str) -> np.ndarray:
    """The group of each image id: the first group of ``pattern`` where it matches, else the id itself."""
    regex = re.compile(pattern)
    out = []
    for image_id in ids:
        match = regex.search(image_id)
        out.append(match.group(1) if match and match.group(1) is not None else image_id)
    return np.array(out, dtype=str)


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
    if cfg.split.group_pattern:
        by_id = id_groups(samples[ID].tolist(), cfg.split.group_pattern)
        groups = by_id if groups is None else np.char.add(np.char.add(groups, "\x00"), by_id)
    if cfg.split.duplicates:  # near-copies found by 'kseg audit' never straddle folds
        groups = merge_groups(samples[ID], groups, read_duplicate_groups(WorkDir(cfg.workdir)))
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < n_folds:
            what = (
                f"split.group_by {cfg.split.group_by!r}"
                if cfg.split.group_by
                else f"split.group_pattern {cfg.split.group_pattern!r}"
                if cfg.split.group_pattern
                else "split.duplicates"
            )
            raise SplitError(
                f"{what} gives {n_groups} groups, fewer than split.n_folds={n_folds}; "
                f"lower split.n_folds to at most {n_groups}"
            )
    elif len(samples) < n_folds:
        raise SplitError(
            f"{len(samples)} training images cannot fill split.n_folds={n_folds} folds; lower split.n_folds"
        )

    stats = scan_masks(cfg.data, cfg.split, cfg.workdir, samples, on_progress)
    counts = stats.counts
    folds = assign_folds(counts, n_folds, cfg.split.seed, cfg.split.area_bins, groups)
    empty = sorted(set(range(n_folds)) - set(folds.tolist()))
    if empty:
        raise SplitError(f"fold(s) {empty} got no images; lower split.n_folds or change split.seed")
    table = pd.DataFrame({ID: samples[ID], "fold": folds})
    work = WorkDir(cfg.workdir)
    keep_trained_folds(work, table)
    path = work.write_folds(table)
    save_resolved(cfg, work.config_yaml)
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


def keep_trained_folds(work: WorkDir, table: pd.DataFrame) -> None:
    """Refuse a new ``folds.csv`` that moves images under folds already trained from the old one: their
    checkpoints and out-of-fold files would be scored, resumed and blended against folds that put their own
    training images in validation."""
    trained = work.folds_with("config.yaml")
    if not trained or not work.folds_csv.is_file():
        return
    try:
        old = work.read_folds()
    except KsegError:
        return  # unreadable: nothing to keep consistent with
    was = dict(zip(old[ID].astype(str), old["fold"].astype(int), strict=True))
    now = dict(zip(table[ID].astype(str), table["fold"].astype(int), strict=True))
    moved = [i for i in now if was.get(i) != now[i]] + [i for i in was if i not in now]
    if moved:
        raise SplitError(
            f"{work.folds_csv} has trained folds ({', '.join(map(str, trained))}) and this split changes the fold "
            f"of {len(moved)} image(s) (e.g. {moved[0]}), so models would be validated on images they trained on; "
            f"write the new split to another work folder (--set workdir=...), or remove {work.root}/fold* first"
        )


def fold_tables(data: DataConfig, workdir: Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """A fold's training and validation rows of ``workdir/folds.csv`` joined to the samples of ``data``, and
    the training rows' class pixel counts (``None`` without ``class_pixels.csv``).

    Raises:
        TrainError: The fold does not exist, or an image is missing from ``folds.csv``.
    """
    work = WorkDir(workdir)
    folds = work.read_folds()
    n_folds = int(folds["fold"].max()) + 1
    if not 0 <= fold < n_folds:
        raise TrainError(f"fold {fold} does not exist: folds.csv has folds 0-{n_folds - 1}; pick one of them or 'all'")
    samples = list_samples(data, "train")
    merged = samples.merge(folds[[ID, "fold"]], on=ID, how="left")
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), ID].iloc[0]
        raise TrainError(f"image {missing!r} is not in {work.folds_csv}: the data changed; run 'kseg split' again")
    counts = class_pixel_counts(work, merged[ID], list(data.classes))
    held_out = (merged["fold"] == fold).to_numpy()
    train = merged[~held_out].reset_index(drop=True)
    val = merged[held_out].reset_index(drop=True)
    return train, val, counts[~held_out] if counts is not None else None


__all__ = [
    "fold_tables",
    "ClassStats",
    "SplitResult",
    "assign_folds",
    "fold_shares",
    "imbalance",
    "make_folds",
    "plain_folds",
    "stratification_labels",
]


def with_pseudo_rows(train: pd.DataFrame, val: pd.DataFrame, pseudo: pd.DataFrame) -> pd.DataFrame:
    """The fold's training rows followed by the pseudo-labelled ones (column ``pseudo`` marks them).

    Raises:
        TrainError: A pseudo-labelled image is one of the competition's training images (by id or file):
            it would put a validation image, with a model's labels, into training.
    """
    known = pd.concat([train, val])
    files = {str(Path(p).resolve()) for p in known["image"]}
    by_file = pseudo["image"].map(lambda p: str(Path(p).resolve()) in files)
    same = pseudo[pseudo["ImageID"].isin(known["ImageID"]) | by_file]
    if len(same):
        raise TrainError(
            f"pseudo-labelled image {same['image'].iloc[0]} is also a training image ({same['ImageID'].iloc[0]}); "
            "pseudo-label the test images or another folder of unlabelled images, not the training set"
        )
    rows = pd.concat([train.assign(pseudo=False), pseudo.assign(pseudo=True)], ignore_index=True)
    return rows
