"""``kseg package``: a trained run as what a code competition needs, a Kaggle dataset (the bundle, the
config, a wheelhouse, ``dataset-metadata.json``) and an offline notebook (``kernel-metadata.json`` with the
fields the Kaggle API documents), written to a temporary folder and renamed into place whole."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kseg.codecomp.notebook import (
    BUNDLE_NAME,
    CONFIG_NAME,
    WHEELS_DIR,
    NotebookPlan,
    notebook_json,
    require_nbformat,
)
from kseg.codecomp.wheels import build_wheelhouse
from kseg.config import Config, save_resolved
from kseg.errors import KsegError
from kseg.io import atomic_dir
from kseg.prediction.ensemble import export_bundle
from kseg.workspace.workdir import WorkDir

SLUG = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")  # a competition's name in its URL
DATASET = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9][a-z0-9-]{1,48}[a-z0-9])")  # OWNER/NAME
Wheelhouse = Callable[[Path, str], list[Path]]


@dataclass
class PackageResult:
    """What ``package`` wrote."""

    out: Path
    dataset_dir: Path
    notebook: Path
    kernel_id: str
    wheels: list[Path] = field(default_factory=list)
    wheels_mb: float = 0.0
    bundle_mb: float = 0.0
    seconds: float = 0.0


def check_names(competition: str, dataset: str) -> tuple[str, str]:
    """``(owner, dataset name)``.

    Raises:
        KsegError: The slug or the dataset id is not shaped as Kaggle's are.
    """
    if not SLUG.fullmatch(competition):
        raise KsegError(
            f"--competition {competition!r} is not a competition slug; give the name in the competition's URL, "
            "e.g. severstal-steel-defect-detection"
        )
    shaped = DATASET.fullmatch(dataset)
    if shaped is None:
        raise KsegError(
            f"--dataset {dataset!r} is not OWNER/NAME; give your Kaggle user name and a dataset name of 3-50 "
            "lowercase letters, digits and hyphens, e.g. me/severstal-kseg"
        )
    return shaped.group(1), shaped.group(2)


def package(
    cfg: Config,
    out: Path,
    competition: str,
    dataset: str,
    *,
    folds: list[int] | None = None,
    half: bool = False,
    gpu: bool = True,
    python_version: str | None = None,
    partial: bool = False,
    wheelhouse: Wheelhouse | None = None,
) -> PackageResult:
    """Write ``out/dataset/`` and ``out/notebook/`` for a code competition.

    Args:
        cfg: The run's config (its trained folds are packed, or its blend).
        out: The folder to write; a previous one is replaced whole, only when everything succeeded.
        competition: The competition's slug.
        dataset: ``OWNER/NAME`` of the Kaggle dataset that will hold the package.
        folds: Folds to pack (default: every trained fold).
        half: Store the weights as float16.
        gpu: The notebook asks for a GPU.
        python_version: The notebook image's Python, ``X.Y`` (default: this one's).
        partial: Pack unfinished folds too.
        wheelhouse: ``wheelhouse(folder, python_version)`` fills the wheels folder (default
            ``build_wheelhouse``; tests give a stand-in).
    """
    owner, name = check_names(competition, dataset)
    require_nbformat()  # before minutes of export and downloads
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    if not re.fullmatch(r"3\.\d+", python_version):
        raise KsegError(f"--python-version {python_version!r} is not X.Y; give the notebook image's Python, e.g. 3.11")
    if not WorkDir(cfg.workdir).trained_folds() and WorkDir(cfg.workdir).read_blend() is None:
        raise KsegError(f"{cfg.workdir} has no trained folds (no fold*/best.pt); run 'kseg train --fold all' first")
    started = time.perf_counter()
    kernel_slug = f"{competition}-kseg-inference"[:50].rstrip("-")
    with atomic_dir(Path(out)) as tmp:
        data = tmp / "dataset"
        data.mkdir()
        export_bundle(cfg, data / BUNDLE_NAME, folds, half, partial=partial)
        save_resolved(cfg, data / CONFIG_NAME)
        wheels = (wheelhouse or build_wheelhouse)(data / WHEELS_DIR, python_version)
        _write_json(data / "dataset-metadata.json", {"title": name, "id": dataset, "licenses": [{"name": "CC0-1.0"}]})
        book = tmp / "notebook"
        book.mkdir()
        code_file = f"{kernel_slug}.ipynb"
        (book / code_file).write_text(notebook_json(NotebookPlan(competition, name, cfg.infer.tta)), encoding="utf-8")
        _write_json(
            book / "kernel-metadata.json", kernel_metadata(owner, kernel_slug, code_file, dataset, competition, gpu)
        )
    root = Path(out)
    return PackageResult(
        root,
        root / "dataset",
        root / "notebook" / code_file,
        f"{owner}/{kernel_slug}",
        [root / "dataset" / WHEELS_DIR / w.name for w in wheels],
        sum(w.stat().st_size for w in (root / "dataset" / WHEELS_DIR).glob("*.whl")) / 1e6,
        (root / "dataset" / BUNDLE_NAME).stat().st_size / 1e6,
        time.perf_counter() - started,
    )


def kernel_metadata(
    owner: str, slug: str, code_file: str, dataset: str, competition: str, gpu: bool
) -> dict[str, object]:
    """``kernel-metadata.json`` with the fields the Kaggle API documents for ``kaggle kernels push``."""
    return {
        "id": f"{owner}/{slug}",
        "title": slug.replace("-", " "),
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": [dataset],
        "competition_sources": [competition],
        "kernel_sources": [],
    }


def _write_json(path: Path, tree: dict[str, object]) -> None:
    path.write_text(json.dumps(tree, indent=2) + "\n", encoding="utf-8")
