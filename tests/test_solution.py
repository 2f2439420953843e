"""kseg score against a solution file in the submission's own layout (what a Kaggle host holds), and ids
built from image file names and class names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import competition_config
from PIL import Image
from test_submission import allow_hand_made, hand_made_predictions

from kseg.cli import app
from kseg.data.reading import list_samples
from kseg.errors import SubmissionError
from kseg.submission import load_format, score_file, write_submission


def _noisy_predictions(comp: Path, seed: int = 3) -> None:
    """Predictions that are the truth with a fifth of the pixels relabelled at random."""
    rng = np.random.default_rng(seed)
    allow_hand_made(comp)
    out = comp / "work" / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((comp / "test_masks").glob("*.png")):
        pred = np.asarray(Image.open(path)).copy()
        noise = rng.random(pred.shape) < 0.2
        pred[noise] = rng.integers(0, 6, noise.sum())
        Image.fromarray(pred).save(out / path.name)


def _solution(comp: Path, *overrides: str) -> Path:
    """The hidden truth written as a submission: the host's solution file."""
    hand_made_predictions(comp)
    path = comp / "solution.csv"
    write_submission(competition_config(comp, *overrides), out=path)
    return path


@pytest.mark.parametrize("metric", ["row_dice", "row_iou", "dataset_iou"])
def test_a_solution_file_scores_as_the_truth_masks_do(comp, metric):
    solution = _solution(comp)
    shuffled = pd.read_csv(solution, dtype=str, keep_default_na=False).sample(frac=1, random_state=1)
    shuffled.to_csv(solution, index=False)  # a solution's row order is its own
    (comp / "work" / "predictions").rename(comp / "truth_maps")
    _noisy_predictions(comp)
    cfg = competition_config(comp, f"submission.metric={metric}")
    sub = write_submission(cfg).path
    by_masks = score_file(sub, cfg)
    by_solution = score_file(sub, cfg, solution)
    assert 0.3 < by_masks.score < 0.99
    assert by_solution.score == pytest.approx(by_masks.score, abs=1e-12)
    pd.testing.assert_frame_equal(pd.DataFrame(by_solution.per_class), pd.DataFrame(by_masks.per_class))
    pd.testing.assert_frame_equal(by_solution.rows, by_masks.rows)
    assert by_solution.by_usage == {}


def test_usage_splits_public_and_private_and_leaves_ignored_rows_out(comp):
    solution = _solution(comp)
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    table["Usage"] = np.resize(["Public", "Private", "Private", "Ignored"], len(table))
    table.to_csv(solution, index=False)
    (comp / "work" / "predictions").rename(comp / "truth_maps")
    _noisy_predictions(comp)
    cfg = competition_config(comp)
    sub = write_submission(cfg).path
    all_rows = score_file(sub, cfg).rows
    usage = table.set_index("ImageID").loc[all_rows.index, "Usage"]
    result = score_file(sub, cfg, solution)
    assert len(result.rows) == (usage != "Ignored").sum()
    assert result.score == pytest.approx(all_rows["dice"][usage != "Ignored"].mean(), abs=1e-12)
    for part in ("Public", "Private"):
        assert result.by_usage[part] == pytest.approx(all_rows["dice"][usage == part].mean(), abs=1e-12)
    assert set(result.by_usage) == {"Public", "Private"}


def test_cli_scores_against_a_solution_file(comp, runner):
    solution = _solution(comp)
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    table["Usage"] = np.resize(["Public", "Private"], len(table))
    table.to_csv(solution, index=False)
    write_submission(competition_config(comp))  # the truth submitted: 1 in both parts
    cfg = str(comp / "kseg.yaml")
    result = runner.invoke(app, ["score", "-c", cfg, "--truth", str(solution), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) | {"per_class": None} == {
        "score": 1.0,
        "per_class": None,
        "by_usage": {"Private": 1.0, "Public": 1.0},
    }
    shown = runner.invoke(app, ["score", "-c", cfg, "--truth", str(solution)])
    assert shown.exit_code == 0 and "Private 1.0000, Public 1.0000" in shown.output


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda t: t.drop(columns=["EncodedPixels"]), "has no column 'EncodedPixels' (it has 'ImageID'); a solution"),
        (lambda t: t.iloc[1:], "does not fit the submission format (missing ids"),
        (lambda t: t.assign(EncodedPixels=t["EncodedPixels"].where(t.index != 2, "5 3 9")), "(odd count: line 4"),
    ],
)
def test_a_solution_that_does_not_fit_is_named_with_the_fix(comp, runner, change, fragment):
    solution = _solution(comp)
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    change(table).to_csv(solution, index=False)
    with pytest.raises(SubmissionError, match=re.escape(f"solution file {solution} ")):
        score_file(comp / "sample_submission.csv", competition_config(comp), solution)
    result = runner.invoke(
        app, ["score", str(comp / "sample_submission.csv"), "-c", str(comp / "kseg.yaml"), "--truth", str(solution)]
    )
    assert result.exit_code == 1 and fragment in result.output.replace("\n", " ") and "Traceback" not in result.output


