"""Shared fixtures: tiny synthetic competitions made by kseg's own generator, and the real Dubai data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kseg.config import Config, load_config
from kseg.synth.aerial import make_competition

REPO = Path(__file__).resolve().parents[1]
DUBAI = Path(os.environ.get("KSEG_DUBAI", REPO.parent / "shared" / "data" / "dubai-aerial"))


@pytest.fixture(scope="session")
def comp_template(tmp_path_factory) -> Path:
    """A 24-train / 8-test, 64x96, 6-class synthetic competition (do not modify: copy it)."""
    root = tmp_path_factory.mktemp("comp")
    make_competition(root, n_train=24, n_test=8, height=64, width=96, n_classes=6, seed=0)
    return root


@pytest.fixture
def comp(comp_template, tmp_path) -> Path:
    """A private copy of the synthetic competition that a test may change."""
    target = tmp_path / "comp"
    shutil.copytree(comp_template, target)
    return target


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def dubai() -> Path:
    """The real Dubai aerial download; tests using it are skipped where it is absent."""
    if not (DUBAI / "Tile 1").is_dir():
        pytest.skip(f"Dubai aerial data not found at {DUBAI} (set KSEG_DUBAI)")
    return DUBAI


def dubai_config(dubai: Path, workdir: Path, *overrides: str, classes_json: bool = False) -> Config:
    """configs/dubai-aerial.yaml on the real download; ``classes_json`` swaps in the download's own
    classes.json palette (whose colours the masks do not use) with unknown colours as errors."""
    extra = [f"data.root={dubai}", f"workdir={workdir}"]
    if classes_json:
        listed = json.loads((dubai / "classes.json").read_text())["classes"]
        extra += [
            "data.unknown_labels=error",
            "data.ignore_colors=[]",
            f"data.classes={[c['title'].replace(' ', '_') for c in listed]}",
            f"data.palette={[c['color'] for c in listed]}",
        ]
    return load_config(REPO / "configs" / "dubai-aerial.yaml", [*extra, *overrides])


# A small, fast training setup on CPU for the synthetic competition (resnet18, no worker processes).
FAST = [
    "train.num_workers=0",
    "train.lr=0.001",
    "train.batch_size=4",
    "model.encoder_name=resnet18",
    "train.augment.brightness_contrast=0",
    "infer.batch_size=4",
]


def fast_config(root: Path, *extra: str) -> Config:
    """The competition's ``kseg.yaml`` under ``FAST`` and ``extra`` overrides."""
    return load_config(root / "kseg.yaml", [*FAST, *extra])


def scan(cfg, *args, **kwargs):
    """``kseg.data.scan.scan_masks`` of a whole config (its data and split sections, its work folder)."""
    from kseg.data.scan import scan_masks

    return scan_masks(cfg.data, cfg.split, cfg.workdir, *args, **kwargs)
