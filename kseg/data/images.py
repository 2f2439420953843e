"""Images for the model: reading (RGB, or multiband ``.npy``), rescaling, and normalisation to tensors; shared by
training and prediction."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from kseg.data.reading import read_image
from kseg.errors import DataError


def load_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """An image for the model: RGB for 3 channels, or an ``(H, W, C)`` array from ``.npy`` (multispectral).

    Shape:
        Returns ``(H, W, C)``, uint8 (or the array's own dtype for ``.npy``).
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            array = np.load(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"image {path} cannot be read ({exc}); re-create the file") from None
        if array.ndim == 2:
            array = array[..., None]
        if array.shape[-1] != channels:
            raise DataError(f"image {path} has {array.shape[-1]} channels but model.in_channels is {channels}")
        return array
    image = read_image(path)
    if channels != 3:
        raise DataError(f"image {path} is RGB but model.in_channels is {channels}; store multiband images as .npy")
    return image


def rescale(array: np.ndarray, scale: float, labels: bool = False) -> np.ndarray:
    """Resize by ``scale`` (``data.scale``): area averaging for images, nearest for label masks."""
    height, width = array.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_NEAREST if labels else (cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = cv2.resize(array, size, interpolation=interpolation)
    return out[..., None] if array.ndim == 3 and out.ndim == 2 else out


def channel_stats(image: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of an image on the 0-1 scale (``data.normalize: per_image``)."""
    array = image.reshape(-1, image.shape[-1]).astype(np.float32)
    if image.dtype == np.uint8:
        array /= 255.0
    return array.mean(0).tolist(), np.maximum(array.std(0), 1e-3).tolist()


def normalize(image: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """``(H, W, C)`` pixels (0-255, or 0-1 floats) -> normalised ``(C, H, W)`` float32 tensor."""
    array = image.astype(np.float32)
    if image.dtype == np.uint8:
        array /= 255.0
    scaled = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))
