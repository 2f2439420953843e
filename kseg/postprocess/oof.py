"""Out-of-fold statistics for the post-processing search: per image and class, histograms of the class's
probability split by whether the truth agrees, read once from every fold's OOF files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kseg.bits import LABEL_THRESHOLD, class_planes
from kseg.common import Progress
from kseg.config import Config
from kseg.data.reading import ID
from kseg.errors import KsegError, TuneError
from kseg.postprocess.params import threshold_grid
from kseg.workspace.oof import read_oof, read_oof_presence
from kseg.workspace.workdir import WorkDir


@dataclass(frozen=True)
class OOFRun:
    """A run's out-of-fold files and how to read them: its work folder, class count, mode, and the classes
    the metric scores (``submission.classes``)."""

    workdir: Path
    n_classes: int
    multilabel: bool
    scored_classes: list[int]

    @classmethod
    def from_config(cls, cfg: Config) -> OOFRun:
        return cls(cfg.workdir, cfg.n_classes, cfg.multilabel, list(cfg.scored_classes))


@dataclass
class OOFSet:
    """Per-image statistics of every fold's out-of-fold predictions.

    Attributes:
        ids: Image ids.
        folds: Fold of each image.
        hist: ``(N, K, 2, 256)`` int32: pixels predicted as class k (argmax; multilabel: every pixel) by
            the uint8 probability of k, split into truth != k (0) and truth == k (1); ignored pixels are
            left out.
        truth_area: ``(N, K)`` true pixels per class.
        n_pixels: Scored pixels per image.
        confusion: ``(K, K)`` truth x argmax pixel counts over all images (multilabel: pixels holding true
            class t and predicted class p at 0.5).
        presence: ``(N, K)`` float32 presence head scores (``model.presence_head``), or ``None`` when an
            image has none (a run without the head: its gates are drawn from the masks).
    """

    ids: list[str]
    folds: np.ndarray
    hist: np.ndarray
    truth_area: np.ndarray
    n_pixels: np.ndarray
    confusion: np.ndarray
    resolution: tuple[int, int]
    multilabel: bool = False
    presence: np.ndarray | None = None

    @property
    def thresholds(self) -> np.ndarray:
        """The threshold grid searched (``identity`` says which entry is no post-processing)."""
        return threshold_grid(self.multilabel)[0]

    def level(self, threshold: float) -> int:
        """The index of ``threshold`` (the nearest) in the threshold grid."""
        return int(np.argmin(np.abs(self.thresholds - threshold)))

    @property
    def identity(self) -> tuple[int, int]:
        """Grid indices (threshold, min area) of no post-processing: argmax, or sigmoid at 0.5."""
        return threshold_grid(self.multilabel)[1]


class OOFBuilder:
    """Collects ``OOFSet`` statistics image by image, from uint8 probabilities and true labels."""

    def __init__(self, n_classes: int, multilabel: bool = False):
        self.k = n_classes
        self.multilabel = multilabel
        self.ids: list[str] = []
        self.folds: list[int] = []
        self.hists: list[np.ndarray] = []
        self.areas: list[np.ndarray] = []
        self.pixels: list[int] = []
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        self.resolution = (0, 0)
        self.presence: list[np.ndarray | None] = []

    def add(
        self, image_id: str, fold: int, probs: np.ndarray, truth: np.ndarray, presence: np.ndarray | None = None
    ) -> None:
        """One image: ``probs`` ``(K, H, W)`` uint8, ``truth`` ``(H, W)`` (values >= K are not scored),
        ``presence`` ``(K,)`` its presence head's scores, if any."""
        self.ids.append(image_id)
        self.folds.append(fold)
        self.presence.append(None if presence is None else np.asarray(presence, dtype=np.float32))
        self.resolution = (int(probs.shape[1]), int(probs.shape[2]))
        if self.multilabel:
            self._add_planes(np.asarray(probs), np.asarray(truth))
            return
        import torch  # here, not at the top: reading post-processing needs no torch

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

    def _add_planes(self, probs: np.ndarray, truth: np.ndarray) -> None:
        """Multilabel: every scored pixel of each class by its probability level, split by the truth bit."""
        k = self.k
        scored = truth < 2**k  # anything else is the ignore index
        true = class_planes(truth, k, True) & scored
        level = probs.reshape(k, -1)[:, scored.ravel()].astype(np.int64)
        hit = true.reshape(k, -1)[:, scored.ravel()]
        code = np.arange(k)[:, None] * 512 + hit * 256 + level
        self.hists.append(np.bincount(code.ravel(), minlength=k * 512).reshape(k, 2, 256).astype(np.int32))
        self.areas.append(hit.sum(1))
        self.pixels.append(int(scored.sum()))
        predicted = level >= round(LABEL_THRESHOLD * 255)
        self.confusion += hit.astype(np.int64) @ predicted.T.astype(np.int64)

    def build(self) -> OOFSet:
        """The statistics; presence scores only when every image has them (every fold's model a head)."""
        whole = bool(self.presence) and all(p is not None for p in self.presence)
        return OOFSet(
            self.ids,
            np.array(self.folds),
            np.stack(self.hists),
            np.stack(self.areas),
            np.array(self.pixels),
            self.confusion,
            self.resolution,
            self.multilabel,
            np.stack(self.presence) if whole else None,  # type: ignore[arg-type]
        )


