"""Class masks of label maps in either mode, for everything that counts, encodes or trains per class.

Multiclass (the default): a label map holds one class index per pixel. Multilabel (``data.multilabel``):
a pixel holds a bitmask, bit ``k`` set when class ``k`` is present, so classes may overlap; 0 is no class.
In both, ``ignore_index`` (255) marks pixels that are not scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that take tensors: counting masks needs no torch
    import torch


def class_planes(labels: np.ndarray, n_classes: int, multilabel: bool, ignore_index: int | None = None) -> np.ndarray:
    """One boolean mask per class; ignored pixels (and, multiclass, values >= ``n_classes``) are in none.

    Shape:
        labels ``(H, W)``; returns ``(n_classes, H, W)`` bool.
    """
    labels = np.asarray(labels)
    if multilabel:
        planes = (labels[None] >> np.arange(n_classes, dtype=labels.dtype).reshape(-1, 1, 1)) & 1
        planes = planes.astype(bool)
        if ignore_index is not None:
            planes &= (labels != ignore_index)[None]
        return planes
    return labels[None] == np.arange(n_classes, dtype=labels.dtype).reshape(-1, 1, 1)


def class_mask(labels: np.ndarray, k: int, multilabel: bool) -> np.ndarray:
    """The boolean mask of class ``k`` alone (``class_planes(...)[k]`` without the other classes).

    Shape:
        labels ``(H, W)``; returns ``(H, W)`` bool.
    """
    labels = np.asarray(labels)
    return ((labels >> k) & 1).astype(bool) if multilabel else labels == k


def pack_planes(planes: np.ndarray) -> np.ndarray:
    """The bitmask label map of per-class masks (the inverse of ``class_planes`` in multilabel mode).

    Shape:
        planes ``(K, H, W)`` bool, K <= 8; returns ``(H, W)`` uint8.
    """
    planes = np.asarray(planes, dtype=np.uint8)
    weights = (1 << np.arange(len(planes), dtype=np.uint8)).reshape(-1, 1, 1)
    return (planes * weights).sum(0, dtype=np.uint8)


def bit_targets(target: torch.Tensor, n_classes: int, ignore_index: int) -> torch.Tensor:
    """Per-class 0/1 targets of a bitmask batch (the multilabel losses' target).

    Shape:
        target ``(N, H, W)`` int64; returns ``(N, K, H, W)`` int64 (ignored pixels keep their value in every
        channel, so losses that skip ``ignore_index`` skip them).
    """
    import torch

    shifts = torch.arange(n_classes, device=target.device).view(1, -1, 1, 1)
    bits = (target[:, None] >> shifts) & 1
    return torch.where(target[:, None] == ignore_index, ignore_index, bits)


def plane_counts(pred: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """``(intersection, predicted, true)`` pixels per class of boolean plane stacks on scored pixels.

    Shape:
        pred, truth ``(K, H, W)`` bool, scored ``(H, W)`` bool; returns ``(3, K)`` int64.
    """
    pred = pred & scored[None]
    truth = truth & scored[None]
    inter = (pred & truth).reshape(len(pred), -1).sum(1)
    return np.stack([inter, pred.reshape(len(pred), -1).sum(1), truth.reshape(len(truth), -1).sum(1)]).astype(np.int64)


LABEL_THRESHOLD = 0.5  # multilabel: a class is present where its probability reaches this (untuned)


def hard_labels(probs: torch.Tensor, multilabel: bool) -> np.ndarray:
    """The label map of probabilities before any post-processing: the argmax, or (multilabel) the bitmask
    of the classes whose probability reaches ``LABEL_THRESHOLD``.

    Shape:
        probs ``(K, H, W)``; returns ``(H, W)`` uint8.
    """
    if multilabel:
        return pack_planes((probs >= LABEL_THRESHOLD).numpy())
    import torch

    return probs.argmax(0).to(torch.uint8).numpy()
