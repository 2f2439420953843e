"""One image -> class probabilities: a model ensemble merged over TTA views, at the image's own size.

Probabilities are a softmax over classes, or with ``data.multilabel`` one sigmoid per class; either way
views, scales, windows and models are averaged in probability space. Each image also gets a presence score
per class: a model's presence head's sigmoid (``model.presence_head``), or without a head its mask's
highest probability of the class; merged like the probabilities, and the highest of the windows in tile
mode.

``mode: resize`` predicts at ``image_size`` and resizes the probabilities (not the labels) back to the
image. ``mode: tile`` runs sliding windows of ``image_size`` over the image at its own resolution, with
``tile_overlap`` overlap and weights that fall off towards each window's border, so seams do not show;
images smaller than a window are padded (reflected) and cropped back. Validation uses the same
``Predictor`` as test inference, so the CV score measures what the submission does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from kseg.config import Config
from kseg.data.images import channel_stats, normalize, rescale
from kseg.models.heads import has_presence_head, split_output
from kseg.prediction.tta import predict_views, views
from kseg.runtime import autocast


def window_weights(height: int, width: int) -> torch.Tensor:
    """Blending weights of one window: highest in the middle, small but positive at the border.

    Shape:
        Returns ``(H, W)`` float32.
    """

    def ramp(n: int) -> np.ndarray:
        x = (np.arange(n) + 0.5) / n
        return np.minimum(x, 1 - x) * 2  # triangle: 1 in the centre, ~0 at the edge

    w = np.outer(ramp(height), ramp(width))
    return torch.from_numpy(np.maximum(w, 1e-3).astype(np.float32))


def window_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis covering ``[0, size)`` with windows of ``tile`` (size >= tile)."""
    if size <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def infer_batch(batch_size: int | None, device: torch.device) -> int:
    """Images per forward pass: ``infer.batch_size``, or by default 16 on a GPU and 2 on a CPU (where
    larger batches fall out of cache and run slower)."""
    if batch_size is not None:
        return batch_size
    return 16 if device.type == "cuda" else 2


def _round32(n: float) -> int:
    return max(32, int(round(n / 32)) * 32)


