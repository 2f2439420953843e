"""Submission files, one module per role: ``format`` (what a valid file is), ``write`` (``kseg submit``),
``validate``, ``score`` (the metric, locally) and ``kaggle`` (upload). The names below are the package's
public API, as before the split."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module: loaded on first use, so that 'kseg validate' does not import what 'kseg submit --upload'
# needs (a package's __init__ runs before any of its modules)
_HOME = {
    "SubmissionFormat": "format",
    "format_csv": "format",
    "load_format": "format",
    "kaggle_api": "kaggle",
    "upload_submission": "kaggle",
    "Recorded": "log",
    "fill_public_scores": "log",
    "log_path": "log",
    "read_log": "log",
    "record_submission": "log",
    "check_manifest": "predictions",
    "find_predictions": "predictions",
    "ScoreResult": "score",
    "score_file": "score",
    "score_label_maps": "score",
    "Problem": "validate",
    "ValidationReport": "validate",
    "validate_bytes": "validate",
    "validate_file": "validate",
    "WriteResult": "write",
    "read_prediction": "write",
    "write_submission": "write",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"kseg.submission.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kseg.submission' has no attribute {name!r}")


__all__ = [
    "Problem",
    "Recorded",
    "ScoreResult",
    "SubmissionFormat",
    "ValidationReport",
    "WriteResult",
    "check_manifest",
    "fill_public_scores",
    "find_predictions",
    "format_csv",
    "kaggle_api",
    "load_format",
    "log_path",
    "read_log",
    "read_prediction",
    "record_submission",
    "score_file",
    "score_label_maps",
    "upload_submission",
    "validate_bytes",
    "validate_file",
    "write_submission",
]
