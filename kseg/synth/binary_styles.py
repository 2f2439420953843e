"""Synthetic competitions in the shapes of two binary (one object class) Kaggle downloads, each with mask
files *and* a table of runs, and a submission of one row per image (``kseg synth --style tgs|carvana``):

- ``tgs`` (TGS salt identification): grey PNG images in ``train/images/`` and ``test/images/``, masks stored
  as 0/255 PNGs in ``train/masks/``, ``train.csv`` (``id,rle_mask``: column-major runs, ids as stems),
  ``sample_submission.csv`` with ``id,rle_mask``.
- ``carvana`` (Carvana image masking): several views of one object, ``<object>_<view>.jpg`` in ``train/``
  and ``test/``, palette GIF masks ``train_masks/<object>_<view>_mask.gif`` (values 0 and 1),
  ``train_masks.csv`` (``img,rle_mask``: **row-major** runs keyed by file name), ``sample_submission.csv``
  with ``img,rle_mask``. Views of one object look alike: they must stay in one fold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from kseg.common import Progress
from kseg.errors import KsegError
from kseg.io import atomic_write_text
from kseg.rle import encode
from kseg.synth.aerial import TRAINING_TEMPLATE, SynthResult, check_request, rotated_rect, round32, synth_scene

TGS_CLASSES = ["background", "salt"]
CARVANA_CLASSES = ["background", "car"]
VIEWS = 4  # views of each carvana object

TGS_CONFIG = """\
# kseg config for a synthetic competition in the shape of TGS salt identification (`kseg synth --style tgs`,
# seed {seed}). Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: glob
  image_pattern: "train/images/{{name}}.png"
  mask_pattern: "train/masks/{{name}}.png"
  test_image_pattern: "test/images/{{name}}.png"
  mask_format: color                # the masks hold 0 and 255: black background, white salt
  classes: [background, salt]
  palette: ["#000000", "#FFFFFF"]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission.csv
  solution: solution.csv            # the hidden truth: kseg score's default
  path: submissions/submission.csv
  id_format: "{{id}}"                # one row per image: the id alone
  classes: [salt]
  pixel_order: column               # as train.csv numbers its pixels
  metric: row_dice
"""

CARVANA_CONFIG = """\
# kseg config for a synthetic competition in the shape of Carvana image masking (`kseg synth --style carvana`,
# seed {seed}). Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: glob
  image_pattern: "train/{{name}}.jpg"
  mask_pattern: "train_masks/{{name}}_mask.gif"
  test_image_pattern: "test/{{name}}.jpg"
  mask_format: index                # palette GIFs of 0 (background) and 1 (car)
  classes: [background, car]
  palette: ["#000000", "#FFFFFF"]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission.csv
  solution: solution.csv            # the hidden truth: kseg score's default
  path: submissions/submission.csv
  id_format: "{{file}}"              # 0cdf5b5d0ce1_01.jpg: one row per image
  classes: [car]
  pixel_order: row                  # as train_masks.csv numbers its pixels: along rows
  metric: row_dice
"""

GROUP_VIEWS = "split:\n  group_pattern: '^(.+)_[^_]+$'   # the views of one car stay in one fold\n"


def tgs_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image and its 0/1 label map (the synthetic fields of ``synth_scene`` as salt).

    Shape:
        Returns ``(H, W)`` uint8 and ``(H, W)`` uint8.
    """
    image, label = synth_scene(rng, height, width, 2)
    return np.asarray(Image.fromarray(image).convert("L")), label


