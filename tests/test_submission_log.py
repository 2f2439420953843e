"""The submission log: one row per `kseg submit`, the file's sha256, CV beside the public score."""

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from test_submission import hand_made_predictions

from kseg.cli import app
from kseg.config import load_config
from kseg.errors import SubmissionError
from kseg.submission import fill_public_scores, read_log, record_submission, write_submission
from kseg.submission.log import COLUMNS


class ScoringApi:
    """A stand-in for the Kaggle API: records uploads, lists them with a score once ``ready``."""

    def __init__(self, ready: bool = True, fail: bool = False):
        self.ready, self.fail, self.uploads = ready, fail, []

    def competition_submit(self, file_name, message, competition):
        if self.fail:
            raise RuntimeError("403 Forbidden")
        self.uploads.append((Path(file_name).name, message, datetime.utcnow()))

    def competition_submissions(self, competition):
        return [
            SimpleNamespace(
                fileName=name,
                description=message,
                date=date + timedelta(seconds=2),
                status="SubmissionStatus.COMPLETE" if self.ready else "SubmissionStatus.PENDING",
                publicScore=f"0.{700 + i}" if self.ready else None,
            )
            for i, (name, message, date) in enumerate(self.uploads)
        ][::-1]  # newest first, as Kaggle lists them


def _flat(result) -> str:
    """The command's output with rich's line wrapping (long paths) undone."""
    return " ".join(result.output.split())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_submit_appends_a_row_whose_sha256_matches_the_file(runner, comp):
    hand_made_predictions(comp)
    args = ["submit", "-c", str(comp / "kseg.yaml")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    sub = comp / "submissions" / "submission.csv"
    one = _sha(sub)
    second = runner.invoke(app, [*args, "--no-postprocess", "--out", str(comp / "submissions" / "b.csv")])
    assert second.exit_code == 0, second.output
    log = pd.read_csv(comp / "submissions" / "log.csv", dtype=str, keep_default_na=False)
    assert list(log.columns) == COLUMNS and len(log) == 2
    assert log["file"].tolist() == ["submission.csv", "b.csv"]
    assert log["sha256"].tolist() == [one, _sha(comp / "submissions" / "b.csv")]
    assert log["postprocess"].tolist() == ["none", "off"]
    assert log["config_hash"].str.len().tolist() == [12, 12] and log["public_score"].tolist() == ["", ""]
    assert "logged in" in first.output and one[:12] in first.output


def test_cv_comes_from_the_work_folder(comp):
    hand_made_predictions(comp)
    cfg = load_config(comp / "kseg.yaml")
    result = write_submission(cfg)
    work = comp / "work"
    (work / "fold0").mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2], "val_dice": [0.5, 0.7]}).to_csv(work / "fold0" / "metrics.csv", index=False)
    pd.DataFrame({"epoch": [1], "val_dice": [0.6]}).to_csv(work / "fold0" / "metrics.csv", index=False)
    (work / "fold1").mkdir()
    pd.DataFrame({"epoch": [1, 2], "val_dice": [0.8, 0.7]}).to_csv(work / "fold1" / "metrics.csv", index=False)
    entry = record_submission(cfg, result.path, result.predictions, "none").entry.values
    assert entry["cv"] == "0.7000" and entry["cv_kind"] == "mean of fold bests"
    (work / "postprocess.json").write_text(json.dumps({"oof_score_before": 0.61, "oof_score_after": 0.64}))
    entry = record_submission(cfg, result.path, result.predictions, "probabilities").entry.values
    assert entry["cv"] == "0.6400" and entry["cv_kind"] == "out-of-fold (tuned, in-sample)"
    assert len(read_log(comp / "submissions" / "log.csv")) == 2


