"""kseg synth --style: each competition shape end to end through the CLI (synth, split, train, tune, infer
with TTA, submit, validate, score against the hidden solution.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FAST

from kseg.cli import app
from kseg.config import load_config

TINY = [*FAST, "train.epochs=2", "split.n_folds=2", "data.image_size=[32,64]"]


def _cli(runner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"kseg {' '.join(args[:2])}: {result.output}"
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("style", ["drone", "severstal", "clouds", "instances"])
def test_each_style_runs_end_to_end(runner, tmp_path, style):
    comp = tmp_path / style
    _cli(
        runner, "synth", str(comp), "--style", style, "--train", "10", "--test", "4", "--height", "32", "--width", "64"
    )
    config = ["-c", str(comp / "kseg.yaml"), *[x for item in TINY for x in ("--set", item)]]
    _cli(runner, "split", *config)
    _cli(runner, "train", "--fold", "all", *config)
    _cli(runner, "tune", *config)
    _cli(runner, "report", *config)
    _cli(runner, "infer", "--tta", *config)
    _cli(runner, "submit", *config)
    _cli(runner, "validate", *config)
    scored = json.loads(_cli(runner, "score", "--truth", str(comp / "solution.csv"), "--json", *config))
    assert 0.0 <= scored["score"] <= 1.0 and set(scored["by_usage"]) == {"Public", "Private"}
    solution = pd.read_csv(comp / "solution.csv", dtype=str, keep_default_na=False)
    submission = pd.read_csv(comp / "submissions" / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.columns) == [c for c in solution.columns if c != "Usage"]
    if style == "drone":  # the solution scores as the truth masks it was written from
        by_masks = json.loads(_cli(runner, "score", "--json", *config))
        assert scored["score"] == pytest.approx(by_masks["score"], abs=1e-12)
        assert len(submission) == 4 * 6
    elif style == "severstal":  # defects only, in the long layout; kseg score reads submission.solution itself
        assert (submission["EncodedPixels"] != "").all() and set(submission["ClassId"]) <= {"1", "2", "3", "4"}
        assert json.loads(_cli(runner, "score", "--json", *config))["score"] == scored["score"]
    elif style == "instances":  # a row per ship (ids repeat), an empty row for an image without; scored by F2
        assert set(submission["ImageId"]) == set(solution["ImageId"]) and scored["per_class"]["ship"]["fbeta"] >= 0
        assert list(scored["per_class"]) == ["ship"]
        tuned = json.loads((comp / "work" / "postprocess.json").read_text())
        untuned = {"threshold": 0.0, "min_area": 0.0, "gate": 0.0, "gate_area": 0.0, "presence": 0.0}
        assert tuned["params"]["sea"] == untuned  # not scored: not tuned
    else:  # every (file, class) row, masks at a quarter of each side (8x16), classes free to overlap
        assert list(submission["Image_Label"]) == list(solution["Image_Label"]) and len(submission) == 4 * 4
        runs = [np.array(r.split(), dtype=int) for r in submission["EncodedPixels"] if r]
        assert all((r[0::2] + r[1::2] - 1).max() <= 8 * 16 for r in runs)
        post = json.loads((comp / "work" / "postprocess.json").read_text())
        assert post["multilabel"] and set(post["params"]) == {"Fish", "Flower", "Gravel", "Sugar"}


def test_the_severstal_style_is_laid_out_as_the_download(runner, tmp_path):
    comp = tmp_path / "sv"
    _cli(runner, "synth", str(comp), "--style", "severstal", "--train", "4", "--test", "3")
    assert sorted(p.name for p in comp.iterdir()) == [
        "kseg.yaml",
        "sample_submission.csv",
        "solution.csv",
        "test_images",
        "train.csv",
        "train_images",
    ]
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert train["ImageId"].str.endswith(".jpg").all() and (train["EncodedPixels"] != "").all()
    assert {p.name for p in (comp / "train_images").iterdir()} >= set(train["ImageId"])
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["ImageId", "EncodedPixels", "ClassId"] and len(sample) == 3
    cfg = yaml.safe_load((comp / "kseg.yaml").read_text())
    assert cfg["submission"]["layout"] == "long" and cfg["data"]["mask_format"] == "rle"


def test_the_clouds_style_is_laid_out_as_the_download_with_overlapping_classes(runner, tmp_path):
    from kseg.config import load_config
    from kseg.data.reading import MaskSpec, list_samples, read_mask

    comp = tmp_path / "cl"
    _cli(runner, "synth", str(comp), "--style", "clouds", "--train", "12", "--test", "3")
    assert sorted(p.name for p in comp.iterdir()) == [
        "kseg.yaml",
        "sample_submission.csv",
        "solution.csv",
        "test_images",
        "train.csv",
        "train_images",
    ]
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["Image_Label", "EncodedPixels"] and len(train) == 12 * 4
    assert train["Image_Label"].str.match(r"^tr\d+\.jpg_(Fish|Flower|Gravel|Sugar)$").all()
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["Image_Label", "EncodedPixels"] and len(sample) == 3 * 4
    cfg = load_config(comp / "kseg.yaml")
    assert cfg.multilabel and cfg.submission.size == (16, 24) and cfg.submission.row_id == "{file}_{name}"
    spec = MaskSpec.from_config(cfg.data)
    maps = [read_mask(p, spec) for p in list_samples(cfg.data, "train")["mask"]]
    overlap = sum(int((np.bitwise_count(m) >= 2).sum()) for m in maps)
    assert overlap > 0  # pixels that hold two or more classes


def test_the_instances_style_is_laid_out_as_the_airbus_download(runner, tmp_path):
    from kseg.metrics.instances import components

    comp = tmp_path / "ships"
    _cli(runner, "synth", str(comp), "--style", "instances", "--train", "12", "--test", "3")
    assert sorted(p.name for p in comp.iterdir()) == [
        "kseg.yaml",
        "sample_submission_v2.csv",
        "solution.csv",
        "test_v2",
        "train_ship_segmentations_v2.csv",
        "train_v2",
    ]
    train = pd.read_csv(comp / "train_ship_segmentations_v2.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["ImageId", "EncodedPixels"] and set(train["ImageId"]) == {
        p.name for p in (comp / "train_v2").iterdir()
    }
    from kseg.config import load_config
    from kseg.data.reading import MaskSpec, list_samples, read_mask

    cfg = load_config(comp / "kseg.yaml")
    samples = list_samples(cfg.data, "train")
    spec = MaskSpec.from_config(cfg.data)
    for name, mask in zip(samples["image"], samples["mask"], strict=True):  # one row per ship, ships apart
        rows = train[train["ImageId"] == Path(name).name]["EncodedPixels"]
        ships = components(read_mask(mask, spec) == 1)[1]
        assert (len(rows), (rows != "").sum()) == ((ships, ships) if ships else (1, 0))


def test_an_unknown_style_is_one_line(runner, tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--style", "airbus"])
    message = "--style 'airbus' is not one of drone, severstal, clouds, instances"
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("style, classes", [("clouds", "Fish, Flower, Gravel, Sugar"), ("instances", "sea, ship")])
def test_a_class_count_for_a_style_with_fixed_classes_is_one_line(runner, tmp_path, style, classes):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--style", style, "--classes", "8"])
    message = f"--classes 8 does not apply to --style {style}, whose classes are fixed ({classes}); leave --classes out"
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_the_drone_style_takes_a_class_count(runner, tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--style", "drone", "--classes", "3", "--train", "4"])
    assert result.exit_code == 0, result.output
    assert len(load_config(tmp_path / "x" / "kseg.yaml").data.classes) == 3 and "3 classes" in result.output


def test_every_example_config_loads():
    from kseg.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {"drone-12class.yaml", "severstal.yaml", "clouds.yaml", "airbus-ships.yaml"} <= {c.name for c in configs}
    for path in configs:
        load_config(path)


def test_the_severstal_style_is_as_empty_heavy_as_severstal(runner, tmp_path):
    """Most (image, defect) rows empty and about half the images clean, as in Severstal (86% and 47%), and
    every defect class in the training set even of a small download."""
    from kseg.synth.scenes import steel_scene

    present = np.array(
        [
            [(steel_scene(np.random.default_rng([5, 0, i]), 32, 64)[1] == k).any() for k in range(1, 5)]
            for i in range(300)
        ]
    )
    assert 0.8 < 1 - present.mean() < 0.92
    assert 0.4 < (~present.any(1)).mean() < 0.6
    assert present[:, 2].sum() > present[:, 1].sum()  # class 3 the common defect, class 2 the rare one
    comp = tmp_path / "steel"
    _cli(runner, "synth", str(comp), "--style", "severstal", "--train", "6", "--test", "2", "--seed", "5")
    rows = pd.read_csv(comp / "train.csv")
    assert set(rows["ClassId"]) == {1, 2, 3, 4}
