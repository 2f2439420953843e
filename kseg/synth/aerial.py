"""A synthetic Kaggle-style aerial segmentation competition.

Scenes are drawn from a few rules that mimic aerial imagery: bare ground, crop fields, water bodies,
roads, buildings, trees, and small rare objects (cars on roads, boats on water, pools). Each class has
a colour and a texture, so a small network can learn it, and objects vary in size, count and presence,
so folds and metrics have something real to balance. Every image is drawn from its own random stream
``(seed, split, index)``: the same seed gives the same images whatever the image counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from kseg.errors import KsegError
from kseg.io import atomic_write_text

# (name, base colour) in painting order; the first K are used for a K-class competition.
KINDS: list[tuple[str, tuple[int, int, int]]] = [
    ("background", (176, 160, 128)),
    ("vegetation", (82, 130, 56)),
    ("road", (112, 112, 118)),
    ("building", (178, 74, 58)),
    ("water", (38, 86, 150)),
    ("car", (235, 215, 40)),
    ("tree", (28, 72, 30)),
    ("pool", (70, 205, 225)),
    ("boat", (245, 245, 245)),
    ("solar_panel", (28, 36, 92)),
    ("sports_field", (205, 96, 44)),
    ("container", (150, 40, 150)),
]


def class_names(n_classes: int) -> list[str]:
    """Names of the first ``n_classes`` synthetic classes (extra ones are ``object_<k>``)."""
    return [KINDS[k][0] if k < len(KINDS) else f"object_{k}" for k in range(n_classes)]


def class_colors(n_classes: int) -> list[tuple[int, int, int]]:
    """Base colour of each synthetic class; extra classes get well-spread hues."""
    colours = [KINDS[k][1] for k in range(min(n_classes, len(KINDS)))]
    for k in range(len(KINDS), n_classes):
        hue = (k * 0.618034) % 1.0
        r, g, b = (int(255 * (0.5 + 0.45 * math.cos(2 * math.pi * (hue + s / 3)))) for s in range(3))
        colours.append((r, g, b))
    return colours


def rotated_rect(cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def synth_scene(rng: np.random.Generator, height: int, width: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one aerial-like scene.

    Args:
        rng: The image's own random stream.
        height: Image height in pixels.
        width: Image width in pixels.
        n_classes: Number of classes (>= 2).

    Returns:
        ``(image, label)``.

    Shape:
        image ``(H, W, 3)`` uint8, label ``(H, W)`` uint8.
    """
    size = min(height, width)

    def present(k: int, p: float) -> bool:
        return k < n_classes and rng.random() < p

    label = _fields(rng, height, width) if present(1, 0.8) else np.zeros((height, width), np.uint8)
    if present(4, 0.4):  # water: a smooth blob or a river
        label = _water(rng, label, size)
    if present(2, 0.75):  # roads across the scene
        label = _roads(rng, label, size)
    free = np.isin(label, (0, 1))
    if present(3, 0.7):
        _stamp(rng, label, 3, int(rng.integers(2, 10)), "rect", (0.03, 0.09), free)
    if present(6, 0.5):
        _stamp(rng, label, 6, int(rng.integers(3, 15)), "ellipse", (0.012, 0.035), np.isin(label, (0, 1)))
    if present(7, 0.15):
        _stamp(rng, label, 7, int(rng.integers(1, 3)), "rect", (0.015, 0.03), label == 0)
    if present(5, 0.6) and (label == 2).any():
        _stamp(rng, label, 5, int(rng.integers(2, 9)), "rect", (0.006, 0.014), label == 2)
    if present(8, 0.5) and (label == 4).any():
        _stamp(rng, label, 8, int(rng.integers(1, 4)), "ellipse", (0.008, 0.02), label == 4)
    for k in range(9, n_classes):
        if rng.random() < (0.3 if k < len(KINDS) else 0.2):
            shape = "rect" if k % 2 else "ellipse"
            _stamp(rng, label, k, int(rng.integers(1, 4)), shape, (0.02, 0.06), np.isin(label, (0, 1)))
    image = _render(rng, label, n_classes)
    return image, label