@dataclass(frozen=True)
class PredictOptions:
    """What a ``Predictor`` needs to know, and nothing else (``from_config`` at the edge).

    Attributes:
        image_size: ``(H, W)`` the model sees: the resize target, or the window size in tile mode.
        mean: Per-channel normalisation mean (0-1 pixel scale).
        std: Per-channel normalisation std.
        per_image: Normalise each image by its own statistics instead.
        scale: ``data.scale``: tile mode predicts at this rescale of the image.
        mode: ``resize`` or ``tile``.
        tile_overlap: Window overlap in tile mode.
        tta_scales: Input scales merged (``[1.0]``: none).
        merge: ``mean`` or ``gmean`` over views.
        channels_last: Inputs in channels-last memory layout.
        batch_size: Images (views count as images) per forward pass; ``None``: by device.
        multilabel: One sigmoid per class (classes may overlap) instead of a softmax over classes.
    """

    image_size: tuple[int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    per_image: bool = False
    scale: float = 1.0
    mode: str = "resize"
    tile_overlap: float = 0.25
    tta_scales: tuple[float, ...] = (1.0,)
    merge: str = "mean"
    channels_last: bool = True
    batch_size: int | None = None
    multilabel: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> PredictOptions:
        return cls(
            image_size=(cfg.data.image_size[0], cfg.data.image_size[1]),
            mean=tuple(cfg.data.mean),
            std=tuple(cfg.data.std),
            per_image=cfg.data.normalize == "per_image",
            scale=cfg.data.scale,
            mode=cfg.infer.mode,
            tile_overlap=cfg.infer.tile_overlap,
            tta_scales=tuple(cfg.infer.tta_scales),
            merge=cfg.infer.merge,
            channels_last=cfg.runtime.channels_last,
            batch_size=cfg.infer.batch_size,
            multilabel=cfg.multilabel,
        )


class Predictor:
    """Class probabilities of whole images from one or several models, merged over TTA views.

    Args:
        models: Trained models in eval mode.
        options: Sizes, normalisation, mode and merging.
        device: Where to run.
        amp: Autocast dtype on CUDA, or ``None``.
        tta: Name of the view set (``none``, ``flip``, ``d4``, ...).
        model_weights: One weight per model (default: equal).
    """

    def __init__(
        self,
        models: list[nn.Module],
        options: PredictOptions,
        device: torch.device,
        amp: torch.dtype | None = None,
        tta: str = "none",
        model_weights: list[float] | None = None,
    ):
        self.models = models
        self.options = options
        self.device = device
        self.amp = amp
        self.size = tuple(options.image_size)
        self.views = views(tta)
        self.model_weights = model_weights
        self.batch = infer_batch(options.batch_size, device)

    @classmethod
    def from_config(
        cls,
        models: list[nn.Module],
        cfg: Config,
        device: torch.device,
        amp: torch.dtype | None = None,
        tta: str = "none",
        model_weights: list[float] | None = None,
    ) -> Predictor:
        return cls(models, PredictOptions.from_config(cfg), device, amp, tta, model_weights)

    @property
    def has_presence(self) -> bool:
        """Whether a model has a presence head (``model.presence_head``), so that presence scores mean more
        than the mask's maximum."""
        return any(has_presence_head(model) for model in self.models)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-model probabilities and presence scores: a model's presence head's sigmoid, or without a head
        its mask's highest probability of each class.

        Shape:
            ``(B, C, h, w)`` -> ``((M, B, K, h, w), (M, B, K))``.
        """
        batch = batch.to(self.device, non_blocking=True)
        if self.options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        probs, presence = [], []
        with autocast(self.device, self.amp):
            for model in self.models:
                logits, head = split_output(model(batch))
                p = logits.float().sigmoid() if self.options.multilabel else logits.float().softmax(1)
                probs.append(p)
                presence.append(head.float().sigmoid() if head is not None else p.amax((2, 3)))
        return torch.stack(probs), torch.stack(presence)

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged probabilities and presence scores of a normalised batch at its own size.

        Shape:
            ``(N, C, H, W)`` -> ``((N, K, H, W), (N, K))`` float32 (on the CPU).
        """
        merged, presence = [], []
        height, width = batch.shape[-2:]
        for scale in self.options.tta_scales:
            scaled = batch
            if scale != 1.0:
                size = (_round32(height * scale), _round32(width * scale))
                scaled = nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
            probs, present = predict_views(
                self._forward, scaled, self.views, self.batch, self.options.merge, self.model_weights
            )
            if scale != 1.0:
                probs = nn.functional.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            merged.append(probs)
            presence.append(present)
        if len(merged) == 1:
            return merged[0].cpu(), presence[0].cpu()
        return torch.stack(merged).mean(0).cpu(), torch.stack(presence).mean(0).cpu()

    def predict(self, images: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield each image's probabilities at its own size.

        Shape:
            images ``(H, W, C)``; yields ``(K, H, W)`` float32 on the CPU.
        """
        for probs, _ in self.predict_scored(images):
            yield probs

    def predict_scored(self, images: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield each image's probabilities at its own size and its presence scores (merged over views,
        scales and models like the probabilities; in tile mode the highest of its windows').

        Shape:
            images ``(H, W, C)``; yields ``((K, H, W), (K,))`` float32 on the CPU.
        """
        if self.options.mode == "tile":
            for image in images:
                yield self._tiled(image)
            return
        batch = torch.stack([self._prepare(im) for im in images])
        probs, presence = self.predict_batch(batch)
        for image, p, present in zip(images, probs, presence, strict=True):
            yield self._resize_back(p, image.shape[:2]), present

    def _stats(self, image: np.ndarray) -> tuple[list[float], list[float]]:
        if self.options.per_image:
            return channel_stats(image)
        return list(self.options.mean), list(self.options.std)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        mean, std = self._stats(image)
        height, width = self.size
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] > height or image.shape[1] > width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            if image.ndim == 2:
                image = image[..., None]
        return normalize(image, mean, std)

    @staticmethod
    def _resize_back(probs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(probs.shape[1:]) != tuple(shape):
            probs = nn.functional.interpolate(probs[None], size=shape, mode="bilinear", align_corners=False)[0]
        return probs

    def _tiled(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.options.scale
        if scale != 1.0:  # predict at the training scale, then back to the image's own size
            probs, presence = self._tiled_native(rescale(image, scale))
            return self._resize_back(probs, image.shape[:2]), presence
        return self._tiled_native(image)

    def _tiled_native(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tile_h, tile_w = self.size
        height, width = image.shape[:2]
        pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            if image.ndim == 2:
                image = image[..., None]
        full_h, full_w = image.shape[:2]
        tensor = normalize(image, *self._stats(image[:height, :width]))
        weights = window_weights(tile_h, tile_w)
        overlap = self.options.tile_overlap
        origins = [
            (y, x) for y in window_origins(full_h, tile_h, overlap) for x in window_origins(full_w, tile_w, overlap)
        ]
        total = None
        presence: torch.Tensor | None = None
        norm = torch.zeros(full_h, full_w)
        step = max(1, self.batch // max(1, len(self.views)))
        for first in range(0, len(origins), step):
            part = origins[first : first + step]
            batch = torch.stack([tensor[:, y : y + tile_h, x : x + tile_w] for y, x in part])
            probs, present = self.predict_batch(batch)
            if total is None:
                total = torch.zeros(probs.shape[1], full_h, full_w)
            top = present.amax(0)  # a class is in the image when it is in one of its windows
            presence = top if presence is None else torch.maximum(presence, top)
            for (y, x), p in zip(part, probs, strict=True):
                total[:, y : y + tile_h, x : x + tile_w] += p * weights
                norm[y : y + tile_h, x : x + tile_w] += weights
        assert total is not None and presence is not None  # there is always at least one window
        return (total / norm)[:, :height, :width].contiguous(), presence


class BlendPredictor:
    """Several predictors (runs with their own sizes, scales and normalisation) whose probabilities of
    each whole image are averaged with fixed weights: a ``kseg blend``.

    Args:
        members: ``(predictor, weight)`` pairs; weights are normalised to sum to 1.
    """

    def __init__(self, members: list[tuple[Predictor, float]]):
        total = sum(w for _, w in members)
        self.members = [(p, w / total) for p, w in members if w > 0]
        first = self.members[0][0]
        self.device, self.views, self.batch = first.device, first.views, first.batch
        self.models = [m for p, _ in self.members for m in p.models]

    @property
    def has_presence(self) -> bool:
        """Whether a member has a presence head (those without one count with their masks' maximum)."""
        return any(p.has_presence for p, _ in self.members)

    def predict(self, images: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield each image's blended probabilities at its own size. Shape: as ``Predictor.predict``."""
        for probs, _ in self.predict_scored(images):
            yield probs

    def predict_scored(self, images: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield each image's blended probabilities and presence scores. Shape: as ``Predictor.predict_scored``."""
        total: list[list[torch.Tensor]] = []
        for predictor, weight in self.members:
            for i, (probs, presence) in enumerate(predictor.predict_scored(images)):
                if i == len(total):
                    total.append([probs * weight, presence * weight])
                else:
                    total[i][0] += probs * weight
                    total[i][1] += presence * weight
        for probs, presence in total:
            yield probs, presence
