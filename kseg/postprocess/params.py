"""Post-processing parameters (``postprocess.json``) and how they turn probabilities into labels."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: reading post-processing needs no torch
    import torch

from pathlib import Path

from kseg.bits import LABEL_THRESHOLD, class_planes, pack_planes
from kseg.errors import TuneError
from kseg.workspace.workdir import POSTPROCESS_NAME, WorkDir

THRESHOLDS = np.round(np.concatenate([[0.0], np.arange(0.30, 0.951, 0.05)]), 2)
MULTILABEL_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)  # includes LABEL_THRESHOLD, the identity
AREA_FRACTIONS = np.concatenate([[0.0], np.geomspace(1e-5, 0.05, 24)])
NO_CLASS = 255


PRESENCE_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)  # the presence head's gates searched


@dataclass
class ClassParams:
    """Post-processing of one class: the mask rule (``threshold``, ``min_area``) and, in front of it, at
    most one of two presence gates:

    - ``gate`` > 0, drawn from the mask (the "triplet" of Kaggle write-ups): an image keeps the class only
      if at least ``gate_area`` of its pixels, and at least one, reach ``gate``; its mask is then drawn at
      ``threshold``;
    - ``presence`` > 0, the presence head's (``model.presence_head``): an image keeps the class only if its
      presence score reaches ``presence``.

    Files written before the gates existed read as no gate."""

    threshold: float = 0.0
    min_area: float = 0.0  # share of the image's pixels
    gate: float = 0.0  # mask gate: probability threshold (0: no gate)
    gate_area: float = 0.0  # share of the image's pixels that must reach the gate
    presence: float = 0.0  # head gate: presence score threshold (0: no gate)

    def gated_out(self, strong_pixels: int, n_pixels: int, presence: float | None = None) -> bool:
        """Whether a gate empties the row: ``strong_pixels`` of the image's ``n_pixels`` reach ``gate``;
        ``presence`` is the image's presence score of the class (needed when the head gate is set)."""
        if self.presence > 0:
            if presence is None:
                raise TuneError(
                    f"the post-processing gates on a presence score of {self.presence:g} but the prediction has "
                    "none (its models have no presence head); predict with the run it was tuned on, or run "
                    "'kseg tune' again"
                )
            if presence < self.presence:
                return True
        return self.gate > 0 and strong_pixels < max(1.0, self.gate_area * n_pixels)


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
    multilabel: bool = False

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
        plain = (0.0, LABEL_THRESHOLD) if self.multilabel else (0.0,)
        return all(
            p.threshold in plain and p.min_area == 0 and p.gate == 0 and p.presence == 0 for p in self.params.values()
        )

    @property
    def gated(self) -> list[str]:
        """The classes with a presence gate (from the mask, or the presence head)."""
        return [name for name, p in self.params.items() if p.gate > 0 or p.presence > 0]

    @property
    def needs_presence(self) -> bool:
        """Whether a class is gated on the presence head's score (predictions must carry it)."""
        return any(p.presence > 0 for p in self.params.values())


def _score_of(presence: torch.Tensor | np.ndarray | None, k: int) -> float | None:
    return None if presence is None else float(presence[k])


def apply(
    probs: torch.Tensor | np.ndarray,
    post: PostProcess | None,
    multilabel: bool = False,
    presence: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Labels from probabilities with the post-processing applied (argmax when ``post`` is None).

    Shape:
        probs ``(K, H, W)`` (float 0-1, or uint8 0-255), presence ``(K,)`` the image's presence scores
        (needed by head gates); returns ``(H, W)`` uint8, 255 = no class (``multilabel``: class bitmasks,
        0 = no class).
    """
    import torch

    p = torch.from_numpy(np.array(probs)) if isinstance(probs, np.ndarray) else probs
    if p.dtype == torch.uint8:
        p = p.float() / 255
    if multilabel:
        return _apply_multilabel(p, post, presence)
    labels = p.argmax(0).to(torch.uint8)
    if post is None:
        return labels.numpy()
    height, width = labels.shape
    for k, name in enumerate(post.classes):
        params = post.params.get(name)
        if params is None:
            continue
        mine = labels == k
        strong = int((mine & (p[k] >= params.gate - 1e-6)).sum()) if params.gate > 0 else 0
        if params.gated_out(strong, height * width, _score_of(presence, k)):
            labels[mine] = NO_CLASS
            continue
        if params.threshold > 0:
            weak = mine & (p[k] < params.threshold - 1e-6)
            labels[weak] = NO_CLASS
            mine = mine & ~weak
        if params.min_area > 0 and int(mine.sum()) < params.min_area * height * width:
            labels[mine] = NO_CLASS
    return labels.numpy()


def _apply_multilabel(
    p: torch.Tensor, post: PostProcess | None, presence: torch.Tensor | np.ndarray | None
) -> np.ndarray:
    height, width = p.shape[1:]
    planes = np.zeros(p.shape, dtype=bool)
    for k in range(len(p)):
        params = post.params.get(post.classes[k]) if post is not None else None
        threshold = params.threshold if params is not None and params.threshold > 0 else LABEL_THRESHOLD
        strong = int((p[k] >= params.gate - 1e-6).sum()) if params is not None and params.gate > 0 else 0
        if params is not None and params.gated_out(strong, height * width, _score_of(presence, k)):
            continue  # the class's plane stays empty
        planes[k] = (p[k] >= threshold - 1e-6).numpy()
        if params is not None and params.min_area > 0 and planes[k].sum() < params.min_area * height * width:
            planes[k] = False
    return pack_planes(planes)


def apply_to_labels(labels: np.ndarray, post: PostProcess | None, multilabel: bool = False) -> np.ndarray:
    """The area part of the post-processing, on label maps alone (thresholds need probabilities)."""
    if post is None:
        return labels
    if multilabel:
        planes = class_planes(labels, len(post.classes), True)
        for k, name in enumerate(post.classes):
            params = post.params.get(name)
            if params is not None and params.min_area > 0 and planes[k].sum() < params.min_area * labels.size:
                planes[k] = False
        return pack_planes(planes)
    labels = labels.copy()
    size = labels.size
    counts = np.bincount(labels.ravel(), minlength=256)
    for k, name in enumerate(post.classes):
        params = post.params.get(name)
        if params is not None and params.min_area > 0 and counts[k] < params.min_area * size:
            labels[labels == k] = NO_CLASS
    return labels


def load(workdir: Path, classes: list[str], multilabel: bool) -> PostProcess | None:
    """``<workdir>/postprocess.json`` if it exists (checked against the run's classes and mode)."""
    work = WorkDir(workdir)
    text = work.read_postprocess()
    if text is None:
        return None
    path = work.postprocess_json
    post = PostProcess.from_json(text, str(path))
    if post.classes != list(classes):
        raise TuneError(f"{path} was tuned for classes {post.classes}, not {list(classes)}; run 'kseg tune' again")
    if post.multilabel != multilabel:
        mode = "multilabel" if post.multilabel else "multiclass"
        raise TuneError(f"{path} was tuned for {mode} predictions, unlike the config's; run 'kseg tune' again")
    return post


def threshold_grid(multilabel: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """The thresholds searched, and the grid indices (threshold, min area) of no post-processing: the
    argmax, or (multilabel) each sigmoid cut at 0.5."""
    if multilabel:
        return MULTILABEL_THRESHOLDS, (int(np.flatnonzero(np.isclose(MULTILABEL_THRESHOLDS, LABEL_THRESHOLD))[0]), 0)
    return THRESHOLDS, (0, 0)
