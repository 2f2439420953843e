"""``kseg demo``: the whole pipeline on a synthetic competition, on a CPU, in a few minutes.

synth -> split -> train (every fold) -> tune -> report -> infer with TTA -> submit -> validate -> score,
everything written under one folder.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kseg.config import load_config
from kseg.cv.report import Report, cv_report
from kseg.data.split import make_folds
from kseg.errors import KsegError
from kseg.postprocess import tune
from kseg.prediction.ensemble import load_ensemble
from kseg.prediction.infer import OutputOptions, competition_test_images, run_inference
from kseg.submission import score_file, validate_file, write_submission
from kseg.synth.aerial import make_competition
from kseg.training.train import train_folds
from kseg.workspace.workdir import WorkDir, default_predictions

# Large enough for a small UNet to learn the scenes in a few CPU minutes, small enough to stay there.
DEMO_COMPETITION = {"n_train": 48, "n_test": 16, "height": 64, "width": 96, "n_classes": 6}


class Reporter(Protocol):
    """How the demo tells its caller what it is doing."""

    def stage(self, name: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]: ...

    def note(self, text: str) -> None: ...


class _Silent:
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Callable[[int, int], None]]:
        yield lambda done, total: None

    def note(self, text: str) -> None:
        pass


@dataclass
class DemoResult:
    """Where the demo put things and how it scored."""

    root: Path
    submission: Path
    valid: bool
    problems: list[str]
    score: float
    empty_score: float
    cv_score: float
    cv_tuned: float
    seconds: float
    pictures: dict[str, list[Path]] = field(default_factory=dict)


DEMO_MARK = ".kseg-demo"  # written into a folder that kseg demo made; --force replaces only such folders


def prepare_folder(out_dir: Path, force: bool) -> None:
    """Make ``out_dir`` ready: new or empty, or (with ``force``) a previous demo, which is removed.

    A previous demo is recognised by the mark file kseg writes when it creates one, never by its contents:
    a competition folder with a kseg.yaml and a train.csv of the user's own is not a demo.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise KsegError(f"{out_dir} exists and is not a folder; choose another DIR for the demo")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise KsegError(f"{out_dir} is not empty; choose another DIR, or pass --force to replace a previous demo")
        if not (out_dir / DEMO_MARK).is_file():
            raise KsegError(
                f"{out_dir} was not made by kseg demo (it has no {DEMO_MARK} mark); --force only replaces a "
                "previous demo: choose another DIR"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DEMO_MARK).write_text("made by kseg demo; 'kseg demo --force' may replace this folder\n")


def run_demo(out_dir: Path, reporter: Reporter | None = None, seed: int = 0, force: bool = False) -> DemoResult:
    """Run the whole pipeline on a fresh synthetic competition in ``out_dir``.

    Args:
        out_dir: Folder for everything the demo writes (created).
        reporter: Receives stage names, progress and notes.
        seed: Seed of the synthetic competition.
        force: Replace a previous demo in ``out_dir``.
    """
    rep = reporter or _Silent()
    out_dir = Path(out_dir)
    prepare_folder(out_dir, force)
    t0 = time.perf_counter()
    with rep.stage("make a synthetic competition") as progress:
        make_competition(out_dir, seed=seed, on_progress=progress, **DEMO_COMPETITION)
    cfg = load_config(out_dir / "kseg.yaml")
    with rep.stage("split into folds") as progress:
        make_folds(cfg, on_progress=progress)
    train_folds(cfg, list(range(cfg.split.n_folds)), progress=_fold_stages(rep, cfg.train.epochs))
    with rep.stage("tune post-processing on out-of-fold predictions") as progress:
        tuned = tune(cfg, on_progress=progress)
    with rep.stage("cross-validation report") as progress:
        report = cv_report(cfg, on_progress=progress)
    predictions = default_predictions(cfg.submission.predictions, cfg.workdir)
    with rep.stage(f"predict the test set (TTA {cfg.infer.tta}, {cfg.split.n_folds} folds)") as progress:
        run_inference(
            load_ensemble(cfg),
            competition_test_images(cfg.data),
            predictions,
            cfg.infer.tta,
            outputs=OutputOptions(color=True, overlay=True),
            on_progress=progress,
        )
    with rep.stage("write, validate and score the submission") as progress:
        written = write_submission(cfg, on_progress=progress)
        report_check = validate_file(written.path, cfg)
        score = score_file(written.path, cfg).score
        sample = cfg.sample_path
        assert sample is not None  # the synthetic competition ships its sample submission
        empty = score_file(sample, cfg).score
    rep.note(written.note)
    return DemoResult(
        root=out_dir,
        submission=written.path,
        valid=report_check.ok,
        problems=[p.kind for p in report_check.problems],
        score=score,
        empty_score=empty,
        cv_score=tuned.post.oof_score_before,
        cv_tuned=tuned.post.oof_score_after,
        seconds=time.perf_counter() - t0,
        pictures=_pictures(cfg.workdir, cfg.split.n_folds, predictions, report),
    )


def _fold_stages(rep: Reporter, epochs: int) -> Callable[[int], contextlib.AbstractContextManager[dict[str, Any]]]:
    """``train_folds``'s progress: one stage per fold, with a bar over its steps."""

    @contextlib.contextmanager
    def stage(fold: int) -> Iterator[dict[str, Any]]:
        with rep.stage(f"train fold {fold}") as bar:

            def step(epoch: int, done: int, steps: int, loss: float, speed: float) -> None:
                bar(epoch * steps + done, epochs * steps)

            yield {"on_step": step}

    return stage


def _pictures(workdir: Path, n_folds: int, predictions: Path, report: Report) -> dict[str, list[Path]]:
    """The pictures worth a look after the demo, by what they show."""
    return {
        "training curves": [WorkDir(workdir).curves(f) for f in range(n_folds)],
        "prediction overlays": sorted(predictions.glob("*_overlay.png"))[:3],
        "confusion matrix": [report.confusion_png],
        "worst out-of-fold images": [report.worst_png],
    }