def test_a_missing_solution_file_is_named(comp):
    with pytest.raises(SubmissionError, match="solution file .*nope.csv does not exist; pass --truth SOLUTION.csv"):
        score_file(comp / "sample_submission.csv", competition_config(comp), comp / "nope.csv")


def test_ids_from_image_file_names_and_class_names(comp):
    # the clouds competition's ids: 0011165.jpg_Fish
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str, keep_default_na=False)
    cfg = competition_config(comp)
    test = list_samples(cfg.data, "test")
    files = {i: Path(p).name for i, p in zip(test["ImageID"], test["image"], strict=True)}
    pairs = [row_id.rsplit("_", 1) for row_id in sample["ImageID"]]
    sample["ImageID"] = [f"{files[i]}_{cfg.data.classes[int(k)]}" for i, k in pairs]
    sample.to_csv(comp / "sample_submission.csv", index=False)
    cfg = competition_config(comp, "submission.id_format={file}_{name}")
    fmt = load_format(cfg.data, cfg.submission)
    assert fmt.ids[0] == f"{files[test['ImageID'][0]]}_{cfg.data.classes[0]}" and "." in fmt.ids[0]
    solution = _solution(comp, "submission.id_format={file}_{name}")
    assert pd.read_csv(solution)["ImageID"].tolist() == sample["ImageID"].tolist()
    assert score_file(solution, competition_config(comp, "submission.id_format={file}_{name}"), solution).score == 1.0


def _severstal(runner, tmp_path: Path) -> tuple[Path, object]:
    """A Severstal-shaped competition (defects only, long layout) with noisy predictions submitted."""
    comp = tmp_path / "sv"
    assert (
        runner.invoke(app, ["synth", str(comp), "--style", "severstal", "--train", "6", "--test", "6"]).exit_code == 0
    )
    cfg = competition_config(comp, "submission.require_manifest=false", "submission.solution=null")
    truth = comp / "work" / "predictions"
    truth.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in list_samples(cfg.data, "test")["ImageID"]:  # a rough guess: stripes of defect classes
        h, w = 64, 96
        Image.fromarray((rng.integers(0, 5, (h, 1)) * np.ones((1, w))).astype(np.uint8)).save(truth / f"{image_id}.png")
    return write_submission(cfg).path, cfg


def test_the_overall_score_and_its_usage_parts_count_the_same_rows(runner, tmp_path):
    sub, cfg = _severstal(runner, tmp_path)
    solution = tmp_path / "sv" / "solution.csv"
    full = score_file(sub, cfg, solution)
    n = full.rows["usage"].value_counts()
    parts = (n["Public"] * full.by_usage["Public"] + n["Private"] * full.by_usage["Private"]) / n.sum()
    assert full.score == pytest.approx(parts, abs=1e-12) and len(full.rows) == 6 * 4
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    defects_only = table[table["EncodedPixels"] != ""]
    keep = defects_only["ImageId"].unique()
    rest = table[~table["ImageId"].isin(keep)].drop_duplicates("ImageId")  # one (empty) row of the others
    pd.concat([defects_only, rest]).to_csv(solution, index=False)
    short = score_file(sub, cfg, solution)  # rows left out are empty truth in their image's part
    assert short.score == full.score and short.by_usage == full.by_usage


@pytest.mark.parametrize(
    ("usage", "outcome"),
    [
        (["public", "PRIVATE"], {"Public", "Private"}),
        (["Public", "Foo"], "has Usage 'Foo', which is none of Public, Private and Ignored"),
        (["Ignored", "Ignored"], "marks every row Ignored, so nothing is scored"),
    ],
)
def test_usage_values_are_kaggles_three_in_any_case(runner, tmp_path, usage, outcome):
    sub, cfg = _severstal(runner, tmp_path)
    solution = tmp_path / "sv" / "solution.csv"
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    table["Usage"] = np.resize(usage, len(table))
    table.to_csv(solution, index=False)
    if isinstance(outcome, set):
        assert set(score_file(sub, cfg, solution).by_usage) == outcome
    else:
        with pytest.raises(SubmissionError, match=outcome):
            score_file(sub, cfg, solution)


def test_an_image_the_solution_never_names_belongs_to_no_part(runner, tmp_path):
    sub, cfg = _severstal(runner, tmp_path)
    solution = tmp_path / "sv" / "solution.csv"
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    first = table["ImageId"].iloc[0]
    table[table["ImageId"] != first].to_csv(solution, index=False)
    with pytest.raises(SubmissionError, match=rf"no row of test image '{first[:-4]}'"):
        score_file(sub, cfg, solution)
