"""``kseg train``: one fold's training, AMP on GPU, exact resume, early stopping, the best checkpoint by
the competition metric, out-of-fold (OOF) probabilities.

Under ``torchrun`` the same code trains with DistributedDataParallel (NCCL on GPU, gloo on CPU); rank 0
validates and writes. The run itself is a ``kseg.foldrun.FoldRun``; this module loops over its steps.
Outputs under ``<workdir>/fold<N>/`` are named by ``kseg.workdir``: ``best.pt``, ``last.pt``,
``metrics.csv``, ``curves.png``, ``config.yaml``, and the OOF files ``oof.npy`` (uint8 probabilities,
``(N, K, H, W)`` at ``data.image_size``), ``oof_masks.npy`` and ``oof.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kseg import distributed
from kseg.config import Config
from kseg.errors import KsegError
from kseg.evaluation import EpochStats
from kseg.foldrun import FoldResult, FoldRun, NoteCallback, StepCallback
from kseg.split import fold_tables
from kseg.tracking import open_trackers
from kseg.workdir import WorkDir

__all__ = ["EpochStats", "FoldResult", "FoldRun", "fold_tables", "folds_to_train", "train_fold"]


def folds_to_train(cfg: Config, fold: str) -> list[int]:
    """The folds ``--fold`` names: one number, or ``all`` (every fold of ``folds.csv``)."""
    if fold == "all":
        return list(range(WorkDir(cfg.workdir).n_folds()))
    try:
        return [int(fold)]
    except ValueError:
        raise KsegError(
            f"--fold {fold!r} is neither a fold number nor 'all'; use e.g. --fold 0 or --fold all"
        ) from None


def train_fold(
    cfg: Config,
    fold: int,
    resume: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_note: NoteCallback | None = None,
) -> FoldResult:
    """Train one fold.

    Args:
        cfg: The experiment config.
        fold: Fold number of ``folds.csv`` to hold out.
        resume: Continue from ``fold<N>/last.pt`` (optimiser, scheduler, scaler and RNG state included);
            with a larger ``train.epochs`` the run trains on to the new count.
        on_step: Progress ``callback(epoch, step, steps, loss, images_per_s)``.
        on_epoch: Called with each epoch's figures, after its checkpoints are written.
        on_note: Called with one-line notes (device, precision, weights, resume point).
    """
    note = on_note or (lambda _msg: None)
    run = FoldRun(cfg, fold, resume=resume, on_step=on_step, on_note=note)
    processes = f", {run.world} processes" if run.world > 1 else ""
    note(
        f"fold {fold}: {len(run.train_rows)} train / {len(run.val_rows)} validation images on {run.device} "
        f"({run.precision}{processes}); weights: {run.weights_from}"
    )
    if run.weights_note:
        note(run.weights_note)
    run.prepare_outputs()
    start = run.progress.epoch
    if start >= cfg.train.epochs:
        note(
            f"fold {fold} has already trained {start} epochs (train.epochs is {cfg.train.epochs}); "
            "raise train.epochs to train on"
        )
    if run.pasted:
        note("copy-paste classes: " + ", ".join(cfg.data.classes[c] for c in run.pasted))
    trackers = open_trackers(cfg, fold, run.work) if run.main else []
    stopped_early = False
    try:
        for epoch in range(start, cfg.train.epochs):
            started = time.perf_counter()
            train_loss, images_per_s = run.train_epoch(epoch)
            stats = run.validate(epoch, train_loss, images_per_s, started) if run.main else None
            if stats is not None:
                run.progress.history.append(stats.row())
            run.share_progress()
            if run.scheduler is not None and not run.per_step:
                run.scheduler.step(run.progress.history[-1]["val_dice"])
            if stats is not None:
                run.save(epoch, stats.best)
                for tracker in trackers:
                    tracker.log(stats.row(), stats.epoch)
                if on_epoch:
                    on_epoch(stats)
            distributed.barrier(run.world)
            if cfg.train.patience and run.progress.bad_epochs >= cfg.train.patience:
                stopped_early = True
                note(f"early stop: no better validation Dice for {run.progress.bad_epochs} epochs (train.patience)")
                break
    finally:
        for tracker in trackers:
            tracker.close()
    return run.result(stopped_early)
