"""``kseg synth --style``: a small synthetic competition in the shape of a real one, with its ``kseg.yaml``
and the host's hidden ``solution.csv`` in the submission's layout (a ``Usage`` column splits it into
Public and Private halves, as Kaggle's do).

- ``drone``: label images, ids ``<image>_<class index>`` for every test image and class (the default shape).
- ``severstal``: JPEG images in ``train_images/`` and ``test_images/``, training masks as a long table of
  runs (``train.csv``: ``ImageId,ClassId,EncodedPixels``, defects only), a submission in the long layout
  with non-empty rows only (``ImageId,EncodedPixels,ClassId``) for the four defect classes.
- ``clouds``: Understanding Clouds' download: ``train.csv`` with ``Image_Label,EncodedPixels`` (ids
  ``<name>.jpg_<Class>``, all four rows per image), ``train_images/<name>.jpg``, ``test_images/``,
  ``sample_submission.csv`` in the same two columns; four classes that **overlap** (``data.multilabel``),
  submission masks at a quarter of each side.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kseg.common import Progress
from kseg.config import load_config
from kseg.data.labels import RleSource, rle_table
from kseg.data.listing import list_records
from kseg.data.reading import ID, MaskSpec, read_mask
from kseg.errors import KsegError
from kseg.io import atomic_write_text
from kseg.metrics.instances import components
from kseg.rle import encode
from kseg.submission.format import grid_key, load_format
from kseg.submission.write import write_submission
from kseg.synth.aerial import (
    DEFAULT_CLASSES,
    TRAINING_TEMPLATE,
    SynthResult,
    check_request,
    make_competition,
    round32,
)
from kseg.synth.binary_styles import CARVANA_CLASSES, TGS_CLASSES, make_carvana, make_tgs
from kseg.synth.scenes import cloud_scene, ship_scene, steel_scene

STYLES = ("drone", "severstal", "clouds", "instances", "tgs", "carvana")
CLOUD_CLASSES = ["Fish", "Flower", "Gravel", "Sugar"]
SEVERSTAL_CLASSES = ["background", "defect_1", "defect_2", "defect_3", "defect_4"]
SHIP_CLASSES = ["sea", "ship"]
FIXED_CLASSES = {
    "severstal": SEVERSTAL_CLASSES,
    "clouds": CLOUD_CLASSES,
    "instances": SHIP_CLASSES,
    "tgs": TGS_CLASSES,
    "carvana": CARVANA_CLASSES,
}

SEVERSTAL_CONFIG = """\
# kseg config for a synthetic competition in the shape of Severstal steel defects (`kseg synth --style
# severstal`, seed {seed}). Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: glob
  image_pattern: "train_images/{{name}}.jpg"
  test_image_pattern: "test_images/{{name}}.jpg"
  mask_format: rle                  # masks decoded from train.csv, no mask files
  rle:
    csv: train.csv
    form: long                      # ImageId,ClassId,EncodedPixels; only defects listed
    id_column: ImageId
    class_column: ClassId
    class_key: index                # ClassId 1-4 = data.classes[ClassId]
    index_base: 0
  classes: [{classes}]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission.csv
  solution: solution.csv            # the hidden truth: kseg score's default
  path: submissions/submission.csv
  layout: long                      # ImageId,EncodedPixels,ClassId
  rows: nonempty                    # defects only
  id_format: "{{file}}"
  class_format: "{{k}}"
  classes: [defect_1, defect_2, defect_3, defect_4]
  metric: row_dice
"""


CLOUDS_CONFIG = """\
# kseg config for a synthetic competition in the shape of Understanding Clouds from Satellite Images
# (`kseg synth --style clouds`, seed {seed}). Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: glob
  image_pattern: "train_images/{{name}}.jpg"
  test_image_pattern: "test_images/{{name}}.jpg"
  mask_format: rle                  # masks decoded from train.csv, no mask files
  multilabel: true                  # the four patterns overlap: one sigmoid per class
  rle:
    csv: train.csv
    form: wide                      # Image_Label,EncodedPixels: 0011165.jpg_Fish
    id_column: Image_Label
    encoded_column: EncodedPixels
    separator: "_"
    class_key: name
  classes: [{classes}]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission.csv
  solution: solution.csv            # the hidden truth: kseg score's default
  path: submissions/submission.csv
  id_format: "{{file}}_{{name}}"     # 0011165.jpg_Fish
  size: [{sub_h}, {sub_w}]            # a quarter of each side: label maps resized (nearest)
  metric: row_dice
