"""Validation as the leaderboard scores it: each held-out image predicted at its own size, counted per
image and class as ``kseg score`` counts, with out-of-fold probabilities kept for tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kseg.bits import class_planes, hard_labels
from kseg.data.images import load_image
from kseg.data.reading import ID, MaskSpec, read_mask
from kseg.metrics.instances import mask_fbeta
from kseg.metrics.scores import label_counts, metric_score, row_dice, row_iou
from kseg.prediction.predictor import Predictor


@dataclass
class EpochStats:
    """One epoch's figures (one row of ``metrics.csv``)."""

    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_dice: float
    class_dice: dict[str, float]
    class_iou: dict[str, float]
    images_per_s: float
    seconds: float
    best: bool = False
    pixel_accuracy: float = float("nan")
    class_precision: dict[str, float] = field(default_factory=dict)
    class_recall: dict[str, float] = field(default_factory=dict)
    val_score: float = float("nan")  # the configured metric (submission.metric); equals val_dice by default

    def row(self) -> dict[str, float]:
        out = {
            "epoch": self.epoch,
            "lr": self.lr,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_dice": self.val_dice,
            "val_score": self.val_score,
            "val_pixel_accuracy": self.pixel_accuracy,
        }
        out.update({f"dice_{k}": v for k, v in self.class_dice.items()})
        out.update({f"iou_{k}": v for k, v in self.class_iou.items()})
        out.update({f"precision_{k}": v for k, v in self.class_precision.items()})
        out.update({f"recall_{k}": v for k, v in self.class_recall.items()})
        return out


def evaluate(
    predictor: Predictor,
    val: pd.DataFrame,
    spec: MaskSpec,
    loss_fn: nn.Module,
    *,
    channels: int = 3,
    oof: np.ndarray | None = None,
    presence: np.ndarray | None = None,
    fbeta: tuple[np.ndarray, float] | None = None,
) -> tuple[float, np.ndarray]:
    """Predict the validation images at their original size and count, per image and class, the
    intersection, predicted and true pixels (ignore pixels left out), exactly as ``kseg score`` does.

    Args:
        predictor: The model(s) and how they predict.
        val: Validation rows (``image``, ``mask``).
        spec: How to read the masks.
        loss_fn: The training loss, applied to log-probabilities.
        channels: Image channels (``model.in_channels``).
        oof: Optional ``(N, K, H, W)`` uint8 array (memmap) to receive the probabilities at the
            predictor's ``image_size``.
        presence: Optional ``(N, K)`` float array to receive the presence scores (``Predictor.predict_scored``).
        fbeta: Optional ``((N, K) float array, beta)``: the array receives each image and class's instance
            F-beta (``instance_fbeta``; instances as connected components).

    Returns:
        ``(mean validation loss, counts (N, 3, K))``.
    """
    k = spec.n_classes
    counts = np.zeros((len(val), 3, k), dtype=np.int64)
    losses = []
    step = predictor.batch
    for first in range(0, len(val), step):
        rows = val.iloc[first : first + step]
        images = [load_image(p, channels) for p in rows["image"]]
        masks = [read_mask(Path(p), spec) for p in rows["mask"]]
        for i, ((probs, present), mask) in enumerate(zip(predictor.predict_scored(images), masks, strict=True)):
            if presence is not None:
                presence[first + i] = present.numpy()
            target = torch.from_numpy(mask.astype(np.int64))[None]
            with torch.no_grad():
                losses.append(float(loss_fn(_logits(probs, spec.multilabel)[None], target)))
            labels = hard_labels(probs, spec.multilabel)
            counts[first + i] = label_counts(labels, mask, k, spec.ignore_index, spec.multilabel)
            if fbeta is not None:
                fbeta[0][first + i] = _fbeta_row(labels, mask, spec, fbeta[1])
            if oof is not None:
                small = nn.functional.interpolate(probs[None], size=tuple(predictor.size), mode="area")[0]
                oof[first + i] = (small * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return float(np.mean(losses)) if losses else float("nan"), counts


def _fbeta_row(labels: np.ndarray, truth: np.ndarray, spec: MaskSpec, beta: float) -> np.ndarray:
    """Each class's instance F-beta of one image. Shape: ``(K,)``."""
    k, ignore = spec.n_classes, spec.ignore_index
    pred_planes = class_planes(labels, k, spec.multilabel)
    true_planes = class_planes(truth, k, spec.multilabel, ignore)
    scored = truth != ignore
    return np.array([mask_fbeta(pred_planes[c], true_planes[c], beta, scored) for c in range(k)])


def _logits(probs: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits whose activation gives ``probs`` back: log-probabilities under a softmax, log-odds under
    per-class sigmoids."""
    if multilabel:
        p = probs.clamp(1e-7, 1 - 1e-7)
        return torch.log(p / (1 - p))
    return torch.log(probs.clamp_min(1e-7))


def instance_buffer(n_images: int, n_classes: int, metric: str, beta: float) -> tuple[np.ndarray, float] | None:
    """``evaluate``'s ``fbeta`` argument: an ``(N, K)`` array to fill under ``instance_fbeta``, else None."""
    return (np.zeros((n_images, n_classes)), beta) if metric == "instance_fbeta" else None


def validation_score(counts: np.ndarray, fbeta: np.ndarray | None, scored: list[int], metric: str) -> float:
    """The configured metric of one validation pass over the scored classes (what chooses the best epoch):
    from the ``(N, 3, K)`` counts, or the mean of the ``(N, K)`` instance F-beta for ``instance_fbeta``."""
    if fbeta is not None:
        return float(fbeta[:, scored].mean()) if len(fbeta) else 1.0
    return metric_score(counts[:, :, scored], metric)[0]


def summarize(counts: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float], dict[str, float]]:
    """Mean row Dice (the competition metric) and per-class Dice / IoU from ``(N, 3, K)`` counts."""
    inter, pred, true = counts[:, 0], counts[:, 1], counts[:, 2]
    dice = row_dice(inter, pred, true)
    iou = row_iou(inter, pred, true)
    return (
        float(dice.mean()) if dice.size else float("nan"),
        {c: float(dice[:, j].mean()) for j, c in enumerate(classes)},
        {c: float(iou[:, j].mean()) for j, c in enumerate(classes)},
    )


def oof_truth(val: pd.DataFrame, spec: MaskSpec, size: tuple[int, int]) -> tuple[np.ndarray, pd.DataFrame]:
    """The validation images' true labels at ``size`` (nearest), and their ids and original sizes.

    Shape:
        Returns ``(N, H, W)`` uint8 and a table ``ImageID, height, width``.
    """
    height, width = size
    masks = np.zeros((len(val), height, width), dtype=np.uint8)
    sizes = []
    for i, path in enumerate(val["mask"]):
        mask = read_mask(Path(path), spec)
        sizes.append(mask.shape)
        small = nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")
        masks[i] = small[0, 0].to(torch.uint8).numpy()
    table = pd.DataFrame({ID: val[ID], "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})
    return masks, table
