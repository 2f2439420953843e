"""Uploads to Kaggle with the optional ``kaggle`` package; only a file that validates is sent."""

from __future__ import annotations

from pathlib import Path

from kseg.errors import KsegError, SubmissionError
from kseg.submission.validate import ValidationReport


def kaggle_api():
    """An authenticated ``KaggleApi`` (the optional ``kaggle`` extra)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise SubmissionError(
            "talking to Kaggle needs the kaggle package; install it with pip install 'kseg[kaggle]'"
        ) from None
    api = KaggleApi()
    try:
        api.authenticate()
    except Exception as exc:  # the package raises plain IOError/OSError/ValueError variants
        raise SubmissionError(
            f"Kaggle authentication failed ({exc}); put kaggle.json in ~/.kaggle or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    return api


def upload_submission(
    path: Path, report: ValidationReport, competition: str, message: str, api=None
) -> ValidationReport:
    """Send ``path`` to a Kaggle competition; refuses a file that failed validation.

    Args:
        path: The submission file.
        report: Its validation against the competition's format (``validate_file``).
        competition: The competition's slug, as in its URL.
        message: The submission's description on Kaggle.
        api: An object with ``competition_submit(file_name, message, competition)``; default: the
            ``kaggle`` package's authenticated API.
    """
    if not report.ok:
        raise SubmissionError(
            f"refusing to upload {path}: it is not valid ({report.first()}); run 'kseg validate {path}'"
        )
    if not competition:
        raise SubmissionError("uploading needs --competition SLUG (the name in the competition's URL)")
    api = api or kaggle_api()
    try:
        api.competition_submit(file_name=str(path), message=message, competition=competition)
    except KsegError:
        raise
    except Exception as exc:
        raise SubmissionError(
            f"Kaggle refused the upload to {competition!r} ({exc}); check the slug and that you accepted the rules"
        ) from None
    return report
