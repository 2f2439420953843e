"""``kseg rehearse``: a package's notebook run the way Kaggle will run it, before it is uploaded.

A fresh virtual environment holds what Kaggle's image gives a notebook (torch, torchvision and the Jupyter
kernel, linked from this environment) and no kseg; an input tree is laid out as ``/kaggle/input/<competition>``
(the competition's files, where the packaged config's layout finds the test images) and
``/kaggle/input/<dataset>`` (the package); the notebook then runs cell by cell with the Jupyter client in a
network namespace whose only interface is a down loopback (``unshare -n``), so the offline install is
really offline. Reported: each cell's time, the wheelhouse's size and install time, the peak memory, the
submission's validity, and the run time projected to the full test set against the competition's limit."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kseg.codecomp.notebook import CONFIG_NAME, STEPS, WHEELS_DIR
from kseg.codecomp.wheels import closure, normalise
from kseg.config import load_config
from kseg.errors import KsegError

IMAGE = ("torch", "torchvision", "ipykernel")  # what the notebook's image has before it installs anything


@dataclass
class Rehearsal:
    """What ``rehearse`` saw."""

    cells: list[dict]  # index, seconds, first_line, tail
    peak_mib: float
    wheels_mb: float
    install_s: float
    predict_s: float
    n_images: int
    valid: bool
    submission: Path
    isolated: bool  # the network namespace held
    projected_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def rehearse(
    out: Path,
    *,
    images: Path | None = None,
    test_images: int | None = None,
    timeout: int = 3600,
    keep: Path | None = None,
) -> Rehearsal:
    """Run ``out/notebook``'s notebook offline on ``out/dataset`` and the packaged config's competition files.

    Args:
        out: A ``kseg package`` folder.
        images: A folder laid out as the competition's download, mounted as ``/kaggle/input/<competition>``
            (default: the packaged config's ``data.root``).
        test_images: The full test set's size, for the projection (default: the images rehearsed).
        timeout: Seconds a cell may run.
        keep: Where to leave the scratch folder (the executed notebook, the working folder); default removed.

    Raises:
        KsegError: A file of the package is missing, or a cell fails (the cell, its output tail and the fix).
    """
    out = Path(out)
    kernel = _read_json(out / "notebook" / "kernel-metadata.json")
    notebook = out / "notebook" / str(kernel["code_file"])
    competition, dataset = str(kernel["competition_sources"][0]), str(kernel["dataset_sources"][0]).split("/")[1]
    cfg = load_config(out / "dataset" / CONFIG_NAME)
    if images is not None and not Path(images).is_dir():
        raise KsegError(f"--images {images} is not a folder; give a folder laid out as the competition's download")
    if images is None and not Path(cfg.data.root).is_dir():
        raise KsegError(
            f"the competition's files are not at {cfg.data.root} (the packaged config's data.root); give --images "
            "DIR, a folder laid out as the competition's download"
        )
    scratch = Path(tempfile.mkdtemp(prefix="kseg-rehearsal-")) if keep is None else Path(keep)
    try:
        inputs, working = scratch / "input", scratch / "working"
        for folder in (inputs, working):
            folder.mkdir(parents=True, exist_ok=True)
        _link(inputs / competition, images if images is not None else cfg.data.root)
        _link(inputs / dataset, (out / "dataset").resolve())
        python = _image_venv(scratch / "venv")
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if subprocess.run([python, "-c", "import kseg"], capture_output=True, cwd=scratch, env=clean).returncode == 0:
            raise KsegError(f"the rehearsal's environment {scratch / 'venv'} already has kseg; it must not")
        report, isolated = _run(scratch, notebook, python, inputs, working, timeout)
        return _result(report, isolated, out, working, test_images, cfg)
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise KsegError(f"{path} does not exist; write the package with 'kseg package' first")
    return json.loads(path.read_text(encoding="utf-8"))


def _link(link: Path, target: Path) -> None:
    link.symlink_to(Path(target).resolve(), target_is_directory=True)


def _image_venv(venv: Path) -> str:
    """A virtual environment with pip and, linked from this environment, the image's packages only."""
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise KsegError(
            f"python -m venv could not make the rehearsal's environment ({made.stderr.strip()[-200:]}); "
            "install Python's venv module (e.g. apt install python3-venv)"
        )
    python = str(venv / "bin" / "python")
    # the venv's own setuptools is older than torch asks for: the image's (this environment's) replaces it
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    image = venv / "image"
    image.mkdir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    here = Path(sysconfig.get_paths()["purelib"])
    for name in sorted(closure(list(IMAGE), version) - {"pip"}):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (image / top).exists() and source.parent == here:
                (image / top).symlink_to(source)
    (site / "kaggle-image.pth").write_text(str(image) + "\n")
    return python


def _run(scratch: Path, notebook: Path, python: str, inputs: Path, working: Path, timeout: int) -> tuple[dict, bool]:
    spec = {
        "notebook": str(notebook),
        "executed": str(scratch / "executed.ipynb"),
        "report": str(scratch / "report.json"),
        "python": python,
        "scratch": str(scratch),
        "working": str(working),
        "timeout": timeout,
        "env": {"KSEG_KAGGLE_INPUT": str(inputs), "KSEG_KAGGLE_WORKING": str(working), "PIP_NO_INDEX": "1"},
    }
    (scratch / "spec.json").write_text(json.dumps(spec))
    inner = [sys.executable, "-m", "kseg.codecomp.runner", str(scratch / "spec.json")]
    isolated = (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    )
    done = subprocess.run(["unshare", "-n", *inner] if isolated else inner, capture_output=True, text=True)
    if done.returncode != 0 or not (scratch / "report.json").is_file():
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise KsegError(f'the notebook could not be run with the Jupyter client ({tail}); pip install -e ".[notebook]"')
    return json.loads((scratch / "report.json").read_text()), isolated


def _result(report: dict, isolated: bool, out: Path, working: Path, test_images: int | None, cfg) -> Rehearsal:
    cells = report["cells"]
    if report["failed"] is not None:
        cell = cells[-1]
        lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", cell["tail"]).splitlines() if x.strip()]
        raise KsegError(
            f"cell {cell['index']} of the notebook ({cell['first_line']!r}) failed: {' | '.join(lines[-3:])[-700:]}; "
            f"{_fix(cell['tail'])}"
        )
    from kseg.submission import validate_file

    submission = working / "submission.csv"
    valid = submission.is_file() and validate_file(submission, cfg).ok
    by_step = dict(zip(STEPS, (c["seconds"] for c in cells), strict=False))  # code cells in STEPS order
    install, predict = by_step.get("install", 0.0), by_step.get("predict", 0.0)
    n_images = len(list((working / "predictions").glob("*.png")))
    wheels = sum(w.stat().st_size for w in (out / "dataset" / WHEELS_DIR).glob("*.whl")) / 1e6
    total = sum(c["seconds"] for c in cells)
    projected = total - predict + predict * (test_images or n_images) / max(n_images, 1)
    notes = [] if isolated else ["the network was not isolated: unshare -n is not permitted here"]
    return Rehearsal(cells, report["peak_mib"], wheels, install, predict, n_images, valid, submission, isolated,
                     projected, notes)  # fmt: skip


def _fix(tail: str) -> str:
    missing = re.search(r"No matching distribution found for ([A-Za-z0-9_.-]+)", tail)
    if missing is not None:
        name = normalise(missing.group(1))
        return f"the wheelhouse lacks {name}; write the package again with 'kseg package' (it pins every dependency)"
    return "run the failing step outside the notebook to see why, fix it, then write the package again"