def read_oof_images(
    workdir: Path, n_classes: int, on_progress: Progress | None = None
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Every fold's OOF images: ``(id, fold, probabilities (K, H, W) uint8, true labels (H, W), presence
    scores (K,) or None)``.

    Raises:
        TuneError: No fold has OOF files, or a fold's cannot be read or has other classes.
    """
    work = WorkDir(workdir)
    folds = work.oof_folds()
    if not folds:
        raise TuneError(f"no out-of-fold predictions in {workdir} (fold*/oof.npy); run 'kseg train' first")
    k = n_classes
    tables, presence = {}, {}
    for f in folds:
        try:
            tables[f] = read_oof(work, f)
            presence[f] = read_oof_presence(work, f, tuple(tables[f][0].shape[:2]))
        except KsegError as exc:
            raise TuneError(f"{exc}; train the fold again with 'kseg train --fold {f}'") from None
    total = sum(len(table) for _, _, table in tables.values())
    sizes = {f: tuple(probs.shape[2:]) for f, (probs, _, _) in tables.items()}
    first = folds[0]
    odd = next((f for f in folds if sizes[f] != sizes[first]), None)
    if odd is not None:
        (h0, w0), (h1, w1) = sizes[first], sizes[odd]
        raise TuneError(
            f"fold {odd}'s out-of-fold maps are {h1}x{w1} but fold {first}'s are {h0}x{w0} (the folds were trained "
            "with different data.image_size); train every fold of a work folder at one size"
        )
    done = 0
    for f, (probs, masks, table) in tables.items():
        if probs.shape[1] != k:
            raise TuneError(f"fold {f}'s OOF has {probs.shape[1]} classes but the config has {k}; train it again")
        scores = presence[f]
        for i in range(len(table)):
            yield table[ID].iloc[i], f, probs[i], masks[i], None if scores is None else scores[i]
            done += 1
            if on_progress:
                on_progress(done, total)


def load_oof(workdir: Path, n_classes: int, multilabel: bool, on_progress: Progress | None = None) -> OOFSet:
    """Read every fold's OOF files once into compact per-image statistics."""
    builder = OOFBuilder(n_classes, multilabel)
    for image_id, fold, probs, truth, presence in read_oof_images(workdir, n_classes, on_progress):
        builder.add(image_id, fold, probs, truth, presence)
    return builder.build()


def class_table(oof: OOFSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted area and intersection of class k, per image and threshold level.

    Shape:
        Returns two ``(N, T)`` arrays for the ``THRESHOLDS`` grid.
    """
    h = oof.hist[:, k].astype(np.int64)  # (N, 2, 256)
    above = np.cumsum(h[..., ::-1], axis=-1)[..., ::-1]  # pixels with probability level >= v
    levels = np.minimum(np.ceil(oof.thresholds * 255 - 1e-6).astype(int), 255)
    area = above[:, 0, levels] + above[:, 1, levels]
    inter = above[:, 1, levels]
    return area, inter
