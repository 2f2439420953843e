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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (the end-to-end demo, the fault injections, whole pipelines) run with
    ``--slow``, with a ``-m`` expression that chooses for itself, or when named one by one
    (``path::test``); otherwise they are deselected, so that ``python -m pytest`` stays fast."""
    if config.getoption("--slow") or config.getoption("markexpr") or any("::" in a for a in config.args):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


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


# A small, fast training setup on CPU for the synthetic competition (timm's tiny test encoder,
# no worker processes); RESNET18 where the encoder matters (learning, weights, messages naming it).
FAST = [
    "train.num_workers=0",
    "train.lr=0.001",
    "train.batch_size=4",
    "model.encoder_name=tu-test_resnet",  # timm's tiny test model: the tests here do not need a good encoder
    "train.augment.brightness_contrast=0",
    "infer.batch_size=4",
]


def competition_config(root: Path, *overrides: str) -> Config:
    """The competition's ``kseg.yaml`` under ``overrides`` (``key=value``)."""
    return load_config(root / "kseg.yaml", list(overrides))


RESNET18 = ["model.encoder_name=resnet18"]


def fast_config(root: Path, *extra: str, resnet18: bool = False) -> Config:
    """The competition's ``kseg.yaml`` under ``FAST`` (with ``RESNET18``) and ``extra`` overrides."""
    return load_config(root / "kseg.yaml", [*FAST, *(RESNET18 if resnet18 else []), *extra])


def rule_for_every_class(root: Path, *overrides: str, **rule: float) -> None:
    """Write ``<root>/work/postprocess.json`` with the same rule (``ClassParams`` fields) for every class of
    the competition's config under ``overrides``."""
    from kseg.postprocess import ClassParams, PostProcess

    cfg = fast_config(root, *overrides)
    classes = list(cfg.data.classes)
    post = PostProcess(classes, {c: ClassParams(**rule) for c in classes}, multilabel=cfg.multilabel)
    (root / "work" / "postprocess.json").write_text(post.to_json())


def scan(cfg, *args, **kwargs):
    """``kseg.data.scan.scan_masks`` of a whole config (its data and split sections, its work folder)."""
    from kseg.data.scan import scan_masks

    return scan_masks(cfg.data, cfg.split, cfg.workdir, *args, **kwargs)


@pytest.fixture(scope="session")
def split_template(comp_template, tmp_path_factory) -> Path:
    """The synthetic competition split into folds under ``FAST`` (do not modify: ``copy_comp`` it)."""
    from kseg.data.split import make_folds

    root = tmp_path_factory.mktemp("split") / "comp"
    shutil.copytree(comp_template, root)
    make_folds(fast_config(root))
    return root


@pytest.fixture(scope="session")
def trained_template(split_template, tmp_path_factory) -> Path:
    """The one trained run of the session: ``split_template`` with folds 0, 1 and 2 trained one epoch each
    under ``FAST`` (fold f with ``train.seed=f``, so that the folds' models differ as trained ones do), for
    every test that needs trained folds (do not modify: ``copy_comp`` it)."""
    from kseg.training.train import train_fold

    root = tmp_path_factory.mktemp("trained") / "comp"
    shutil.copytree(split_template, root)
    for fold in range(3):
        train_fold(fast_config(root, "train.epochs=1", f"train.seed={fold}"), fold)
    return root


def copy_comp(template: Path, target: Path, *, folds: tuple[int, ...] | None = None) -> Path:
    """A private copy of a competition fixture at ``target/comp``: with every trained fold, or only ``folds``."""
    keep = None if folds is None else {f"fold{f}" for f in folds}

    def skip(folder: str, names: list[str]) -> set[str]:
        if keep is None or Path(folder).name != "work":
            return set()
        return {n for n in names if n.startswith("fold") and n[4:].isdigit() and n not in keep}

    root = Path(target) / "comp"
    shutil.copytree(template, root, ignore=skip)
    return root
