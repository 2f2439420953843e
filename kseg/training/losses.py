"""Training losses from config: a weighted sum of named terms.

``train.loss`` maps names from ``LOSSES`` to weights, e.g. ``{ce: 1.0, dice: 1.0}``. Every term takes
raw logits and an index target in which ``data.ignore_index`` marks pixels to leave out. With
``data.multilabel`` the target holds class bitmasks, split into one 0/1 target per class, and the terms
are their sigmoid forms (``ce``, or its alias ``bce``: per-class binary cross-entropy; smp's multilabel
Dice, focal and Lovasz).

Shape:
    logits ``(N, C, H, W)`` (or ``(logits, presence logits (N, C))`` with ``model.presence_head``), target
    ``(N, H, W)`` int64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kseg.bits import bit_targets
from kseg.config import Config
from kseg.errors import ConfigError
from kseg.models.heads import split_output


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights and label smoothing."""

    def __init__(self, ignore_index: int, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # an all-ignored batch (rare crops): no signal, no NaN
        return nn.functional.cross_entropy(
            logits.float(),
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


class _Fp32(nn.Module):
    """Run an smp loss in float32: soft Dice of half-precision probabilities is unstable under AMP."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.loss(logits.float(), target)


class BinaryCrossEntropy(nn.Module):
    """Per-class sigmoid cross-entropy (multilabel), with optional class weights, over non-ignored pixels."""

    def __init__(self, ignore_index: int, weight: torch.Tensor | None = None):
        super().__init__()
        self.weight: torch.Tensor | None
        self.register_buffer("weight", None if weight is None else weight.view(1, -1, 1, 1))
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), torch.where(valid, target, 0).float(), reduction="none"
        )
        if self.weight is not None:
            loss = loss * self.weight
        return (loss * valid).sum() / valid.sum()


def _dice(ignore_index: int, weight: torch.Tensor | None, label_smoothing: float, mode: str) -> nn.Module:
    from segmentation_models_pytorch.losses import DiceLoss

    return _Fp32(DiceLoss(mode=mode, from_logits=True, ignore_index=ignore_index))


def _focal(ignore_index: int, weight: torch.Tensor | None, label_smoothing: float, mode: str) -> nn.Module:
    from segmentation_models_pytorch.losses import FocalLoss

    return _Fp32(FocalLoss(mode=mode, ignore_index=ignore_index))


def _lovasz(ignore_index: int, weight: torch.Tensor | None, label_smoothing: float, mode: str) -> nn.Module:
    from segmentation_models_pytorch.losses import LovaszLoss

    return _Fp32(LovaszLoss(mode=mode, ignore_index=ignore_index))


def _ce(ignore_index: int, weight: torch.Tensor | None, label_smoothing: float, mode: str) -> nn.Module:
    if mode == "multilabel":
        return BinaryCrossEntropy(ignore_index, weight)
    return CrossEntropy(ignore_index, weight, label_smoothing)


# name -> constructor(ignore_index, class weights or None, label smoothing, smp mode); only ce uses the
# weights and the smoothing; in multilabel mode ``ce`` is the per-class binary cross-entropy
LOSSES: dict[str, Callable[[int, torch.Tensor | None, float, str], nn.Module]] = {
    "ce": _ce,
    "bce": _ce,
    "dice": _dice,
    "focal": _focal,
    "lovasz": _lovasz,
}


def presence_targets(target: torch.Tensor, n_classes: int, multilabel: bool) -> torch.Tensor:
    """Whether each class has a pixel in each crop: what the presence head learns (ignored pixels count
    for no class).

    Shape:
        target ``(B, H, W)`` class indices, or with ``multilabel`` ``(B, K, H, W)`` 0/1 per class (the
        ignore index elsewhere); returns ``(B, K)`` float 0/1.
    """
    if multilabel:
        return (target == 1).flatten(2).any(2).float()
    classes = torch.arange(n_classes, device=target.device)
    return (target[:, None] == classes[None, :, None, None]).flatten(2).any(2).float()


class WeightedSum(nn.Module):
    """``sum_i weight_i * term_i(logits, target)``; ``parts`` holds each term's last value. A model output
    with presence logits (``model.presence_head``) adds ``presence_weight`` x their binary cross-entropy
    against ``presence_targets`` (part ``presence``)."""

    def __init__(
        self,
        terms: dict[str, tuple[float, nn.Module]],
        bits: tuple[int, int] | None = None,
        presence_weight: float = 0.0,
    ):
        super().__init__()
        self.bits = bits  # multilabel: (classes, ignore index) to turn bitmask targets into per-class ones
        self.names = list(terms)
        self.weights = [w for w, _ in terms.values()]
        self.terms = nn.ModuleList(t for _, t in terms.values())
        self.presence_weight = presence_weight
        self.parts: dict[str, float] = {}

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits, presence = split_output(output)
        total = logits.new_zeros((), dtype=torch.float32)
        if self.bits is not None:
            target = bit_targets(target, *self.bits)
        for name, weight, term in zip(self.names, self.weights, self.terms, strict=True):
            if weight:
                value = term(logits, target)
                self.parts[name] = float(value.detach())
                total = total + weight * value
        if presence is not None and self.presence_weight:
            present = presence_targets(target, presence.shape[1], self.bits is not None)
            value = nn.functional.binary_cross_entropy_with_logits(presence.float(), present)
            self.parts["presence"] = float(value.detach())
            total = total + self.presence_weight * value
        return total


def class_weights(pixels: np.ndarray, how: str) -> torch.Tensor | None:
    """Cross-entropy class weights from training pixel counts, normalised to mean 1.

    ``inverse``: ``1 / frequency``; ``sqrt_inverse``: its square root (milder). Classes never seen get the
    largest weight of the others.
    """
    if how == "none":
        return None
    pixels = np.asarray(pixels, dtype=np.float64)
    freq = pixels / max(pixels.sum(), 1)
    with np.errstate(divide="ignore"):
        weight = np.where(freq > 0, 1.0 / freq, np.nan)
    if how == "sqrt_inverse":
        weight = np.sqrt(weight)
    top = np.nanmax(weight) if np.isfinite(weight).any() else 1.0
    weight = np.where(np.isnan(weight), top, weight)
    return torch.tensor(weight / weight.mean(), dtype=torch.float32)


def build_loss(
    terms: dict[str, float],
    *,
    ignore_index: int,
    class_weighting: str = "none",
    label_smoothing: float = 0.0,
    class_pixels: np.ndarray | None = None,
    multilabel: int | None = None,
    presence_weight: float = 0.0,
) -> WeightedSum:
    """A weighted sum of named loss terms.

    Args:
        terms: Loss names from ``LOSSES`` to weights (``train.loss``).
        ignore_index: Target value of pixels to leave out.
        class_weighting: ``none``, ``inverse`` or ``sqrt_inverse`` cross-entropy class weights.
        label_smoothing: Cross-entropy label smoothing.
        class_pixels: Training pixels per class (from ``kseg split``), needed for class weights.
        multilabel: The number of classes when targets are class bitmasks (one sigmoid per class).
        presence_weight: Weight of the presence head's term, for models that output one.
    """
    unknown = [name for name in terms if name not in LOSSES]
    if unknown:
        raise ConfigError(f"train.loss names {unknown[0]!r}, which is no loss; choose from {', '.join(LOSSES)}")
    weight = None
    if class_weighting != "none":
        if class_pixels is None:
            raise ConfigError("train.class_weights needs the class pixel counts of 'kseg split'; run it first")
        weight = class_weights(class_pixels, class_weighting)
    if multilabel is None and "bce" in terms:
        raise ConfigError("train.loss 'bce' is the multilabel loss; with one class per pixel use 'ce'")
    mode = "multiclass" if multilabel is None else "multilabel"
    return WeightedSum(
        {name: (w, LOSSES[name](ignore_index, weight, label_smoothing, mode)) for name, w in terms.items()},
        None if multilabel is None else (multilabel, ignore_index),
        presence_weight,
    )


def loss_from_config(cfg: Config, class_pixels: np.ndarray | None = None) -> WeightedSum:
    """The loss of ``cfg.train.loss`` (``build_loss`` with the config's values), with the presence term of
    ``train.presence_weight`` when ``model.presence_head`` is on."""
    return build_loss(
        cfg.train.loss,
        ignore_index=cfg.data.ignore_index,
        class_weighting=cfg.train.class_weights,
        label_smoothing=cfg.train.label_smoothing,
        class_pixels=class_pixels,
        multilabel=cfg.n_classes if cfg.multilabel else None,
        presence_weight=cfg.train.presence_weight if cfg.model.presence_head else 0.0,
    )
