"""Prediction: class probabilities at each image's original size, batched.

``infer.mode: resize`` predicts at ``data.image_size`` and resizes the probabilities (not the labels)
back to the image. ``infer.mode: tile`` runs sliding windows of ``data.image_size`` over the image at its
own resolution, with ``infer.tile_overlap`` overlap and weights that fall off towards each window's
border, so seams do not show; images smaller than a window are padded (reflected) and cropped back.
Validation uses the same code as test inference, so the CV score measures what the submission does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch import nn

from kseg.config import Config
from kseg.dataset import normalize


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on CUDA when asked; a no-op elsewhere."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


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


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis covering ``[0, size)`` with windows of ``tile`` (size >= tile)."""
    if size <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


class Predictor:
    """Class probabilities of whole images from one or several models (averaged in probability space).

    Args:
        models: Trained models in eval mode.
        cfg: The experiment config (``data.image_size``, ``infer.*``, normalisation).
        device: Where to run.
        amp: Autocast dtype on CUDA, or ``None``.
    """

    def __init__(self, models: list[nn.Module], cfg: Config, device: torch.device, amp: torch.dtype | None = None):
        self.models = models
        self.cfg = cfg
        self.device = device
        self.amp = amp
        self.size = tuple(cfg.data.image_size)
        self.channels_last = device.type == "cuda" and cfg.train.channels_last

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        total = None
        with autocast(self.device, self.amp):
            for model in self.models:
                probs = model(batch).float().softmax(1)
                total = probs if total is None else total + probs
        return (total / len(self.models)).float()

    def predict(self, images: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield each image's probabilities at its own size.

        Shape:
            images ``(H, W, C)``; yields ``(K, H, W)`` float32 on the CPU.
        """
        if self.cfg.infer.mode == "tile":
            for image in images:
                yield self._tiled(image)
            return
        step = self.cfg.infer.batch_size
        for first in range(0, len(images), step):
            chunk = images[first : first + step]
            batch = torch.stack([self._prepare(im) for im in chunk])
            probs = self._forward(batch)
            for image, p in zip(chunk, probs, strict=True):
                yield self._resize_back(p, image.shape[:2])

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        height, width = self.size
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] > height or image.shape[1] > width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            if image.ndim == 2:
                image = image[..., None]
        return normalize(image, self.cfg.data.mean, self.cfg.data.std)

    @staticmethod
    def _resize_back(probs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(probs.shape[1:]) != tuple(shape):
            probs = nn.functional.interpolate(probs[None], size=shape, mode="bilinear", align_corners=False)[0]
        return probs.cpu()

    def _tiled(self, image: np.ndarray) -> torch.Tensor:
        tile_h, tile_w = self.size
        height, width = image.shape[:2]
        pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            if image.ndim == 2:
                image = image[..., None]
        full_h, full_w = image.shape[:2]
        tensor = normalize(image, self.cfg.data.mean, self.cfg.data.std)
        weights = window_weights(tile_h, tile_w)
        origins = [
            (y, x)
            for y in tile_origins(full_h, tile_h, self.cfg.infer.tile_overlap)
            for x in tile_origins(full_w, tile_w, self.cfg.infer.tile_overlap)
        ]
        total = None
        norm = torch.zeros(full_h, full_w)
        step = self.cfg.infer.batch_size
        for first in range(0, len(origins), step):
            part = origins[first : first + step]
            batch = torch.stack([tensor[:, y : y + tile_h, x : x + tile_w] for y, x in part])
            probs = self._forward(batch).cpu()
            if total is None:
                total = torch.zeros(probs.shape[1], full_h, full_w)
            for (y, x), p in zip(part, probs, strict=True):
                total[:, y : y + tile_h, x : x + tile_w] += p * weights
                norm[y : y + tile_h, x : x + tile_w] += weights
        return (total / norm)[:, :height, :width].contiguous()
