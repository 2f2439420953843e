"""The submission log: ``log.csv`` next to the submission file, one row per ``kseg submit``.

A competitor with twenty uploads needs to know which config, runs, folds, TTA views and post-processing
made each file, and what CV promised for it next to what the leaderboard said. Each row holds the file's
sha256, so a file on disk (or on Kaggle) can be matched to its row.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kseg.config import Config
from kseg.errors import SubmissionError
from kseg.io import atomic_write_text
from kseg.metrics.scores import epoch_score
from kseg.submission import kaggle
from kseg.submission.validate import validate_file
from kseg.workspace.pins import check_pins
from kseg.workspace.workdir import WorkDir, read_inference_info

LOG_NAME = "log.csv"
COLUMNS = [
    "time",
    "file",
    "sha256",
    "config_hash",
    "runs",
    "folds",
    "tta",
    "postprocess",
    "cv",
    "cv_kind",
    "competition",
    "message",
    "public_score",
]


def log_lock(submission: Path) -> Path:
    """The lock file that ``kseg submit`` holds from writing a submission to logging it: two submits at
    once write and log one after the other, and each row names its own file."""
    log = log_path(submission)
    return log.with_name(f".{log.name}.lock")


def log_path(submission: Path) -> Path:
    """The log of the folder a submission file is written to."""
    return Path(submission).parent / LOG_NAME


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(resolved: dict[str, Any]) -> str:
    """A short fingerprint of a resolved config (``Config.model_dump(mode="json")``: every default spelled out)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]


def read_log(path: Path) -> pd.DataFrame:
    """The log as a table (empty when the file does not exist).

    Raises:
        SubmissionError: The file is not a kseg submission log.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise SubmissionError(f"{path} is a folder where the submission log goes; move it away or rename it")
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SubmissionError(f"{path} cannot be read as a submission log ({exc}); move it away") from None
    if list(table.columns) != COLUMNS:
        extra = [c for c in table.columns if c not in COLUMNS]
        missing = [c for c in COLUMNS if c not in table.columns]
        what = (
            f"column {extra[0]!r} is none of kseg's"
            if extra
            else (f"it lacks column {missing[0]!r}" if missing else "its columns are in another order")
        )
        raise SubmissionError(
            f"{path} is not kseg's submission log ({what}); move it away, or write the submission to another "
            "folder with --out"
        )
    short = _short_rows(path)
    if short:
        raise SubmissionError(
            f"{path} line {short} has fewer fields than the log's {len(COLUMNS)} columns (a row cut short); fix or "
            "remove that line"
        )
    return table


def _short_rows(path: Path) -> int | None:
    """The first line (1-based) of a log with fewer comma-separated fields than its header, else ``None``."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number > 1 and len(row) < len(COLUMNS):
                return number
    return None


def _write_log(path: Path, table: pd.DataFrame) -> None:
    buffer = io.StringIO()
    table[COLUMNS].to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())


def check_before_submit(workdir: Path, submission: Path) -> None:
    """What would stop the log row after the file is written, checked before it is: a log that is not
    kseg's, a blend (in ``workdir``) whose checkpoints changed since ``kseg blend``."""
    read_log(log_path(submission))
    work = WorkDir(workdir)
    blend = work.read_blend()
    if blend is not None:
        check_pins(blend, work.blend_json)


def cv_estimate(workdir: Path, post_applied: bool) -> tuple[float, str]:
    """What cross-validation promises for a submission of this work folder: the blend's out-of-fold score
    (``blend.json``), else the tuned out-of-fold score (``postprocess.json``, raw when not applied), else
    the mean of the folds' best validation score; NaN when nothing was trained."""
    work = WorkDir(workdir)
    blend = work.read_blend()
    if blend is not None:
        check_pins(blend, work.blend_json)
        key = "oof_tuned" if post_applied else "oof"
        return float(blend["blend"][key]), f"blend out-of-fold ({'tuned' if post_applied else 'raw'})"
    text = work.read_postprocess()
    if text is not None:
        tree = json.loads(text)
        key = "oof_score_after" if post_applied else "oof_score_before"
        return float(tree[key]), f"out-of-fold ({'tuned, in-sample' if post_applied else 'raw'})"
    scores = [max(map(epoch_score, work.read_metrics(f).to_dict("records"))) for f in work.folds_with("metrics.csv")]
    if scores:
        return float(np.mean(scores)), "mean of fold bests"
    return float("nan"), "none"


@dataclass
class LogEntry:
    """One row of ``log.csv``."""

    values: dict[str, str]

    @property
    def sha256(self) -> str:
        return self.values["sha256"]