def _fields(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Crop fields (class 1): a few rotated rectangles on an empty label map."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 5)):
        corners = rotated_rect(
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(0.1, 0.3) * width,
            rng.uniform(0.1, 0.3) * height,
            rng.uniform(-0.4, 0.4),
        )
        draw.polygon(corners, fill=1)
    return np.array(canvas)


def _water(rng: np.random.Generator, label: np.ndarray, size: int) -> np.ndarray:
    """Water (class 4): a smooth blob or a river."""
    height, width = label.shape
    if rng.random() < 0.5:
        blob = _smooth_noise(rng, height, width, int(rng.integers(3, 6)))
        label[blob > np.quantile(blob, rng.uniform(0.65, 0.9))] = 4
        return label
    canvas = Image.fromarray(label)
    x0 = rng.uniform(0, width)
    pts = [(x0 + rng.normal(0, 0.15) * width * t, t * height / 4) for t in range(5)]
    ImageDraw.Draw(canvas).line(pts, fill=4, width=max(2, int(rng.uniform(0.06, 0.16) * size)), joint="curve")
    return np.array(canvas)


def _roads(rng: np.random.Generator, label: np.ndarray, size: int) -> np.ndarray:
    """Roads (class 2) across the scene, horizontal or vertical, gently curved."""
    height, width = label.shape
    canvas = Image.fromarray(label)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 4)):
        road_width = max(2, int(rng.uniform(0.03, 0.07) * size))
        if rng.random() < 0.5:
            y0, y1 = rng.uniform(0, height, 2)
            middle = (width / 2, (y0 + y1) / 2 + rng.normal(0, 0.05) * height)
            pts = [(-road_width, y0), middle, (width + road_width, y1)]
        else:
            x0, x1 = rng.uniform(0, width, 2)
            middle = ((x0 + x1) / 2 + rng.normal(0, 0.05) * width, height / 2)
            pts = [(x0, -road_width), middle, (x1, height + road_width)]
        draw.line(pts, fill=2, width=road_width, joint="curve")
    return np.array(canvas)


def _stamp(
    rng: np.random.Generator,
    label: np.ndarray,
    k: int,
    count: int,
    shape: str,
    extent: tuple[float, float],
    where: np.ndarray,
) -> None:
    """Paint ``count`` rectangles or ellipses of class ``k`` (sides drawn from ``extent``, in shares of the
    image's shorter side) centred on ``where``, only inside ``where``, in place."""
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return
    height, width = label.shape
    size = min(height, width)
    layer = Image.new("L", (width, height), 0)
    layer_draw = ImageDraw.Draw(layer)
    lo, hi = extent
    for _ in range(count):
        i = rng.integers(len(ys))
        cx, cy = float(xs[i]), float(ys[i])
        a, b = rng.uniform(lo, hi) * size, rng.uniform(lo, hi) * size
        if shape == "rect":
            layer_draw.polygon(rotated_rect(cx, cy, a, b, rng.uniform(0, math.pi)), fill=1)
        else:
            layer_draw.ellipse((cx - a, cy - b, cx + a, cy + b), fill=1)
    label[(np.asarray(layer) > 0) & where] = k


def _render(rng: np.random.Generator, label: np.ndarray, n_classes: int) -> np.ndarray:
    height, width = label.shape
    palette = np.array(class_colors(n_classes), dtype=np.float32)
    palette += rng.normal(0, 10, palette.shape)  # per-image colour cast: lighting, season, sensor
    image = palette[label]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / max(4.0, min(height, width) / 12)))
    texture = {
        1: 14 * stripes,
        4: 10 * (_smooth_noise(rng, height, width, 9) - 0.5),
        0: 24 * (_smooth_noise(rng, height, width, 7) - 0.5),
    }
    for k, tex in texture.items():
        sel = label == k
        image[sel] += tex[sel][:, None]
    image *= rng.uniform(0.85, 1.15)
    image += rng.normal(0, 7, image.shape)
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.5)))


@dataclass
class SynthResult:
    """What ``make_competition`` wrote."""

    root: Path
    config: Path
    n_train: int
    n_test: int
    classes: list[str]


