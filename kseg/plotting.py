"""Figure helpers: matplotlib without a screen, figures saved atomically, label maps in colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kseg.io import atomic_open
from kseg.schema import DataConfig

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


def training_curves(history: Any, path: Path, fold: int) -> None:
    """Loss and validation Dice per epoch of a ``metrics.csv`` table, as ``curves.png``."""
    plt = pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history["epoch"], history["train_loss"], label="train", marker=".")
    ax_loss.plot(history["epoch"], history["val_loss"], label="validation", marker=".")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"fold {fold}: loss")
    ax_loss.legend()
    for col in [c for c in history.columns if c.startswith("dice_")]:
        ax_dice.plot(history["epoch"], history[col], lw=0.8, alpha=0.6, label=col[5:])
    ax_dice.plot(history["epoch"], history["val_dice"], color="black", lw=2, marker=".", label="mean row Dice")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title=f"fold {fold}: validation", ylim=(0, 1.02))
    ax_dice.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


# a qualitative set (matplotlib's tab10 and more), black first for a background class
QUALITATIVE = np.array(
    [
        [0, 0, 0],
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
        [174, 199, 232],
    ],
    dtype=np.uint8,
)


def palette_rgb(data: DataConfig) -> np.ndarray:
    """One display colour per label value: per class (the first palette colour, or ``QUALITATIVE``), or
    with ``data.multilabel`` per bitmask (the mean colour of its classes, black for none), so ``colorize``
    draws either kind of label map.

    Shape:
        Returns ``(n_classes, 3)`` uint8, or ``(2 ** n_classes, 3)`` when multilabel.
    """
    n = len(data.classes)
    if data.palette is not None:
        colours = np.array([[int(c[0][i : i + 2], 16) for i in (1, 3, 5)] for c in data.palette], dtype=np.uint8)
    else:
        base = QUALITATIVE[1:] if data.multilabel else QUALITATIVE  # multilabel: no background, none is black
        colours = np.tile(base, (-(-n // len(base)), 1))[:n]
    if not data.multilabel:
        return colours
    held = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    mixed = held @ colours.astype(np.float64) / np.maximum(held.sum(1, keepdims=True), 1)
    return np.round(mixed).astype(np.uint8)


def class_colour(palette: np.ndarray, k: int, multilabel: bool) -> np.ndarray:
    """Class ``k``'s colour in a ``palette_rgb`` table."""
    return palette[1 << k] if multilabel else palette[k]
