"""Commands that train and judge runs: train, tune, pseudo, blend, report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kseg import render
from kseg.cli.common import (
    ConfigOpt,
    DebugOpt,
    PartialOpt,
    SetOpt,
    app,
    config_from,
    handled,
)

if TYPE_CHECKING:
    from kseg.training.dataset import PseudoRows


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    fold: Annotated[
        str, typer.Option("--fold", help="Fold to hold out (0, 1, ...) or 'all' (one after another).")
    ] = "0",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <workdir>/fold<N>/last.pt.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Train a UNet (or any smp model) on the other folds; keep the best epoch by the competition metric."""
    from kseg.training.train import folds_to_train, train_folds

    quiet = int(os.environ.get("RANK", 0)) != 0  # under torchrun only rank 0 talks
    with handled(debug):
        cfg = config_from(config, set_)
        folds = folds_to_train(cfg.workdir, fold)
        results = train_folds(
            cfg, folds, resume=resume, progress=lambda f: render.training_progress(f, cfg.train.epochs, quiet)
        )
    if not quiet:
        render.training_results(results, folds)


@app.command()
def tune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    gate: Annotated[
        bool,
        typer.Option(
            "--gate/--no-gate",
            help="Search presence gates too (a threshold some pixels must reach, or the presence head's score).",
        ),
    ] = True,
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Tune per-class thresholds, minimum areas and presence gates on the out-of-fold predictions."""
    from kseg.postprocess import tune as tune_postprocess

    with handled(debug):
        cfg = config_from(config, set_)
        _finished_oof(cfg.workdir, partial)
        with render.progress_bar("read OOF") as update:
            result = tune_postprocess(cfg, on_progress=update, gates=gate)
    render.tune_result(result)


@app.command()
def pseudo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Unlabelled images to pseudo-label (default: the test set).")
    ] = None,
    fold: Annotated[str, typer.Option("--fold", help="Fold to train again (0, 1, ...) or 'all'.")] = "all",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Keep pixels whose top probability reaches this (0-1).")
    ] = None,
    share: Annotated[
        float | None, typer.Option("--share", help="Share of every training batch given to them (0-1).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Work folder of the new run (default: <workdir>-pseudo).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Label with the config's TTA views.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the new run's folds from last.pt.")] = False,
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Pseudo-label the test set with each fold's own model, then train the folds again with them."""
    from kseg.prediction.infer import competition_test_images, list_images
    from kseg.training.pseudo import label_fold, prepare_run, pseudo_rows
    from kseg.training.train import folds_to_train, train_folds

    options = {
        "--threshold": ("pseudo.threshold", threshold),
        "--share": ("pseudo.share", share),
        "--out": ("pseudo.workdir", out),
    }
    with handled(debug):
        cfg = config_from(config, set_, options)
        table = list_images(images) if images is not None else competition_test_images(cfg.data)
        folds = folds_to_train(cfg.workdir, fold)  # the arguments are checked before the new run's folder is made
        run_cfg = prepare_run(cfg)

        def label(f: int) -> PseudoRows:
            with render.progress_bar(f"pseudo-label fold {f}") as update:
                labels = label_fold(
                    cfg,
                    f,
                    table,
                    run_cfg.workdir,
                    tta=cfg.infer.tta if tta else "none",
                    partial=partial,
                    on_progress=update,
                )
            render.pseudo_labels(labels, cfg.pseudo.threshold)
            return pseudo_rows(labels, cfg.pseudo.share)

        results = train_folds(
            run_cfg,
            folds,
            resume=resume,
            progress=lambda f: render.training_progress(f, cfg.train.epochs, False),
            before_fold=label,
        )
    render.training_results(results, folds)
    render.say(f"the pseudo-labelled run is {run_cfg.workdir}: tune, infer and submit it with --set workdir=...")


@app.command()
def blend(
    runs: Annotated[list[Path], typer.Argument(help="Work folders of runs trained on the same folds.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Blend runs with weights searched on their out-of-fold predictions; infer and export then use it."""
    from kseg.cv.blend import blend_runs

    with handled(debug):
        cfg = config_from(config, set_)
        for run in runs:
            _finished_oof(run, partial)
        with render.progress_bar("score OOF blends") as update:
            result = blend_runs(cfg, runs, on_progress=update)
    render.blend_result(result)


@app.command()
def report(config: ConfigOpt = None, set_: SetOpt = None, partial: PartialOpt = False, debug: DebugOpt = False) -> None:
    """Cross-validation report: per-fold and per-class OOF scores, confusion matrix, worst images."""
    from kseg.cv.report import cv_report

    with handled(debug):
        cfg = config_from(config, set_)
        _finished_oof(cfg.workdir, partial)
        with render.progress_bar("read OOF") as update:
            result = cv_report(cfg, on_progress=update)
    render.cv_report(result)


def _finished_oof(workdir: Path, partial: bool) -> None:
    """Out-of-fold predictions are read from finished folds only (``--partial``: any, with a note)."""
    from kseg.workspace.folds import require_finished
    from kseg.workspace.workdir import WorkDir

    work = WorkDir(workdir)
    if work.root.is_dir():
        unfinished = require_finished(work, work.oof_folds(), partial)
        if unfinished:
            render.say(f"[yellow]unfinished fold(s) used as they are (--partial):[/] {', '.join(map(str, unfinished))}")
