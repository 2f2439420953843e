"""``kseg synth --style``: a small synthetic competition in the shape of a real one, with its ``kseg.yaml``
and the host's hidden ``solution.csv`` in the submission's layout (a ``Usage`` column splits it into
Public and Private halves, as Kaggle's do).

- ``drone``: label images, ids ``<image>_<class index>`` for every test image and class (the default shape).
- ``severstal``: JPEG images in ``train_images/`` and ``test_images/``, training masks as a long table of
  runs (``train.csv``: ``ImageId,ClassId,EncodedPixels``, defects only), a submission in the long layout
  with non-empty rows only (``ImageId,EncodedPixels,ClassId``) for the four defect classes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kseg.config import load_config
from kseg.data import ID, MaskSpec, list_samples, read_mask
from kseg.errors import KsegError
from kseg.io import atomic_write_text
from kseg.labels import RleSource, rle_table
from kseg.progress import Progress
from kseg.submission.format import grid_key, load_format
from kseg.submission.write import write_submission
from kseg.synth import TRAINING_TEMPLATE, SynthResult, check_request, make_competition, round32, synth_scene

STYLES = ("drone", "severstal")
SEVERSTAL_CLASSES = ["background", "defect_1", "defect_2", "defect_3", "defect_4"]

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


def make_styled(
    out_dir: Path,
    style: str,
    n_train: int,
    n_test: int,
    height: int,
    width: int,
    n_classes: int,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> SynthResult:
    """Write a synthetic competition of ``style`` (``STYLES``) with its config and ``solution.csv``."""
    if style not in STYLES:
        raise KsegError(f"--style {style!r} is not one of {', '.join(STYLES)}; pick one of those")
    if style == "drone":
        result = make_competition(out_dir, n_train, n_test, height, width, n_classes, seed, on_progress)
        spec = MaskSpec.from_config(load_config(result.config).data)
        truth = {p.stem: read_mask(p, spec) for p in sorted((result.root / "test_masks").glob("*.png"))}
    else:
        result, truth = _severstal(Path(out_dir), n_train, n_test, height, width, seed, on_progress)
    write_solution(result.config, truth)
    return result


def _severstal(
    out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, on_progress: Progress | None
) -> tuple[SynthResult, dict[str, np.ndarray]]:
    """Images and label maps drawn as the drone style's (five classes), laid out as Severstal's download."""
    check_request(out_dir, n_train, n_test, height, width, 5)
    labels: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    total = n_train + n_test
    for split_code, (part, count) in enumerate((("train", n_train), ("test", n_test))):
        folder = out_dir / f"{part}_images"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = synth_scene(np.random.default_rng([seed, split_code, i]), height, width, 5)
            name = f"{part[:2]}{seed:02d}{i:05d}"
            Image.fromarray(image).save(folder / f"{name}.jpg", quality=95)
            labels[part][name] = label
            if on_progress:
                on_progress(len(labels["train"]) + len(labels["test"]), total)
    config = out_dir / "kseg.yaml"
    atomic_write_text(
        config,
        SEVERSTAL_CONFIG.format(
            seed=seed,
            classes=", ".join(SEVERSTAL_CLASSES),
            size_h=round32(height),
            size_w=round32(width),
            training=TRAINING_TEMPLATE.format(seed=seed),
        ),
    )
    cfg = load_config(config)
    table = rle_table({f"{k}.jpg": v for k, v in labels["train"].items()}, RleSource.from_config(cfg.data))
    atomic_write_text(out_dir / "train.csv", table.to_csv(index=False))
    test_names = [f"{name}.jpg" for name in labels["test"]]
    sample = pd.DataFrame({"ImageId": test_names, "EncodedPixels": "1 1", "ClassId": "1"})
    atomic_write_text(out_dir / "sample_submission.csv", sample.to_csv(index=False))
    result = SynthResult(out_dir, config, n_train, n_test, list(SEVERSTAL_CLASSES))
    return result, labels["test"]


def write_solution(config: Path, truth: dict[str, np.ndarray]) -> Path:
    """The truth label maps of the test images, written by ``kseg submit``'s own writer in the
    submission's layout, with a ``Usage`` column: the rows of every other test image Public, the rest
    Private."""
    cfg = load_config(config, ["submission.require_manifest=false", "submission.solution=null"])
    test = list_samples(cfg.data, "test")
    fmt = load_format(cfg, test)
    with tempfile.TemporaryDirectory(dir=cfg.data.root) as tmp:
        folder = Path(tmp)
        for image_id in test[ID]:
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
