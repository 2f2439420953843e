import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import competition_config
from PIL import Image

from kseg import rle
from kseg.cli import app
from kseg.config import load_config
from kseg.errors import SubmissionError
from kseg.submission import (
    load_format,
    score_file,
    upload_submission,
    validate_bytes,
    validate_file,
    write_submission,
)


def allow_hand_made(comp: Path) -> None:
    """These tests write label maps by hand, as a user with predictions made elsewhere would."""
    path = comp / "kseg.yaml"
    tree = yaml.safe_load(path.read_text())
    tree.setdefault("submission", {})["require_manifest"] = False
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


def hand_made_predictions(comp: Path) -> None:
    """The hidden test truth as the predictions folder, written by hand."""
    allow_hand_made(comp)
    shutil.copytree(comp / "test_masks", comp / "work" / "predictions")


@pytest.fixture
def perfect(comp) -> Path:
    """A competition whose predictions are the hidden test truth, with its submission written."""
    hand_made_predictions(comp)
    write_submission(load_config(comp / "kseg.yaml"))
    return comp


def _sections(cfg):
    """What ``load_format`` reads of a config."""
    return cfg.data, cfg.submission


def _lines(comp) -> list[str]:
    return (comp / "submissions" / "submission.csv").read_text().splitlines()


def _validate(comp, lines: list[str], *overrides):
    cfg = competition_config(comp, *overrides)
    return validate_bytes(
        ("\n".join(lines) + "\n").encode(), load_format(cfg.data, cfg.submission), cfg.submission.check_overlap
    )


def _kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


# --------------------------------------------------------------------------------------------- write


def test_submission_rows_follow_the_sample(perfect):
    sub = pd.read_csv(perfect / "submissions" / "submission.csv", keep_default_na=False)
    sample = pd.read_csv(perfect / "sample_submission.csv", keep_default_na=False)
    assert list(sub.columns) == list(sample.columns)
    assert sub["ImageID"].tolist() == sample["ImageID"].tolist()
    truth = np.asarray(Image.open(perfect / "test_masks" / "test_0003.png"))
    for k in range(6):
        text = sub.set_index("ImageID").loc[f"test_0003_{k}", "EncodedPixels"]
        np.testing.assert_array_equal(rle.decode(text, truth.shape), (truth == k).astype(np.uint8))


def test_rows_in_shuffled_sample_order(comp):
    sample = pd.read_csv(comp / "sample_submission.csv", keep_default_na=False)
    sample.sample(frac=1, random_state=0).to_csv(comp / "sample_submission.csv", index=False)
    hand_made_predictions(comp)
    result = write_submission(competition_config(comp))
    written = pd.read_csv(result.path, keep_default_na=False)
    assert written["ImageID"].tolist() == pd.read_csv(comp / "sample_submission.csv")["ImageID"].tolist()


def _decoded(path: Path, image_id: str, shape: tuple[int, int], n_classes: int = 6) -> list[np.ndarray]:
    sub = pd.read_csv(path, keep_default_na=False).set_index("ImageID")["EncodedPixels"]
    return [rle.decode(sub[f"{image_id}_{k}"], shape) for k in range(n_classes)]


def test_masks_are_resized_to_each_original_size(comp):
    allow_hand_made(comp)
    pred_dir = comp / "work" / "predictions"
    pred_dir.mkdir(parents=True)
    for path in (comp / "test_masks").glob("*.png"):  # predicted at half size, like a model at training size
        Image.open(path).resize((48, 32), Image.NEAREST).save(pred_dir / path.name)
    with pytest.raises(SubmissionError, match=r"test_0000.png is 32x48 but its image needs 64x96.*resize_predictions"):
        write_submission(competition_config(comp))  # never silently: the config has to ask for it
    assert not (comp / "submissions" / "submission.csv").exists()
    result = write_submission(competition_config(comp, "submission.resize_predictions=true"))
    assert result.report.ok
    small = Image.open(pred_dir / "test_0001.png")
    expected = np.asarray(small.resize((96, 64), Image.NEAREST))
    for k, mask in enumerate(_decoded(result.path, "test_0001", (64, 96))):
        np.testing.assert_array_equal(mask, expected == k)


