"""Submission layouts described in config (submission.layout, rows, classes, class_format): kseg submit,
kseg validate and kseg score follow the same description, and files round-trip byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import competition_config
from PIL import Image
from test_solution import _noisy_predictions
from test_submission import hand_made_predictions

from kseg import rle
from kseg.cli import app
from kseg.errors import ConfigError
from kseg.submission import load_format, score_file, validate_bytes, write_submission

SEVERSTAL = ["submission.layout=long", "submission.rows=nonempty", "submission.sample=null"]
LAYOUTS = {
    "wide, all rows": [],
    "wide, non-empty rows": ["submission.rows=nonempty"],
    "long, all rows": ["submission.layout=long", "submission.sample=null"],
    "long, non-empty rows, some classes by name": [
        *SEVERSTAL,
        "submission.classes=[building,road,car]",
        "submission.class_format='{name}'",
    ],
    "long, non-empty, file names": [*SEVERSTAL, "submission.id_format='{file}'", "submission.classes=[road,car]"],
}


def _decode(path: Path, cfg) -> dict[str, np.ndarray]:
    """A submission file back to one label map per test image (classes without rows stay 0)."""
    fmt = load_format(cfg.data, cfg.submission)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    keys = table.iloc[:, 0].tolist()
    if fmt.layout == "long":
        keys = [f"{i},{c}" for i, c in zip(keys, table.iloc[:, 2], strict=True)]
    index = fmt.row_index()
    maps = {i: np.zeros(tuple(s), np.uint8) for i, s in zip(fmt.image_ids, fmt.shapes, strict=True)}
    for key, text in zip(keys, table.iloc[:, 1], strict=True):
        row = index[key]
        image = fmt.image_ids[fmt.row_image[row]]
        shape = maps[image].shape
        maps[image][rle.decode(text, shape, fmt.order, fmt.empty) == 1] = fmt.row_class[row]
    return maps


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_round_trips_byte_for_byte(comp, layout):
    overrides = LAYOUTS[layout]
    hand_made_predictions(comp)
    cfg = competition_config(comp, *overrides)
    first = write_submission(cfg, out=comp / "first.csv")
    assert first.report.ok
    predictions = comp / "decoded"
    predictions.mkdir()
    for image_id, labels in _decode(first.path, cfg).items():
        Image.fromarray(labels).save(predictions / f"{image_id}.png")
    again = write_submission(cfg, out=comp / "again.csv", predictions=predictions)
    assert again.path.read_bytes() == first.path.read_bytes()
    assert score_file(first.path, cfg).score == 1.0


def test_the_long_non_empty_layout_is_written_as_severstal_is(comp):
    hand_made_predictions(comp)
    cfg = competition_config(comp, *SEVERSTAL, "submission.classes=[building,road,car]")
    table = pd.read_csv(write_submission(cfg).path, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["ImageID", "EncodedPixels", "ClassId"]
    assert set(table["ClassId"]) <= {"2", "3", "5"} and (table["EncodedPixels"] != "").all()
    truth = {p.stem: np.asarray(Image.open(p)) for p in (comp / "test_masks").glob("*.png")}
    expected = {(i, str(k)) for i, t in truth.items() for k in (2, 3, 5) if (t == k).any()}
    assert set(zip(table["ImageID"], table["ClassId"], strict=True)) == expected
    assert len(table) == len(expected) < len(truth) * 3  # some (image, class) pairs are empty


def test_scores_follow_the_layout(comp):
    # the same noisy predictions scored in the wide layout (every row) and in a long non-empty layout of
    # three classes: the long score is the wide rows' mean over those classes
    _noisy_predictions(comp)
    wide = score_file(write_submission(competition_config(comp), out=comp / "wide.csv").path, competition_config(comp))
    long_cfg = competition_config(comp, *SEVERSTAL, "submission.classes=[building,road,car]")
    long = score_file(write_submission(long_cfg, out=comp / "long.csv").path, long_cfg)
    chosen = wide.rows["class"].isin([2, 3, 5]).to_numpy()
    assert long.score == pytest.approx(wide.rows["dice"][chosen].mean(), abs=1e-12)
    assert len(long.rows) == chosen.sum() and set(long.per_class) == {"building", "road", "car"}
    # and against a solution file written in the same layout
    shutil.move(comp / "work" / "predictions", comp / "noisy")
    hand_made_predictions(comp)
    solution = write_submission(long_cfg, out=comp / "solution.csv").path
    assert score_file(comp / "long.csv", long_cfg, solution).score == pytest.approx(long.score, abs=1e-12)


def test_validation_follows_the_layout(comp):
    hand_made_predictions(comp)
    cfg = competition_config(comp, *SEVERSTAL)
    fmt = load_format(cfg.data, cfg.submission)
    lines = write_submission(cfg).path.read_text().splitlines()
    assert validate_bytes(("\n".join(lines[:3]) + "\n").encode(), fmt).ok  # missing rows are empty masks
    image, mask, _ = lines[1].split(",")
    bad = [lines[0], lines[1], f"{image},{mask},9", lines[1]]
    report = validate_bytes(("\n".join(bad) + "\n").encode(), fmt)
    kinds = {p.kind: p for p in report.problems}
    assert {"duplicate ids", "unknown ids"} <= set(kinds)  # (the repeated row also overlaps itself)
    assert f"{image},9" in kinds["unknown ids"].examples[0]
    every_row = competition_config(comp, "submission.layout=long", "submission.sample=null")
    full = write_submission(every_row, out=comp / "full.csv").path.read_text().splitlines()
    report = validate_bytes(("\n".join(full[:-1]) + "\n").encode(), load_format(every_row.data, every_row.submission))
    assert [p.kind for p in report.problems] == ["missing ids"]
    header = validate_bytes(b"ImageID,EncodedPixels\nx,1 1\n", fmt)
    assert header.problems[0].kind == "header" and "ImageID,EncodedPixels,ClassId" in header.problems[0].examples[0]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["submission.layout=long", "submission.id_format='{id}_{k}'"], "names the image column of the long layout"),
        (["submission.class_format='{id}'"], "submission.class_format '{id}' must name the class"),
        (["submission.classes=[boat]"], "submission.classes names 'boat', which is not in data.classes"),
        (["submission.id_format='{file}'"], "has no class field, which only works when one class gets rows"),
        (["submission.id_format='row_{k}'"], "must contain both an image field"),
    ],
)
def test_layout_config_errors_name_the_key_and_the_fix(comp, runner, overrides, fragment):
    with pytest.raises(ConfigError, match=None) as caught:
        competition_config(comp, *overrides)
    assert fragment in str(caught.value)
    sets = [x for item in overrides for x in ("--set", item)]
    result = runner.invoke(app, ["validate", "-c", str(comp / "kseg.yaml"), *sets])
    assert result.exit_code == 1 and fragment in result.output.replace("\n", " ") and "Traceback" not in result.output


def test_a_long_sample_that_names_no_test_image_is_refused(comp):
    pd.DataFrame({"ImageId": ["nope.png"], "EncodedPixels": ["1 1"], "ClassId": ["1"]}).to_csv(
        comp / "sample_long.csv", index=False
    )
    cfg = competition_config(
        comp, "submission.layout=long", "submission.sample=sample_long.csv", "submission.id_format='{file}'"
    )
    with pytest.raises(Exception, match=r"sample_long.csv id 'nope.png' \(1 such\) names no test image"):
        load_format(cfg.data, cfg.submission)
    pd.DataFrame({"ImageId": ["test_0000.png"], "EncodedPixels": ["1 1"]}).to_csv(comp / "sample_long.csv", index=False)
    with pytest.raises(Exception, match="has 2 column"):
        load_format(cfg.data, cfg.submission)


def test_the_documented_layout_excerpts_are_valid_config():
    from kseg.schema import DataConfig, SubmissionConfig

    page = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    section = page.split("## Other competition formats", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    assert len(blocks) == 4  # drone, clouds, severstal, airbus (the bash block of the styles is not yaml)
    for block in blocks:
        tree = yaml.safe_load(block)
        sub = SubmissionConfig.model_validate(tree["submission"])
        assert sub.row_id.startswith(("{id}", "{file}"))
        if "data" in tree:  # the data excerpt holds with the classes it names
            DataConfig.model_validate({"classes": ["a", "b"], **tree["data"]})