def make_entry(fingerprint: str, workdir: Path, submission: Path, predictions: Path, postprocess: str) -> LogEntry:
    """The log row of a submission file just written from ``predictions`` (a ``kseg infer`` folder) of the
    run in ``workdir``, whose resolved config hashes to ``fingerprint`` (``config_hash``)."""
    info = read_inference_info(predictions) or {}
    applied = postprocess not in ("off", "none")
    cv, kind = cv_estimate(workdir, applied)
    values = {
        "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "file": Path(submission).name,
        "sha256": file_sha256(submission),
        "config_hash": fingerprint,
        "runs": str(info.get("source", "label maps made outside kseg")),
        "folds": " ".join(map(str, info.get("folds", [])))
        + (f" (partial: {'; '.join(info['partial_folds'])})" if info.get("partial_folds") else ""),
        "tta": str(info.get("tta", "")),
        "postprocess": postprocess,
        "cv": "" if np.isnan(cv) else f"{cv:.4f}",
        "cv_kind": kind,
        "competition": "",
        "message": "",
        "public_score": "",
    }
    return LogEntry(values)


def append_entry(path: Path, entry: LogEntry) -> Path:
    """Add one row to the log (written whole, atomically)."""
    table = read_log(path)
    table = pd.concat([table, pd.DataFrame([entry.values])], ignore_index=True)
    _write_log(path, table)
    return Path(path)


def _field(item: Any, *names: str) -> Any:
    for name in names:
        value = getattr(item, name, None)
        if value is not None:
            return value
    return None


def public_scores(api: Any, competition: str) -> list[tuple[str, str, datetime | None, str]]:
    """``(file name, description, date, public score)`` of the competition's scored submissions, as the
    Kaggle API lists them (``competition_submissions``)."""
    scores = []
    for item in api.competition_submissions(competition):
        score = _field(item, "publicScore", "public_score")
        status = str(_field(item, "status") or "")
        if score in (None, "") or "complete" not in status.lower():
            continue
        name = Path(str(_field(item, "fileName", "file_name") or "")).name
        date = _field(item, "date")
        scores.append(
            (name, str(_field(item, "description") or ""), date if isinstance(date, datetime) else None, str(score))
        )
    return scores


def _match(row: pd.Series, scores: list[tuple[str, str, datetime | None, str]]) -> str | None:
    """The public score of the first scored upload of this row's file and message made after the row's time
    (a minute's grace for clocks), or ``None``."""
    logged = datetime.strptime(row["time"], "%Y-%m-%d %H:%M:%S")
    candidates = [
        (date or logged, score)
        for name, message, date, score in scores
        if name == row["file"] and message == row["message"] and (date is None or (date - logged).total_seconds() > -60)
    ]
    return min(candidates)[1] if candidates else None


def fill_public_scores(path: Path, api: Any, competition: str) -> int:
    """Fill the empty ``public_score`` cells of the log's uploads to ``competition`` from Kaggle; returns
    how many were filled (nothing is written when none)."""
    table = read_log(path)
    scores = public_scores(api, competition)
    filled = 0
    for i, row in table.iterrows():
        if row["competition"] != competition or row["public_score"]:
            continue
        score = _match(row, scores)
        if score is not None:
            table.loc[i, "public_score"] = score
            filled += 1
    if filled:
        _write_log(path, table)
    return filled


@dataclass
class Recorded:
    """What ``record_submission`` did."""

    log: Path
    entry: LogEntry
    uploaded: bool = False
    public_score: str = ""
    score_note: str = ""  # why the public score was not fetched after an upload (the upload itself succeeded)


def record_submission(
    cfg: Config,
    submission: Path,
    predictions: Path | None,
    postprocess: str,
    *,
    competition: str = "",
    message: str = "",
    api: Any = None,
) -> Recorded:
    """Log a submission file just written, uploading it first when ``competition`` is given.

    The row is appended even when the upload fails (then without competition and message), so every
    file ``kseg submit`` wrote is in the log. The public score is asked for once after an upload; it is
    often not ready yet: ``kseg submissions --refresh`` fills it later.

    Raises:
        SubmissionError: The log is not kseg's (checked before anything is uploaded), or the upload failed.
    """
    path = log_path(submission)
    read_log(path)
    entry = make_entry(
        config_hash(cfg.model_dump(mode="json")),
        cfg.workdir,
        submission,
        predictions or Path(submission).parent,
        postprocess,
    )
    done = Recorded(path, entry)
    try:
        if competition:
            api = api or kaggle.kaggle_api()
            report = validate_file(Path(submission), cfg)
            kaggle.upload_submission(Path(submission), report, competition, message, api)
            entry.values.update(competition=competition, message=message)
            done.uploaded = True
    finally:
        append_entry(path, entry)
    if done.uploaded:
        try:
            if fill_public_scores(path, api, competition):
                done.public_score = str(read_log(path)["public_score"].iloc[-1])
        except Exception as exc:  # noqa: BLE001  the score is a courtesy: the upload itself succeeded
            done.score_note = (
                f"the public score was not fetched ({type(exc).__name__}: {str(exc)[:80]}); "
                "'kseg submissions --refresh --competition SLUG' fetches it later"
            )
    return done