def test_fixed_submission_size(comp):
    hand_made_predictions(comp)
    cfg = competition_config(comp, "submission.size=[32,48]")
    result = write_submission(cfg)
    expected = np.asarray(Image.open(comp / "test_masks" / "test_0001.png").resize((48, 32), Image.NEAREST))
    for k, mask in enumerate(_decoded(result.path, "test_0001", (32, 48))):
        np.testing.assert_array_equal(mask, expected == k)
    assert validate_file(result.path, cfg).ok


def test_label_values_that_are_no_class_are_refused(comp):
    hand_made_predictions(comp)
    labels = np.asarray(Image.open(comp / "test_masks" / "test_0004.png")).copy()
    labels[:3, :3] = 9  # 6 classes: 9 is none of them
    Image.fromarray(labels).save(comp / "work" / "predictions" / "test_0004.png")
    with pytest.raises(SubmissionError, match=r"test_0004.png has label 9 in 9 pixels, but there are 6 classes"):
        write_submission(competition_config(comp))
    assert not (comp / "submissions" / "submission.csv").exists()
    labels[:3, :3] = 255  # what post-processing writes for a pixel left without a class: allowed
    Image.fromarray(labels).save(comp / "work" / "predictions" / "test_0004.png")
    assert write_submission(competition_config(comp)).report.ok


def test_npy_predictions_and_empty_token(comp):
    allow_hand_made(comp)
    pred_dir = comp / "work" / "predictions"
    pred_dir.mkdir(parents=True)
    for path in (comp / "test_masks").glob("*.png"):
        np.save(pred_dir / f"{path.stem}.npy", np.asarray(Image.open(path)))
    result = write_submission(competition_config(comp, "submission.empty_token=-1"), out=comp / "sub.csv")
    text = (comp / "sub.csv").read_text()
    assert ",-1\n" in text and ",\n" not in text
    assert result.empty_rows > 0


def _first_pixel(labels: np.ndarray, value) -> np.ndarray:
    labels[0, 0] = value
    return labels


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (lambda m: _first_pixel(m.astype(np.int16), -1), "holds the negative value -1"),
        (lambda m: _first_pixel(m.astype(np.float32), np.nan), "holds float32 values"),
        (lambda m: m.astype(np.float64) + 0.4, "holds float64 values"),
    ],
)
def test_npy_maps_of_negative_nan_or_fractional_values_are_refused(comp, values, message):
    allow_hand_made(comp)
    pred_dir = comp / "work" / "predictions"
    pred_dir.mkdir(parents=True)
    for path in (comp / "test_masks").glob("*.png"):
        np.save(pred_dir / f"{path.stem}.npy", np.asarray(Image.open(path)))
    np.save(pred_dir / "test_0002.npy", values(np.asarray(Image.open(comp / "test_masks" / "test_0002.png"))))
    with pytest.raises(SubmissionError, match=rf"test_0002.npy {message}, but a label map holds class indices"):
        write_submission(competition_config(comp))
    assert not (comp / "submissions" / "submission.csv").exists()


def test_missing_predictions_name_the_image_and_write_nothing(comp):
    hand_made_predictions(comp)
    (comp / "work" / "predictions" / "test_0002.png").unlink()
    with pytest.raises(
        SubmissionError, match=r"no prediction for test image 'test_0002'.*\(1 of 8 missing\); run 'kseg infer'"
    ):
        write_submission(competition_config(comp))
    assert not (comp / "submissions" / "submission.csv").exists()