"""


INSTANCES_CONFIG = """\
# kseg config for a synthetic competition in the shape of Airbus ship detection (`kseg synth --style
# instances`, seed {seed}). Relative paths are resolved against this file's folder.
workdir: work
data:
  root: .
  layout: glob
  image_pattern: "train_v2/{{name}}.jpg"
  test_image_pattern: "test_v2/{{name}}.jpg"
  mask_format: rle
  rle:
    csv: train_ship_segmentations_v2.csv
    form: long                      # ImageId,EncodedPixels: one row per ship, an empty row for none
    id_column: ImageId              # no class column: every row is the one class besides the background
  classes: [sea, ship]
  image_size: [{size_h}, {size_w}]
{training}submission:
  sample: sample_submission_v2.csv
  solution: solution.csv            # the hidden truth: kseg score's default
  path: submissions/submission.csv
  id_format: "{{file}}"              # the image's file name, one class: no class in the id
  classes: [ship]
  rows: instances                   # one row per ship, an empty row for an image without
  metric: instance_fbeta            # F2 over IoU thresholds 0.5-0.95, as Airbus scores
  beta: 2
"""


def make_styled(
    out_dir: Path,
    style: str,
    n_train: int,
    n_test: int,
    height: int,
    width: int,
    n_classes: int | None,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> SynthResult:
    """Write a synthetic competition of ``style`` (``STYLES``) with its config and ``solution.csv``.
    ``n_classes`` (``None``: the style's own) applies to the drone style; the others have fixed classes."""
    if style not in STYLES:
        raise KsegError(f"--style {style!r} is not one of {', '.join(STYLES)}; pick one of those")
    fixed = FIXED_CLASSES.get(style)
    if fixed is not None and n_classes is not None and n_classes != len(fixed):
        raise KsegError(
            f"--classes {n_classes} does not apply to --style {style}, whose classes are fixed "
            f"({', '.join(fixed)}); leave --classes out"
        )
    if style == "drone":
        n = DEFAULT_CLASSES if n_classes is None else n_classes
        result = make_competition(out_dir, n_train, n_test, height, width, n, seed, on_progress)
        spec = MaskSpec.from_config(load_config(result.config).data)
        truth = {p.stem: read_mask(p, spec) for p in sorted((result.root / "test_masks").glob("*.png"))}
    elif style == "severstal":
        result, truth = _severstal(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    elif style == "clouds":
        result, truth = _clouds(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    elif style == "tgs":
        result, truth = make_tgs(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    elif style == "carvana":
        result, truth = make_carvana(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    else:
        result, truth = _instances(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    write_solution(result.config, truth)
    return result


def _severstal(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """Steel images as empty-heavy as Severstal's (``steel_scene``: half clean, 4 defect classes), laid out as
    its download."""
    check_request(out_dir, n_train, n_test, height, width, 5)
    drawn = itertools.count()  # images are drawn in order, training first: its first four show each class

    def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        i = next(drawn)
        return steel_scene(rng, height, width, defect=i + 1 if i < min(4, n_train) else None)

    labels = _write_images(out_dir, n_train, n_test, seed, on_progress, scene)
    config = _write_config(out_dir, SEVERSTAL_CONFIG, seed, (height, width), classes=", ".join(SEVERSTAL_CLASSES))
    _write_runs_table(config, labels["train"])
    test_names = [f"{name}.jpg" for name in labels["test"]]
    sample = pd.DataFrame({"ImageId": test_names, "EncodedPixels": "1 1", "ClassId": "1"})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    result = SynthResult(out_dir, config, n_train, n_test, list(SEVERSTAL_CLASSES))
    return result, labels["test"]


def _clouds(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """Images and overlapping labels laid out as the Understanding Clouds download."""
    check_request(out_dir, n_train, n_test, height, width, len(CLOUD_CLASSES))
    if height < 32 or width < 32:
        raise KsegError(f"image size {height}x{width} is too small for the clouds style; use at least 32x32")
    labels = _write_images(out_dir, n_train, n_test, seed, on_progress, lambda rng: cloud_scene(rng, height, width))
    extra = {"classes": ", ".join(CLOUD_CLASSES), "sub_h": height // 4, "sub_w": width // 4}
    config = _write_config(out_dir, CLOUDS_CONFIG, seed, (height, width), **extra)
    _write_runs_table(config, labels["train"])
    test_ids = [f"{name}.jpg_{c}" for name in labels["test"] for c in CLOUD_CLASSES]
    sample = pd.DataFrame({"Image_Label": test_ids, "EncodedPixels": "1 1"})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    return SynthResult(out_dir, config, n_train, n_test, list(CLOUD_CLASSES)), labels["test"]


def _instances(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """Ships on the sea laid out as the Airbus download: one runs row per ship."""
    check_request(out_dir, n_train, n_test, height, width, 2)
    if height < 32 or width < 32:
        raise KsegError(f"image size {height}x{width} is too small for the instances style; use at least 32x32")
    labels = _write_images(
        out_dir, n_train, n_test, seed, on_progress, lambda rng: ship_scene(rng, height, width), suffix="_v2"
    )
    _write_config(out_dir, INSTANCES_CONFIG, seed, (height, width))
    rows = []
    for name, label in labels["train"].items():
        ids, count = components(label == 1)
        ships = [encode(ids == j) for j in range(1, count + 1)] or [""]
        rows += [{"ImageId": f"{name}.jpg", "EncodedPixels": runs} for runs in ships]
    atomic_write_text(out_dir / "train_ship_segmentations_v2.csv", pd.DataFrame(rows).to_csv(index=False))
    sample = pd.DataFrame({"ImageId": [f"{name}.jpg" for name in labels["test"]], "EncodedPixels": "1 2"})
    atomic_write_text(out_dir / "sample_submission_v2.csv", sample.to_csv(index=False))
    return SynthResult(out_dir, out_dir / "kseg.yaml", n_train, n_test, list(SHIP_CLASSES)), labels["test"]


def _write_config(out_dir: Path, template: str, seed: int, size: tuple[int, int], **fields: object) -> Path:
    """``kseg.yaml`` from a style's template: the seed, the training size (multiples of 32), the shared
    training sections and the style's own fields."""
    config = out_dir / "kseg.yaml"
    training = TRAINING_TEMPLATE.format(seed=seed)
    text = template.format(seed=seed, size_h=round32(size[0]), size_w=round32(size[1]), training=training, **fields)
    atomic_write_text(config, text)
    return config


def _write_runs_table(config: Path, labels: dict[str, np.ndarray]) -> None:
    """The training masks as the config's runs table (``data.rle``), images named by file."""
    cfg = load_config(config)
    table = rle_table({f"{k}.jpg": v for k, v in labels.items()}, RleSource.from_config(cfg.data))
    atomic_write_text(cfg.data.root / cfg.data.rle.csv, table.to_csv(index=False))


def _write_images(
    out_dir: Path,
    n_train: int,
    n_test: int,
    seed: int,
    on_progress: Progress | None,
    scene: Callable,
    suffix: str = "_images",
) -> dict[str, dict[str, np.ndarray]]:
    """``train<suffix>/`` and ``test<suffix>/`` JPEGs of ``scene(rng) -> (image, label)``; the labels by
    part and name."""
    labels: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    total = n_train + n_test
    for split_code, (part, count) in enumerate((("train", n_train), ("test", n_test))):
        folder = out_dir / f"{part}{suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = scene(np.random.default_rng([seed, split_code, i]))
            name = f"{part[:2]}{seed:02d}{i:05d}"
            Image.fromarray(image).save(folder / f"{name}.jpg", quality=95)
            labels[part][name] = label
            if on_progress:
                on_progress(len(labels["train"]) + len(labels["test"]), total)
    return labels


def write_solution(config: Path, truth: dict[str, np.ndarray]) -> Path:
    """The truth label maps of the test images, written by ``kseg submit``'s own writer in the
    submission's layout, with a ``Usage`` column: the rows of every other test image Public, the rest
    Private. Every (image, class) row is listed, empty ones too, as a host's solution is, even where
    submissions leave empty rows out."""
    every_row = ["submission.rows=all"] if load_config(config).submission.rows == "nonempty" else []
    cfg = load_config(config, ["submission.require_manifest=false", "submission.solution=null", *every_row])
    test = list_records(cfg.data, "test")[1]
    fmt = load_format(cfg.data, cfg.submission, test)
    with tempfile.TemporaryDirectory(dir=cfg.data.root) as tmp:
        folder = Path(tmp)
        for image_id in (r[ID] for r in test):
            Image.fromarray(truth[image_id]).save(folder / f"{image_id}.png")
        written = write_submission(cfg, out=folder / "solution.csv", predictions=folder, postprocess=False)
        table = pd.read_csv(written.path, dtype=str, keep_default_na=False)
    keys = table.iloc[:, 0].tolist()
    if fmt.layout == "long":
        keys = [grid_key(image, klass) for image, klass in zip(keys, table.iloc[:, 2], strict=True)]
    index = fmt.row_index()
    table["Usage"] = ["Public" if fmt.row_image[index[key]] % 2 == 0 else "Private" for key in keys]
    target = cfg.data.root / "solution.csv"
    atomic_write_text(target, table.to_csv(index=False))
    return target
