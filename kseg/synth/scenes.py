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