def car_view(rng: np.random.Generator, height: int, width: int, view: int) -> tuple[np.ndarray, np.ndarray]:
    """View ``view`` of one object (``rng`` seeded per object, so its views share colour and shape): a body
    and a cabin turned by a quarter turn per view, on a floor.

    Shape:
        Returns ``(H, W, 3)`` uint8 and ``(H, W)`` uint8.
    """
    colour = rng.uniform(40, 230, 3)
    floor = rng.uniform(120, 200, 3)
    length, beam = rng.uniform(0.45, 0.7), rng.uniform(0.25, 0.4)
    turn = rng.uniform(0, math.pi / 2) + view * math.pi / 4
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    size = min(height, width)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    draw.polygon(rotated_rect(cx, cy, length * size / 2, beam * size / 2, turn), fill=1)
    draw.ellipse((cx - beam * size / 3, cy - beam * size / 3, cx + beam * size / 3, cy + beam * size / 3), fill=1)
    label = np.asarray(layer, dtype=np.uint8)
    noise = np.random.default_rng([view, int(colour[0] * 1000)]).normal(0, 8, (height, width, 3))
    image = np.where(label[..., None] == 1, colour, floor) + noise
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_tgs(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """The TGS-shaped competition; returns it and the test truth by image id."""
    check_request(out_dir, n_train, n_test, height, width, 2)
    labels: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    for split_code, (part, count) in enumerate((("train", n_train), ("test", n_test))):
        (out_dir / part / "images").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = tgs_scene(np.random.default_rng([seed, split_code, i]), height, width)
            name = f"{seed:02d}{split_code}{i:05d}a"
            Image.fromarray(image).save(out_dir / part / "images" / f"{name}.png")
            labels[part][name] = label
            if on_progress:
                on_progress(len(labels["train"]) + len(labels["test"]), n_train + n_test)
    (out_dir / "train" / "masks").mkdir(parents=True, exist_ok=True)
    for name, label in labels["train"].items():
        Image.fromarray(label * np.uint8(255)).save(out_dir / "train" / "masks" / f"{name}.png")
    table = pd.DataFrame({"id": list(labels["train"]), "rle_mask": [encode(m == 1) for m in labels["train"].values()]})
    atomic_write_text(out_dir / "train.csv", table.to_csv(index=False))
    sample = pd.DataFrame({"id": list(labels["test"]), "rle_mask": "1 1"})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    config = _config(out_dir, TGS_CONFIG, seed, height, width)
    return SynthResult(out_dir, config, n_train, n_test, list(TGS_CLASSES)), labels["test"]


def make_carvana(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """The Carvana-shaped competition (``n_train`` and ``n_test`` rounded up to whole objects of ``VIEWS``
    views); returns it and the test truth by image id."""
    check_request(out_dir, n_train, n_test, height, width, 2)
    if n_train < 2 * VIEWS:
        raise KsegError(f"--style carvana needs at least {2 * VIEWS} training images (two cars of {VIEWS} views)")
    labels: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    for split_code, (part, count) in enumerate((("train", n_train), ("test", n_test))):
        (out_dir / part).mkdir(parents=True, exist_ok=True)
        for obj in range(-(-count // VIEWS)):
            car = f"{seed:02d}{split_code}{obj:03d}c{obj * 7919 % 997:03x}"
            for view in range(VIEWS):
                image, label = car_view(np.random.default_rng([seed, split_code, obj]), height, width, view)
                name = f"{car}_{view + 1:02d}"
                Image.fromarray(image).save(out_dir / part / f"{name}.jpg", quality=95)
                labels[part][name] = label
                if on_progress:
                    on_progress(len(labels["train"]) + len(labels["test"]), n_train + n_test)
    (out_dir / "train_masks").mkdir(parents=True, exist_ok=True)
    for name, label in labels["train"].items():
        gif = Image.fromarray(label, mode="P")
        gif.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        gif.save(out_dir / "train_masks" / f"{name}_mask.gif")
    files = [f"{name}.jpg" for name in labels["train"]]
    table = pd.DataFrame({"img": files, "rle_mask": [encode(m == 1, "row") for m in labels["train"].values()]})
    atomic_write_text(out_dir / "train_masks.csv", table.to_csv(index=False))
    sample = pd.DataFrame({"img": [f"{name}.jpg" for name in labels["test"]], "rle_mask": "1 1"})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    config = _config(out_dir, CARVANA_CONFIG, seed, height, width, split=GROUP_VIEWS)
    return SynthResult(out_dir, config, len(labels["train"]), len(labels["test"]), list(CARVANA_CLASSES)), labels[
        "test"
    ]


def _config(out_dir: Path, template: str, seed: int, height: int, width: int, split: str = "") -> Path:
    training = TRAINING_TEMPLATE.format(seed=seed)
    if split:
        training = training.replace("split:\n", split)
    config = out_dir / "kseg.yaml"
    atomic_write_text(
        config, template.format(seed=seed, size_h=round32(height), size_w=round32(width), training=training)
    )
    return config
