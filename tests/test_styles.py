"""kseg synth --style: each competition shape end to end through the CLI (synth, split, train, tune, infer
with TTA, submit, validate, score against the hidden solution.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import FAST

from kseg.cli import app

TINY = [*FAST, "train.epochs=2", "split.n_folds=2", "data.image_size=[32,64]"]


def _cli(runner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"kseg {' '.join(args[:2])}: {result.output}"
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("style", ["drone", "severstal"])
def test_each_style_runs_end_to_end(runner, tmp_path, style):
    comp = tmp_path / style
    _cli(
        runner, "synth", str(comp), "--style", style, "--train", "10", "--test", "4", "--height", "32", "--width", "64"
    )
    config = ["-c", str(comp / "kseg.yaml"), *[x for item in TINY for x in ("--set", item)]]
    _cli(runner, "split", *config)
    _cli(runner, "train", "--fold", "all", *config)
    _cli(runner, "tune", *config)
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
    else:  # defects only, in the long layout; kseg score reads submission.solution by itself
        assert (submission["EncodedPixels"] != "").all() and set(submission["ClassId"]) <= {"1", "2", "3", "4"}
        assert json.loads(_cli(runner, "score", "--json", *config))["score"] == scored["score"]


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


def test_an_unknown_style_is_one_line(runner, tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--style", "clouds"])
    assert result.exit_code == 1 and "--style 'clouds' is not one of drone, severstal" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_every_example_config_loads():
    from kseg.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {"drone-12class.yaml", "severstal.yaml"} <= {c.name for c in configs}
    for path in configs:
        load_config(path)