def test_label_maps_without_kseg_s_manifest_are_refused_unless_asked(comp):
    shutil.copytree(comp / "test_masks", comp / "work" / "predictions")
    with pytest.raises(SubmissionError, match=r"has no inference.json manifest.*submission.require_manifest: false"):
        write_submission(competition_config(comp))
    assert not (comp / "submissions" / "submission.csv").exists()
    result = write_submission(competition_config(comp, "submission.require_manifest=false"))
    assert "not checked against a manifest" in result.note and result.report.ok


def test_no_predictions_folder(comp):
    with pytest.raises(SubmissionError, match="predictions folder .* does not exist; run 'kseg infer' first"):
        write_submission(competition_config(comp))


def test_sample_with_ids_that_are_no_test_image(comp):
    sample = pd.read_csv(comp / "sample_submission.csv", keep_default_na=False)
    sample.loc[3, "ImageID"] = "test_0000-3"
    sample.to_csv(comp / "sample_submission.csv", index=False)
    with pytest.raises(SubmissionError, match="id 'test_0000-3' .* is no test image and class"):
        load_format(*_sections(competition_config(comp)))


def test_custom_id_format(comp):
    sample = pd.read_csv(comp / "sample_submission.csv", keep_default_na=False)
    sample["ImageID"] = sample["ImageID"].str.replace(r"_(\d)$", r"-class\1", regex=True)
    sample.to_csv(comp / "sample_submission.csv", index=False)
    hand_made_predictions(comp)
    result = write_submission(competition_config(comp, "submission.id_format={id}-class{k}"))
    assert pd.read_csv(result.path)["ImageID"][1] == "test_0000-class1"


# ------------------------------------------------------------------------------------------ validate


def test_written_file_is_valid(perfect):
    report = validate_file(perfect / "submissions" / "submission.csv", competition_config(perfect))
    assert report.ok and report.n_rows == 48


def _first_nonempty(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if i and len(line.split(",")[1].split()) >= 4)


