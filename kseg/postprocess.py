"""Post-processing tuned on out-of-fold (OOF) predictions: per-class probability thresholds and
minimum areas.

With one submission row per image and class, and Dice = 1 for an empty row only when the prediction is
empty too, a few stray pixels of an absent class cost a whole row. For each class ``k`` two parameters
are searched:

- ``threshold``: a pixel keeps class ``k`` only if ``k`` is its argmax **and** ``p_k >= threshold``
  (0 = plain argmax);
- ``min_area``: if fewer than this share of the image's pixels keep class ``k``, the row is emptied.

Pixels removed this way belong to no class (label 255), so the other rows are untouched: classes are
tuned independently and the score the tuner reports is the score the submission gets. The search is
exhaustive over a grid and includes the identity (0, 0), so the in-sample OOF score can only rise.

It is fast because each OOF image is read once: for the pixels of each predicted class, a histogram of
that class's probability (256 uint8 levels) split by whether the truth agrees gives, by reverse
cumulative sums, the predicted area and the intersection for every threshold at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kseg.config import Config
from kseg.data import ID
from kseg.errors import TuneError
from kseg.metrics import class_scores
from kseg.progress import Progress
from kseg.workdir import POSTPROCESS_NAME, WorkDir

__all__ = [
    "AREA_FRACTIONS",
    "NO_CLASS",
    "THRESHOLDS",
    "ClassParams",
    "OOFBuilder",
    "OOFSet",
    "PostProcess",
    "TuneError",
    "TuneResult",
    "apply",
    "apply_to_labels",
    "class_table",
    "load",
    "load_oof",
    "tune",
    "tune_oof",
]
THRESHOLDS = np.round(np.concatenate([[0.0], np.arange(0.30, 0.951, 0.05)]), 2)
AREA_FRACTIONS = np.concatenate([[0.0], np.geomspace(1e-5, 0.05, 24)])
NO_CLASS = 255


@dataclass
class ClassParams:
    """Post-processing of one class."""

    threshold: float = 0.0
    min_area: float = 0.0  # share of the image's pixels


@dataclass
class PostProcess:
    """Per-class parameters, as stored in ``postprocess.json``."""

    classes: list[str]
    params: dict[str, ClassParams]
    oof_score_before: float = float("nan")
    oof_score_after: float = float("nan")
    holdout_gain: float = float("nan")
    n_images: int = 0
    resolution: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        tree = asdict(self)
        return json.dumps(tree, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = POSTPROCESS_NAME) -> PostProcess:
        try:
            tree = json.loads(text)
            params = {k: ClassParams(**v) for k, v in tree.pop("params").items()}
            return cls(params=params, **tree)
        except (ValueError, TypeError, KeyError) as exc:
            raise TuneError(f"{source} is not a kseg post-processing file ({exc}); run 'kseg tune' again") from None

    @property
    def identity(self) -> bool:
        return all(p.threshold == 0 and p.min_area == 0 for p in self.params.values())


# ------------------------------------------------------------------------------------------ apply


def apply(probs: torch.Tensor | np.ndarray, post: PostProcess | None) -> np.ndarray:
    """Labels from probabilities with the post-processing applied (argmax when ``post`` is None).

    Shape:
        probs ``(K, H, W)`` (float 0-1, or uint8 0-255); returns ``(H, W)`` uint8, 255 = no class.
    """
    p = torch.from_numpy(np.array(probs)) if isinstance(probs, np.ndarray) else probs
    if p.dtype == torch.uint8:
        p = p.float() / 255
    labels = p.argmax(0).to(torch.uint8)
    if post is None:
        return labels.numpy()
    height, width = labels.shape
    for k, name in enumerate(post.classes):
        params = post.params.get(name)
        if params is None:
            continue
        mine = labels == k
        if params.threshold > 0:
            weak = mine & (p[k] < params.threshold - 1e-6)
            labels[weak] = NO_CLASS
            mine = mine & ~weak
        if params.min_area > 0 and int(mine.sum()) < params.min_area * height * width:
            labels[mine] = NO_CLASS
    return labels.numpy()


def apply_to_labels(labels: np.ndarray, post: PostProcess | None) -> np.ndarray:
    """The area part of the post-processing, on label maps alone (thresholds need probabilities)."""
    if post is None:
        return labels
    labels = labels.copy()
    size = labels.size
    counts = np.bincount(labels.ravel(), minlength=256)
    for k, name in enumerate(post.classes):
        params = post.params.get(name)
        if params is not None and params.min_area > 0 and counts[k] < params.min_area * size:
            labels[labels == k] = NO_CLASS
    return labels


def load(cfg: Config) -> PostProcess | None:
    """``<workdir>/postprocess.json`` if it exists (checked against the config's classes)."""
    work = WorkDir(cfg.workdir)
    text = work.read_postprocess()
    if text is None:
        return None
    path = work.postprocess_json
    post = PostProcess.from_json(text, str(path))
    if post.classes != list(cfg.data.classes):
        raise TuneError(
            f"{path} was tuned for classes {post.classes}, not {list(cfg.data.classes)}; run 'kseg tune' again"
        )
    return post


# ------------------------------------------------------------------------------------------- OOF


@dataclass
class OOFSet:
    """Per-image statistics of every fold's out-of-fold predictions.

    Attributes:
        ids: Image ids.
        folds: Fold of each image.
        hist: ``(N, K, 2, 256)`` int32: pixels predicted as class k (argmax) by the uint8 probability
            of k, split into truth != k (0) and truth == k (1); ignored pixels are left out.
        truth_area: ``(N, K)`` true pixels per class.
        n_pixels: Scored pixels per image.
        confusion: ``(K, K)`` truth x argmax pixel counts over all images.
    """

    ids: list[str]
    folds: np.ndarray
    hist: np.ndarray
    truth_area: np.ndarray
    n_pixels: np.ndarray
    confusion: np.ndarray
    resolution: tuple[int, int]


class OOFBuilder:
    """Collects ``OOFSet`` statistics image by image, from uint8 probabilities and true labels."""

    def __init__(self, n_classes: int):
        self.k = n_classes
        self.ids: list[str] = []
        self.folds: list[int] = []
        self.hists: list[np.ndarray] = []
        self.areas: list[np.ndarray] = []
        self.pixels: list[int] = []
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        self.resolution = (0, 0)

    def add(self, image_id: str, fold: int, probs: np.ndarray, truth: np.ndarray) -> None:
        """One image: ``probs`` ``(K, H, W)`` uint8, ``truth`` ``(H, W)`` (values >= K are not scored)."""
        k = self.k
        p = torch.from_numpy(np.array(probs))
        labels = torch.from_numpy(np.asarray(truth).astype(np.int64))
        top = p.max(0)
        predicted = top.indices
        scored = labels < k
        agree = (labels == predicted) & scored
        code = (predicted * 512 + agree.long() * 256 + top.values.long())[scored]
        self.hists.append(torch.bincount(code, minlength=k * 512).view(k, 2, 256).to(torch.int32).numpy())
        self.areas.append(torch.bincount(labels[scored], minlength=k)[:k].numpy())
        self.pixels.append(int(scored.sum()))
        self.confusion += torch.bincount(labels[scored] * k + predicted[scored], minlength=k * k).view(k, k).numpy()
        self.ids.append(image_id)
        self.folds.append(fold)
        self.resolution = (int(p.shape[1]), int(p.shape[2]))

    def build(self) -> OOFSet:
        return OOFSet(
            self.ids,
            np.array(self.folds),
            np.stack(self.hists),
            np.stack(self.areas),
            np.array(self.pixels),
            self.confusion,
            self.resolution,
        )


def load_oof(cfg: Config, on_progress: Progress | None = None) -> OOFSet:
    """Read every fold's OOF files once into compact per-image statistics."""
    work = WorkDir(cfg.workdir)
    folds = work.oof_folds()
    if not folds:
        raise TuneError(f"no out-of-fold predictions in {cfg.workdir} (fold*/oof.npy); run 'kseg train' first")
    k = len(cfg.data.classes)
    tables = {}
    for f in folds:
        try:
            tables[f] = work.read_oof(f)
        except (OSError, ValueError) as exc:
            raise TuneError(
                f"the OOF files of fold {f} in {work.fold_dir(f)} cannot be read ({exc}); train the fold again"
            ) from None
    total = sum(len(table) for _, _, table in tables.values())
    builder = OOFBuilder(k)
    for f, (probs, masks, table) in tables.items():
        if probs.shape[1] != k:
            raise TuneError(f"fold {f}'s OOF has {probs.shape[1]} classes but the config has {k}; train it again")
        for i in range(len(table)):
            builder.add(table[ID].iloc[i], f, probs[i], masks[i])
            if on_progress:
                on_progress(len(builder.ids), total)
    return builder.build()


def class_table(oof: OOFSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted area and intersection of class k, per image and threshold level.

    Shape:
        Returns two ``(N, T)`` arrays for the ``THRESHOLDS`` grid.
    """
    h = oof.hist[:, k].astype(np.int64)  # (N, 2, 256)
    above = np.cumsum(h[..., ::-1], axis=-1)[..., ::-1]  # pixels with probability level >= v
    levels = np.minimum(np.ceil(THRESHOLDS * 255 - 1e-6).astype(int), 255)
    area = above[:, 0, levels] + above[:, 1, levels]
    inter = above[:, 1, levels]
    return area, inter


def _score_grid(
    area: np.ndarray, inter: np.ndarray, truth: np.ndarray, n_pixels: np.ndarray, metric: str
) -> np.ndarray:
    """One class's metric for every (threshold, min area) pair.

    Shape:
        area, inter ``(N, T)``; truth, n_pixels ``(N,)``; returns ``(T, A)``.
    """
    minimum = AREA_FRACTIONS[None, None, :] * n_pixels[:, None, None]
    emptied = area[:, :, None] < minimum
    a = np.where(emptied, 0, area[:, :, None])
    i = np.where(emptied, 0, inter[:, :, None])
    return class_scores(i, a, np.broadcast_to(truth[:, None, None], a.shape), metric)


def _search(oof: OOFSet, rows: np.ndarray, metric: str) -> tuple[dict[int, tuple[int, int]], np.ndarray, np.ndarray]:
    """Best (threshold index, area index) per class on the chosen images.

    Returns:
        ``(choice per class, score before (K,), score after (K,))``: each class's share of the metric.
    """
    k_count = oof.hist.shape[1]
    choice, before, after = {}, np.zeros(k_count), np.zeros(k_count)
    for k in range(k_count):
        area, inter = class_table(oof, k)
        grid = _score_grid(area[rows], inter[rows], oof.truth_area[rows, k], oof.n_pixels[rows], metric)
        t, a = np.unravel_index(np.argmax(grid), grid.shape)
        best = (int(t), int(a)) if grid[t, a] > grid[0, 0] else (0, 0)  # ties keep the identity
        choice[k] = best
        before[k], after[k] = grid[0, 0], grid[best]
    return choice, before, after


def _score(oof: OOFSet, rows: np.ndarray, choice: dict[int, tuple[int, int]], metric: str) -> float:
    scores = []
    for k, (t, a) in choice.items():
        area, inter = class_table(oof, k)
        grid = _score_grid(area[rows][:, [t]], inter[rows][:, [t]], oof.truth_area[rows, k], oof.n_pixels[rows], metric)
        scores.append(grid[0, a])
    return float(np.mean(scores))


@dataclass
class TuneResult:
    """What ``tune`` found and wrote."""

    post: PostProcess
    class_before: dict[str, float]
    class_after: dict[str, float]
    holdout_before: float
    holdout_after: float
    path: Path | None  # postprocess.json, once written
    oof: OOFSet
    metric: str = "row_dice"


def tune(cfg: Config, seed: int = 0, on_progress: Progress | None = None) -> TuneResult:
    """Search per-class thresholds and minimum areas that maximise the OOF metric (``submission.metric``).

    The in-sample gain is reported next to a held-out one: the OOF images are split in two halves; the
    parameters tuned on each half score the other, and the two results are averaged.
    """
    oof = load_oof(cfg, on_progress)
    result = tune_oof(oof, list(cfg.data.classes), seed, cfg.submission.metric)
    path = WorkDir(cfg.workdir).write_postprocess(result.post.to_json())
    result.path = path
    return result


def tune_oof(oof: OOFSet, classes: list[str], seed: int = 0, metric: str = "row_dice") -> TuneResult:
    """``tune`` on statistics already collected (``load_oof``, or a blend's); writes nothing."""
    everything = np.arange(len(oof.ids))
    choice, before, after = _search(oof, everything, metric)
    order = np.random.default_rng(seed).permutation(len(oof.ids))
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    holdout_before, holdout_after = [], []
    if min(len(h) for h in halves):
        identity = {k: (0, 0) for k in range(len(classes))}
        for fit, check in (halves, halves[::-1]):
            tuned, _, _ = _search(oof, fit, metric)
            holdout_before.append(_score(oof, check, identity, metric))
            holdout_after.append(_score(oof, check, tuned, metric))
    hb = float(np.mean(holdout_before)) if holdout_before else float("nan")
    ha = float(np.mean(holdout_after)) if holdout_after else float("nan")
    params = {
        name: ClassParams(float(THRESHOLDS[choice[k][0]]), float(AREA_FRACTIONS[choice[k][1]]))
        for k, name in enumerate(classes)
    }
    post = PostProcess(
        classes, params, float(before.mean()), float(after.mean()), ha - hb, len(oof.ids), list(oof.resolution)
    )
    return TuneResult(
        post,
        dict(zip(classes, before.tolist(), strict=True)),
        dict(zip(classes, after.tolist(), strict=True)),
        hb,
        ha,
        None,
        oof,
        metric,
    )
