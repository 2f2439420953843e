"""Figure helpers: matplotlib without a screen, figures saved atomically, label maps in colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kseg.io import atomic_open

NO_CLASS_COLOUR = (40, 40, 40)  # ignored pixels, or pixels post-processing left without a class


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110, tight: bool = False) -> Path:
    """Write a figure as PNG atomically, then close it."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return path


def colorize(labels: np.ndarray, palette: np.ndarray, no_class: tuple[int, int, int] | None = None) -> np.ndarray:
    """A label map in its palette's colours; values past the palette are black, or ``no_class`` at 255.

    Shape:
        labels ``(H, W)`` uint8, palette ``(K, 3)`` uint8; returns ``(H, W, 3)`` uint8.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    if no_class is not None:
        table[255] = no_class
    return table[labels]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image for display: uint8 as is, other dtypes stretched from their min-max range to 0-255."""
    if image.dtype == np.uint8:
        return image
    lo, hi = float(image.min()), float(image.max())
    return ((image.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
