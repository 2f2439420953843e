"""Submission files, one module per role: ``format`` (what a valid file is), ``write`` (``kseg submit``),
``validate``, ``score`` (the metric, locally) and ``kaggle`` (upload). The names below are the package's
public API, as before the split."""

from kseg.submission.format import SubmissionFormat, format_csv, load_format
from kseg.submission.kaggle import kaggle_api, upload_submission
from kseg.submission.log import Recorded, fill_public_scores, log_path, read_log, record_submission
from kseg.submission.predictions import check_manifest, find_predictions
from kseg.submission.score import ScoreResult, score_file, score_label_maps
from kseg.submission.validate import Problem, ValidationReport, validate_bytes, validate_file
from kseg.submission.write import WriteResult, read_prediction, write_submission

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
