"""The commands that need no model never import torch (``python -X importtime``), so they start fast and
run where torch is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

NO_MODEL = [
    ["--help"],
    ["init", "--help"],
    ["config"],
    ["submit", "--predictions", "test_masks", "--set", "submission.require_manifest=false"],
    ["validate"],
    ["score"],
    ["submissions"],
]


def _imported(args: list[str], cwd) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kseg", *args], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, f"kseg {' '.join(args)}: {done.stdout[-800:]}{done.stderr[-800:]}"
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_commands_that_need_no_model_never_import_torch(comp):
    for args in NO_MODEL:  # in this order: submit writes the file that validate, score and submissions read
        imported = _imported(args, comp)
        assert "kseg.cli" in imported, "the import log was not read"
        assert "torch" not in imported, f"kseg {' '.join(args)} imports torch"


def test_the_import_log_sees_torch_where_it_is_imported(comp):
    imported = _imported(["config"], comp)
    assert "torch" not in imported
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import kseg.models.build"], capture_output=True, text=True
    )
    assert "torch" in {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}


def test_validate_and_help_never_import_pandas(comp):
    """pandas' import is a sixth of ``kseg validate`` on a 41 MB file: the test set is listed as records."""
    from kseg.submission.format import format_csv

    sample = (comp / "sample_submission.csv").read_text().splitlines()
    rows = [line.split(",")[0] for line in sample[1:]]
    (comp / "submission.csv").write_bytes(format_csv(sample[0].split(","), rows, [b""] * len(rows)))
    for args in (["--help"], ["validate", "submission.csv"]):  # exit code 0: the file was read and valid
        imported = _imported(args, comp)
        assert "kseg.cli" in imported, "the import log was not read"
        assert "pandas" not in imported, f"kseg {' '.join(args)} imports pandas"