def round32(n: int) -> int:
    return max(32, -(-n // 32) * 32)


CONFIG_TEMPLATE = """\
# kseg config for a synthetic competition made by `kseg synth` (seed {seed}).
# Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: csv
  train_csv: train.csv
  test_csv: test.csv
  id_column: ImageID
  image_template: images/{{id}}.png
  mask_template: masks/{{id}}.png
  test_mask_template: test_masks/{{id}}.png   # hidden truth, for local scoring
  mask_format: index
  classes: [{classes}]
  palette: [{palette}]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission.csv
  path: submissions/submission.csv
"""

# the model, training, split and inference sections of every synthetic competition (styles too)
TRAINING_TEMPLATE = """\
model:
  arch: Unet
  encoder_name: resnet18
  encoder_weights: null
train:
  epochs: 12
  batch_size: 8
  lr: 0.003
  scheduler: onecycle
runtime:
  num_workers: 0                     # tiny images: worker processes would cost more than they save
split:
  n_folds: 3
  seed: {seed}
infer:
  tta: d4
"""


def check_request(out_dir: Path, n_train: int, n_test: int, height: int, width: int, n_classes: int) -> None:
    """Refuse, in one sentence each, what no synthetic competition can be made of."""
    if n_train < 1 or n_test < 1:
        raise KsegError(
            f"kseg synth needs at least one train and one test image (got {n_train} and {n_test}); raise --train/--test"
        )
    if not 2 <= n_classes <= 254:
        raise KsegError(f"--classes {n_classes} is out of range; use 2 to 254")
    if height < 8 or width < 8:
        raise KsegError(f"image size {height}x{width} is too small; use --height and --width of at least 8")
    if out_dir.exists() and not out_dir.is_dir():
        raise KsegError(f"{out_dir} exists and is not a folder; choose another OUT_DIR")


DEFAULT_CLASSES = 6  # kseg synth without --classes


def make_competition(
    out_dir: Path,
    n_train: int = 24,
    n_test: int = 8,
    height: int = 64,
    width: int = 96,
    n_classes: int = DEFAULT_CLASSES,
    seed: int = 0,
    on_progress=None,
) -> SynthResult:
    """Write a small Kaggle-style competition to ``out_dir``.

    Writes ``train.csv``, ``test.csv``, ``images/``, ``masks/``, ``test_masks/``,
    ``sample_submission.csv`` (``n_classes`` rows per test image, ids ``<id>_<k>``) and ``kseg.yaml``.

    Args:
        out_dir: Target folder; created if needed. Existing files of the same names are replaced.
        n_train: Training images.
        n_test: Test images.
        height: Image height.
        width: Image width.
        n_classes: Number of classes, 2 to 254.
        seed: Random seed; the same seed gives the same images.
        on_progress: Optional ``callback(done, total)``.
    """
    out_dir = Path(out_dir)
    check_request(out_dir, n_train, n_test, height, width, n_classes)
    for sub in ("images", "masks", "test_masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    train_ids = [f"img_{i:04d}" for i in range(n_train)]
    test_ids = [f"test_{i:04d}" for i in range(n_test)]
    total = n_train + n_test
    done = 0
    for split_code, ids, mask_dir in ((0, train_ids, "masks"), (1, test_ids, "test_masks")):
        for i, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, split_code, i])
            image, label = synth_scene(rng, height, width, n_classes)
            _save_png(out_dir / "images" / f"{image_id}.png", image)
            _save_png(out_dir / mask_dir / f"{image_id}.png", label)
            done += 1
            if on_progress:
                on_progress(done, total)
    atomic_write_text(out_dir / "train.csv", pd.DataFrame({"ImageID": train_ids}).to_csv(index=False))
    atomic_write_text(out_dir / "test.csv", pd.DataFrame({"ImageID": test_ids}).to_csv(index=False))
    sample = pd.DataFrame({"ImageID": [f"{i}_{k}" for i in test_ids for k in range(n_classes)], "EncodedPixels": ""})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    names = class_names(n_classes)
    config = out_dir / "kseg.yaml"
    atomic_write_text(
        config,
        CONFIG_TEMPLATE.format(
            seed=seed,
            classes=", ".join(names),
            palette=", ".join("'#{:02X}{:02X}{:02X}'".format(*c) for c in class_colors(n_classes)),
            size_h=round32(height),
            size_w=round32(width),
            training=TRAINING_TEMPLATE.format(seed=seed),
        ),
    )
    return SynthResult(out_dir, config, n_train, n_test, names)


def _save_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)
