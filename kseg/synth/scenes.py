"""Scenes of the synthetic competitions in other shapes (``kseg synth --style``): satellite cloud patterns
that overlap, and ships on the sea, one instance each."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kseg.synth.aerial import rotated_rect


def cloud_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A satellite-like image and its class bitmask map: each of the four patterns covers 0-2 large boxes
    (as the competition's labels do) and adds its own signature to the pixels (three colour casts and a
    striped texture), so where boxes overlap, the image shows both.

    Shape:
        Returns ``(H, W, 3)`` uint8 and ``(H, W)`` uint8 bitmasks.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = np.array([70, 85, 110], dtype=np.float32) + rng.normal(0, 6, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xx + yy) * (2 * np.pi / max(4.0, min(height, width) / 8)))
    signatures = [(0, 45.0), (1, 45.0), (2, 45.0), (None, 30.0)]  # channel cast, or stripes
    for k, (channel, strength) in enumerate(signatures):
        for _ in range(int(rng.integers(0, 3))):
            box_h, box_w = int(rng.uniform(0.3, 0.6) * height), int(rng.uniform(0.3, 0.6) * width)
            y, x = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
            label[y : y + box_h, x : x + box_w] |= np.uint8(1 << k)
        mine = (label >> k) & 1 == 1
        if channel is None:
            image[mine] += strength * stripes[mine][:, None]
        else:
            image[mine, channel] += strength
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def ship_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A sea image with 0-4 ships (bright, elongated, rotated boxes with a wake) and its label map
    (0 sea, 1 ship). Ships never touch, not even diagonally, so each is one connected instance.

    Shape:
        Returns ``(H, W, 3)`` uint8 and ``(H, W)`` uint8.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    blocked = np.zeros((height, width), dtype=bool)
    size = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    swell = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / max(6.0, size / 5)))
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = np.array([20, 55, 80], dtype=np.float32) + rng.normal(0, 5, 3)
    image += 6 * swell[..., None]
    count, placed = int(rng.choice([0, 0, 1, 2, 3, 4])), 0
    for _ in range(count * 4):  # a few tries per ship to find free water
        if placed == count:
            break
        length, beam = rng.uniform(0.12, 0.3) * size, rng.uniform(0.04, 0.07) * size
        cx, cy, turn = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, math.pi)
        layer = Image.new("L", (width, height), 0)
        ImageDraw.Draw(layer).polygon(rotated_rect(cx, cy, length / 2, beam / 2, turn), fill=1)
        ship = np.asarray(layer) > 0
        if ship.sum() < 4 or (ship & blocked).any():
            continue
        label[ship] = 1
        placed += 1
        grown = Image.fromarray(ship.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
        blocked |= np.asarray(grown) > 0  # a margin of two pixels around each ship
        image[ship] = np.array([190, 190, 185]) + rng.normal(0, 8, 3)
    image += rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


# Severstal's shares: about 47% of training images without a defect, 86% of (image, defect class) rows
# empty; among defects, class 3 about 73%, class 1 13%, class 4 11%, class 2 3.5%.
STEEL_CLEAN = 0.5
STEEL_CLASS_SHARES = np.array([0.13, 0.035, 0.725, 0.11])


def steel_scene(
    rng: np.random.Generator, height: int, width: int, defect: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A rolled-steel-like image (grey, horizontal rolling streaks) and its label map (0 clean, 1-4 the
    defect classes), as empty-heavy as Severstal's download: half the images clean, one defect class in most
    of the others. Each class has its signature (1: small dark pits; 2: thin bright vertical scratches;
    3: elongated dark streaks; 4: a large dark patch), and half the images, clean or not, carry faint stains
    that look like pits or streaks at lower contrast: the false alarms a presence gate is for. ``defect``
    (1-4) draws that class's defect and no other (so that a small download holds every class).

    Shape:
        Returns ``(H, W, 3)`` uint8 and ``(H, W)`` uint8.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    yy = np.arange(height, dtype=np.float32)[:, None]
    image = np.full((height, width), 125.0, dtype=np.float32) + rng.normal(0, 6)
    image += 8 * np.sin(yy * (2 * math.pi / max(4.0, height / rng.uniform(6, 12))) + rng.uniform(0, 6.3))
    shade = np.zeros((height, width), dtype=np.float32)
    if rng.random() < 0.5:  # stains: faint, any size, in clean and defective images alike
        for _ in range(int(rng.integers(1, 4))):
            mask = _blob(rng, height, width, rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.3))
            shade[mask] -= 14
    if defect is not None or rng.random() >= STEEL_CLEAN:
        kinds = 1 + int(rng.random() < 0.12)
        drawn = rng.choice(4, size=kinds, replace=False, p=STEEL_CLASS_SHARES) + 1
        for k in drawn if defect is None else [defect]:
            mine = _defect(rng, int(k), height, width)
            label[mine] = k
            shade[mine] = (-45, 40, -32, -55)[int(k) - 1]
    image += shade + rng.normal(0, 5, (height, width))
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), label


def _blob(rng: np.random.Generator, height: int, width: int, rel_h: float, rel_w: float) -> np.ndarray:
    """A filled ellipse of about ``rel_h`` x ``rel_w`` of the image at a random place."""
    return _ellipse(height, width, rng.uniform(0, height), rng.uniform(0, width), rel_h * height, rel_w * width)


def _ellipse(height: int, width: int, cy: float, cx: float, size_h: float, size_w: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - cy) / max(1.5, size_h / 2)) ** 2 + ((xx - cx) / max(1.5, size_w / 2)) ** 2 <= 1


def _defect(rng: np.random.Generator, k: int, height: int, width: int) -> np.ndarray:
    """The pixels of one defect of class ``k`` (1-4)."""
    mine = np.zeros((height, width), dtype=bool)
    if k == 1:  # a cluster of small pits
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.9) * width
        for _ in range(int(rng.integers(3, 7))):
            y, x = cy + rng.normal(0, 0.08 * height), cx + rng.normal(0, 0.08 * width)
            mine |= _ellipse(height, width, y, x, 0.06 * height, 0.03 * width)
    elif k == 2:  # one or two thin vertical scratches
        for _ in range(int(rng.integers(1, 3))):
            x, y0 = int(rng.integers(0, width)), int(rng.integers(0, height // 2))
            mine[y0 : y0 + int(rng.uniform(0.3, 0.5) * height), x : x + max(1, width // 64)] = True
    elif k == 3:  # long horizontal streaks
        for _ in range(int(rng.integers(1, 3))):
            mine |= _blob(rng, height, width, rng.uniform(0.06, 0.15), rng.uniform(0.3, 0.7))
    else:  # a large patch
        mine |= _blob(rng, height, width, rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.4))
    return mine