CORRUPTIONS = {
    "header": lambda L: ["ImageId,EncodedPixels"] + L[1:],
    "duplicate ids": lambda L: L + [L[1]],
    "missing ids": lambda L: L[:-1],
    "unknown ids": lambda L: L + ["test_9999_0,"],
    "not integers": lambda L: L[:1] + [L[1].split(",")[0] + ",1 2 a 4"] + L[2:],
    "odd count": lambda L: L[:1] + [L[1].split(",")[0] + ",1 2 3"] + L[2:],
    "not positive": lambda L: L[:1] + [L[1].split(",")[0] + ",0 2"] + L[2:],
    "starts not ascending": lambda L: L[:1] + [L[1].split(",")[0] + ",10 2 3 2"] + L[2:],
    "overlapping runs": lambda L: L[:1] + [L[1].split(",")[0] + ",1 5 3 4"] + L[2:],
    "outside the mask": lambda L: L[:1] + [L[1].split(",")[0] + f",{64 * 96 - 1} 3"] + L[2:],
    "classes overlap": lambda L: [L[0], L[1].split(",")[0] + ",1 100"] + [L[2].split(",")[0] + ",50 10"] + L[3:],
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_is_rejected(perfect, runner, kind):
    lines = CORRUPTIONS[kind](_lines(perfect))
    report = _validate(perfect, lines)
    assert not report.ok
    assert kind in _kinds(report)
    problem = next(p for p in report.problems if p.kind == kind)
    assert problem.count >= 1 and problem.examples and problem.fix
    bad = perfect / "corrupt.csv"
    bad.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["validate", str(bad), "-c", str(perfect / "kseg.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert kind in result.output and problem.examples[0].split(":")[0] in result.output
    assert "Traceback" not in result.output


READINGS = {  # files that the fast reader must read as pandas does, or leave to pandas
    "as written": lambda L: L,
    "windows line ends": lambda L: [line + "\r" for line in L],
    "quoted cells": lambda L: [L[0]] + [f'"{a}","{b}"' for a, b in (line.split(",", 1) for line in L[1:])],
    "a blank line": lambda L: L[:3] + [""] + L[3:],
    "a third cell": lambda L: L[:2] + [L[2] + ",x"] + L[3:],
    "a short line": lambda L: L[:2] + [L[2].split(",")[0]] + L[3:],
    "non-ascii id": lambda L: L[:2] + ["tëst," + L[2].split(",")[1]] + L[3:],
    "spaces around runs": lambda L: L[:1] + [L[1].split(",")[0] + ", 1 2  3 4 "] + L[2:],
    "duplicate header": lambda L: ["ImageID,ImageID"] + L[1:],
    "empty token": lambda L: L[:1] + [L[1].split(",")[0] + ",-1"] + L[2:],
    "not integers": CORRUPTIONS["not integers"],
    "classes overlap": CORRUPTIONS["classes overlap"],
}


@pytest.mark.parametrize("reading", list(READINGS))
def test_the_fast_reader_reports_what_pandas_reading_reports(perfect, monkeypatch, reading):
    """validate_bytes reads plain files without pandas; each variant gives the same report both ways."""
    from kseg.submission import table

    data = ("\n".join(READINGS[reading](_lines(perfect))) + "\n").encode()
    fmt = load_format(*_sections(competition_config(perfect)))
    fast = validate_bytes(data, fmt)
    monkeypatch.setattr(table, "_plain", lambda _data: None)
    slow = validate_bytes(data, fmt)
    assert (fast.n_rows, fast.problems) == (slow.n_rows, slow.problems)
    valid = ("as written", "windows line ends", "quoted cells", "a blank line", "a short line", "spaces around runs")
    assert fast.ok == (reading in valid)  # a short line is an empty mask; extra spaces separate numbers


def test_not_a_csv(perfect):
    report = validate_bytes(
        b'ImageID,EncodedPixels\n"unterminated,1 2\n', load_format(*_sections(competition_config(perfect)))
    )
    assert _kinds(report) == {"not a CSV"}
    empty = validate_bytes(b"\n", load_format(*_sections(competition_config(perfect))))
    assert _kinds(empty) == {"not a CSV"} and "the file is empty" in empty.problems[0].examples[0]


def test_overlap_check_can_be_turned_off(perfect):
    lines = CORRUPTIONS["classes overlap"](_lines(perfect))
    assert _validate(perfect, lines, "submission.check_overlap=false").ok


def test_minus_one_empty_token_hint(perfect):
    lines = [line + "-1" if line.endswith(",") else line for line in _lines(perfect)]
    report = _validate(perfect, lines)
    problem = next(p for p in report.problems if p.kind == "not integers")
    assert "set submission.empty_token" in problem.fix
    assert _validate(perfect, lines, "submission.empty_token=-1").ok


def test_problem_counts_and_line_numbers(perfect):
    lines = _lines(perfect)
    for i in (3, 7, 11):
        lines[i] = lines[i].split(",")[0] + ",1 2 3"
    problem = _validate(perfect, lines).problems[0]
    assert problem.kind == "odd count" and problem.count == 3
    assert problem.examples[0].startswith("line 4 (")


def test_bad_and_odd_rows_leave_the_other_rows_checked_in_place(perfect):
    lines = _lines(perfect)
    name = [line.split(",")[0] for line in lines]
    lines[1] = name[1] + ",1 2 a 4"  # not integers: its numbers are dropped
    lines[2] = name[2] + ",1 2 3"  # odd: dropped too, so that the rows after it still pair up
    lines[3] = name[3] + f",{64 * 96 - 1} 3"  # outside the mask
    lines[4] = name[4] + ",1 5 3 4"  # overlapping runs
    lines[5] = name[5] + ",5 0 5 2"  # a zero length, and a start that does not move on
    found = {p.kind: p for p in _validate(perfect, lines).problems}
    expected = {"not integers": 1, "odd count": 2, "outside the mask": 3, "overlapping runs": 4}  # index in lines
    for kind, i in expected.items():
        assert found[kind].count == 1 and found[kind].examples[0].startswith(f"line {i + 1} ("), kind
    assert found["not positive"].examples[0].startswith("line 6 (")
    assert found["starts not ascending"].examples[0].startswith("line 6 (")


def test_cli_validate_exit_codes(runner, perfect):
    good = runner.invoke(
        app, ["validate", str(perfect / "submissions" / "submission.csv"), "-c", str(perfect / "kseg.yaml")]
    )
    assert good.exit_code == 0 and "valid" in good.output
    bad_path = perfect / "bad.csv"
    lines = _lines(perfect)
    bad_path.write_text("\n".join(CORRUPTIONS["outside the mask"](CORRUPTIONS["missing ids"](lines))) + "\n")
    bad = runner.invoke(app, ["validate", str(bad_path), "-c", str(perfect / "kseg.yaml")])
    assert bad.exit_code == 1
    assert "missing ids" in bad.output and "outside the mask" in bad.output
    assert "Traceback" not in bad.output


def test_cli_validate_missing_file(runner, perfect):
    result = runner.invoke(app, ["validate", str(perfect / "nope.csv"), "-c", str(perfect / "kseg.yaml")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_cli_validate_and_score_default_to_the_submission_path(runner, perfect):
    cfg = str(perfect / "kseg.yaml")
    good = runner.invoke(app, ["validate", "-c", cfg])
    assert good.exit_code == 0 and "valid" in good.output
    scored = runner.invoke(app, ["score", "-c", cfg, "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["score"] == pytest.approx(1.0)
    moved = runner.invoke(app, ["validate", "-c", cfg, "--set", "submission.path=elsewhere.csv"])
    assert moved.exit_code == 1 and "run 'kseg submit'" in moved.output and "Traceback" not in moved.output


# --------------------------------------------------------------------------------------------- score


def test_truth_scores_one(perfect):
    result = score_file(perfect / "submissions" / "submission.csv", competition_config(perfect))
    assert result.score == 1.0
    assert all(v["dice"] == 1.0 and v["iou"] == 1.0 for v in result.per_class.values())


def test_all_empty_file_scores_the_empty_row_share(perfect):
    truth = [np.asarray(Image.open(p)) for p in sorted((perfect / "test_masks").glob("*.png"))]
    empty_share = np.mean([(t == k).sum() == 0 for t in truth for k in range(6)])
    result = score_file(perfect / "sample_submission.csv", competition_config(perfect))
    assert result.score == pytest.approx(empty_share)
    assert result.per_class["background"]["dice"] == 0.0


def test_score_matches_pixelwise_dice(comp):
    rng = np.random.default_rng(3)
    allow_hand_made(comp)
    pred_dir = comp / "work" / "predictions"
    pred_dir.mkdir(parents=True)
    truths, preds = {}, {}
    for path in sorted((comp / "test_masks").glob("*.png")):
        truth = np.asarray(Image.open(path))
        pred = truth.copy()
        noise = rng.random(truth.shape) < 0.2
        pred[noise] = rng.integers(0, 6, noise.sum())
        Image.fromarray(pred).save(pred_dir / path.name)
        truths[path.stem], preds[path.stem] = truth, pred
    write_submission(competition_config(comp))
    result = score_file(comp / "submissions" / "submission.csv", competition_config(comp))
    expected = []
    for image_id in pd.read_csv(comp / "test.csv")["ImageID"]:
        t, p = truths[image_id], preds[image_id]
        for k in range(6):
            total = (t == k).sum() + (p == k).sum()
            expected.append(1.0 if total == 0 else 2 * ((t == k) & (p == k)).sum() / total)
    assert result.score == pytest.approx(np.mean(expected), abs=1e-12)
    assert 0.3 < result.score < 0.99


def test_score_leaves_ignored_truth_pixels_out(comp):
    truth_dir = comp / "truth"
    truth_dir.mkdir()
    for path in (comp / "test_masks").glob("*.png"):
        t = np.asarray(Image.open(path)).copy()
        t[:, :10] = 255  # not scored
        Image.fromarray(t).save(truth_dir / path.name)
    hand_made_predictions(comp)
    write_submission(competition_config(comp))
    assert score_file(comp / "submissions" / "submission.csv", competition_config(comp), truth_dir).score == 1.0


def test_score_refuses_an_invalid_file(perfect):
    bad = perfect / "bad.csv"
    bad.write_text("\n".join(_lines(perfect)[:-1]) + "\n")
    with pytest.raises(SubmissionError, match="is not a valid submission \\(missing ids"):
        score_file(bad, competition_config(perfect))


def test_score_needs_truth(perfect):
    with pytest.raises(SubmissionError, match="no true masks to score against"):
        score_file(
            perfect / "submissions" / "submission.csv", competition_config(perfect, "data.test_mask_template=null")
        )


def test_cli_score_json(runner, perfect):
    result = runner.invoke(
        app, ["score", str(perfect / "sample_submission.csv"), "-c", str(perfect / "kseg.yaml"), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == {"score", "per_class"}
    assert set(payload["per_class"]["car"]) == {"dice", "iou", "empty_share", "rows"}


# -------------------------------------------------------------------------------------------- upload


class FakeApi:
    def __init__(self):
        self.calls = []

    def competition_submit(self, file_name, message, competition):
        self.calls.append((file_name, message, competition))


def test_upload_sends_a_valid_file(perfect):
    api = FakeApi()
    path = perfect / "submissions" / "submission.csv"
    upload_submission(path, validate_file(path, competition_config(perfect)), "drone-seg", "fold ensemble", api=api)
    assert api.calls == [(str(path), "fold ensemble", "drone-seg")]


def test_upload_refuses_an_invalid_file(perfect):
    api = FakeApi()
    bad = perfect / "bad.csv"
    bad.write_text("\n".join(_lines(perfect) + [_lines(perfect)[1]]) + "\n")
    with pytest.raises(SubmissionError, match=r"refusing to upload .*\(duplicate ids"):
        upload_submission(bad, validate_file(bad, competition_config(perfect)), "drone-seg", "x", api=api)
    assert api.calls == []


def test_cli_submit_and_upload(runner, comp, monkeypatch):
    hand_made_predictions(comp)
    api = FakeApi()
    monkeypatch.setattr("kseg.submission.kaggle.kaggle_api", lambda: api)
    result = runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml"), "--upload", "--competition", "c", "-m", "hi"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "uploaded to c" in result.output
    assert api.calls == [(str(comp / "submissions" / "submission.csv"), "hi", "c")]


def test_cli_upload_without_competition(runner, comp):
    hand_made_predictions(comp)
    result = runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml"), "--upload"])
    assert result.exit_code == 1 and "--upload needs --competition" in result.output


def test_missing_kaggle_package_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kaggle(name, *args, **kwargs):
        if name.startswith("kaggle"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kaggle)
    from kseg.submission import kaggle_api

    with pytest.raises(SubmissionError, match=r"pip install 'kseg\[kaggle\]'"):
        kaggle_api()


def test_score_a_folder_of_label_maps(comp, runner):
    from kseg.submission import score_label_maps

    cfg = competition_config(comp)
    result = score_label_maps(cfg, comp / "test_masks", comp / "test_masks")
    assert result.score == 1.0 and len(result.rows) == 8 * 6
    out = runner.invoke(app, ["score", "-c", str(comp / "kseg.yaml"), "--predictions", str(comp / "test_masks")])
    assert out.exit_code == 1 and "--predictions needs --truth DIR" in out.output
    out = runner.invoke(app, ["score", "-c", str(comp / "kseg.yaml")])  # no submission written yet
    assert out.exit_code == 1 and "does not exist; check the path, or run 'kseg submit'" in out.output
    both = ["score", "x.csv", "-c", str(comp / "kseg.yaml"), "--predictions", str(comp / "test_masks")]
    out = runner.invoke(app, both)
    assert out.exit_code == 1 and "not both" in out.output