def test_upload_logs_the_message_and_the_public_score(runner, comp, monkeypatch):
    hand_made_predictions(comp)
    api = ScoringApi()
    monkeypatch.setattr("kseg.submission.kaggle.kaggle_api", lambda: api)
    args = ["submit", "-c", str(comp / "kseg.yaml"), "--upload", "--competition", "drone", "-m", "folds 0-4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "public score: 0.700" in _flat(result)
    log = read_log(comp / "submissions" / "log.csv")
    assert log[["competition", "message", "public_score"]].values.tolist() == [["drone", "folds 0-4", "0.700"]]
    table = runner.invoke(app, ["submissions", "-c", str(comp / "kseg.yaml")])
    assert table.exit_code == 0 and "0.700" in table.output and "folds 0-4" in table.output


def test_a_score_that_cannot_be_fetched_after_an_upload_is_said_not_swallowed(runner, comp, monkeypatch):
    """The upload succeeded; listing the scores fails: the command succeeds, says why and how to fetch later."""
    hand_made_predictions(comp)
    api = ScoringApi()

    def broken(competition):
        raise ConnectionError("listing timed out")

    api.competition_submissions = broken
    monkeypatch.setattr("kseg.submission.kaggle.kaggle_api", lambda: api)
    args = ["submit", "-c", str(comp / "kseg.yaml"), "--upload", "--competition", "drone", "-m", "a"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = _flat(result)
    assert "public score was not fetched (ConnectionError: listing timed out)" in text and "--refresh" in text
    assert len(api.uploads) == 1 and read_log(comp / "submissions" / "log.csv")["competition"].tolist() == ["drone"]


def test_a_score_not_ready_is_filled_by_refresh(runner, comp, monkeypatch):
    hand_made_predictions(comp)
    api = ScoringApi(ready=False)
    monkeypatch.setattr("kseg.submission.kaggle.kaggle_api", lambda: api)
    args = ["submit", "-c", str(comp / "kseg.yaml"), "--upload", "--competition", "drone", "-m", "a"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args[:-1], "b"]).exit_code == 0
    path = comp / "submissions" / "log.csv"
    assert read_log(path)["public_score"].tolist() == ["", ""]
    api.ready = True
    result = runner.invoke(app, ["submissions", "-c", str(comp / "kseg.yaml"), "--refresh", "--competition", "drone"])
    assert result.exit_code == 0, result.output
    assert "filled 2 public score(s)" in _flat(result)
    assert read_log(path)["public_score"].tolist() == ["0.700", "0.701"]  # each row its own upload
    assert fill_public_scores(path, api, "drone") == 0


def test_a_failed_upload_is_logged_without_the_upload(runner, comp, monkeypatch):
    hand_made_predictions(comp)
    monkeypatch.setattr("kseg.submission.kaggle.kaggle_api", lambda: ScoringApi(fail=True))
    result = runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml"), "--upload", "--competition", "drone"])
    assert result.exit_code == 1 and "Kaggle refused the upload" in _flat(result)
    log = read_log(comp / "submissions" / "log.csv")
    assert len(log) == 1 and log["competition"].iloc[0] == "" and log["sha256"].iloc[0]


def test_a_log_that_is_not_ksegs_stops_submit_before_anything_is_written(runner, comp):
    hand_made_predictions(comp)
    folder = comp / "submissions"
    folder.mkdir(exist_ok=True)
    (folder / "log.csv").write_text("date,notes\n2026-01-01,my own notes\n")
    result = runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 1
    assert "is not kseg's submission log" in _flat(result) and "Traceback" not in result.output
    assert not (folder / "submission.csv").exists()
    assert (folder / "log.csv").read_text() == "date,notes\n2026-01-01,my own notes\n"
    shown = runner.invoke(app, ["submissions", "-c", str(comp / "kseg.yaml")])
    assert shown.exit_code == 1 and "is not kseg's submission log" in shown.output


def test_submissions_without_a_log(runner, comp):
    result = runner.invoke(app, ["submissions", "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 0 and "no submissions logged yet" in _flat(result)


def test_refresh_needs_a_competition(runner, comp):
    result = runner.invoke(app, ["submissions", "-c", str(comp / "kseg.yaml"), "--refresh"])
    assert result.exit_code == 1 and "--refresh needs --competition" in _flat(result)


def test_a_log_with_broken_rows_is_refused(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(",".join(COLUMNS) + '\n"unclosed\n')
    with pytest.raises(SubmissionError, match="cannot be read as a submission log"):
        read_log(path)


def test_a_foreign_column_and_a_row_cut_short_are_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(",".join([*COLUMNS, "notes"]) + "\n")
    with pytest.raises(SubmissionError, match="column 'notes' is none of kseg's"):
        read_log(path)
    path.write_text(",".join(COLUMNS[:-1]) + "\n")
    with pytest.raises(SubmissionError, match="it lacks column 'public_score'"):
        read_log(path)
    full = ",".join("x" for _ in COLUMNS)
    path.write_text(",".join(COLUMNS) + f"\n{full}\n2026-01-01,a.csv\n")
    with pytest.raises(SubmissionError, match="line 3 has fewer fields than the log's 13 columns"):
        read_log(path)


def test_a_folder_in_the_logs_place_stops_submit_before_anything_is_written(runner, comp):
    hand_made_predictions(comp)
    (comp / "submissions" / "log.csv").mkdir(parents=True)
    result = runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 1 and "is a folder where the submission log goes" in _flat(result)
    assert not (comp / "submissions" / "submission.csv").exists()


@pytest.mark.slow
def test_submits_at_once_each_log_their_own_file(comp):
    """Two ``kseg submit`` processes at a time, twice: every run logs one row whose sha256 is its file's."""
    import subprocess
    import sys

    hand_made_predictions(comp)
    outs = [comp / "submissions" / f"s{i}.csv" for i in range(4)]
    for pair in (outs[:2], outs[2:]):
        procs = [
            subprocess.Popen([sys.executable, "-m", "kseg", "submit", "--out", str(out), *flags], cwd=comp)
            for out, flags in zip(pair, ([], ["--no-postprocess"]), strict=True)
        ]
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    log = read_log(comp / "submissions" / "log.csv")
    assert sorted(log["file"]) == [o.name for o in outs]
    assert dict(zip(log["file"], log["sha256"], strict=True)) == {o.name: _sha(o) for o in outs}
