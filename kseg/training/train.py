"""``kseg train``: one fold's training, AMP on GPU, exact resume, early stopping, the best checkpoint by
the competition metric, out-of-fold (OOF) probabilities.

Under ``torchrun`` the same code trains with DistributedDataParallel (NCCL on GPU, gloo on CPU); rank 0
validates and writes. The run itself is a ``kseg.training.foldrun.FoldRun``; this module loops over its steps.
Outputs under ``<workdir>/fold<N>/`` are named by ``kseg.workspace.workdir``: ``best.pt``, ``last.pt``,
``metrics.csv``, ``curves.png``, ``config.yaml``, and the OOF files ``oof.npy`` (uint8 probabilities,
``(N, K, H, W)`` at ``data.image_size``), ``oof_masks.npy`` and ``oof.csv``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

from kseg.config import Config
from kseg.data.split import fold_tables
from kseg.errors import KsegError, TrainError
from kseg.metrics.scores import epoch_score
from kseg.models.averaging import AverageResult, average_weights, best_is_average, recalibrate_batchnorm
from kseg.models.checkpoint import MODEL_KEYS, inference_state, load_checkpoint, save_checkpoint, unwrap
from kseg.prediction.predictor import Predictor
from kseg.runtime import epoch_seed, seed_everything
from kseg.training import distributed
from kseg.training.dataset import PseudoRows
from kseg.training.evaluation import EpochStats
from kseg.training.foldrun import FoldRun
from kseg.training.foldstate import FoldResult, NoteCallback, StepCallback
from kseg.training.tracking import open_trackers
from kseg.workspace.folds import sibling_mismatch
from kseg.workspace.workdir import WorkDir

__all__ = [
    "AverageResult",
    "EpochStats",
    "FoldResult",
    "FoldRun",
    "average_fold",
    "fold_tables",
    "folds_to_train",
    "train_fold",
]


def folds_to_train(workdir: Path, fold: str) -> list[int]:
    """The folds ``--fold`` names: one number, or ``all`` (every fold of ``workdir/folds.csv``)."""
    n_folds = WorkDir(workdir).n_folds()
    if fold == "all":
        return list(range(n_folds))
    try:
        number = int(fold)
    except ValueError:
        raise KsegError(
            f"--fold {fold!r} is neither a fold number nor 'all'; use e.g. --fold 0 or --fold all"
        ) from None
    if not 0 <= number < n_folds:
        where = Path(workdir) / "folds.csv"
        raise KsegError(f"--fold {number} is no fold of {where} (folds 0-{n_folds - 1}); pick one")
    return [number]


def resumes(workdir: Path, fold: int, resume: bool, several: bool) -> bool:
    """Whether a fold of a ``--resume`` command resumes, one rule for ``kseg train`` and ``kseg pseudo``: a
    fold named alone must resume (``train_fold`` stops with the fix when it has no ``last.pt``); among
    several (``--fold all``), folds never started start now."""
    return resume and (not several or WorkDir(workdir).last(fold).is_file())


def train_fold(
    cfg: Config,
    fold: int,
    resume: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_note: NoteCallback | None = None,
    *,
    deadline: float | None = None,
    pseudo: PseudoRows | None = None,
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
        deadline: A ``time.monotonic()`` instant (default: ``train.time_limit`` seconds from now): the
            run stops at the first epoch end past it, resumable (``FoldResult.stopped_by_time``).
        pseudo: Pseudo-labelled images to train on as well (``kseg pseudo``); never validated on.
    """
    note = on_note or (lambda _msg: None)
    if deadline is None and cfg.train.time_limit is not None:
        deadline = time.monotonic() + cfg.train.time_limit
    mismatch = sibling_mismatch(
        WorkDir(cfg.workdir),
        fold,
        {key: getattr(cfg.model, key) for key in MODEL_KEYS},
        list(cfg.data.classes),
        cfg.data.multilabel,
    )
    if mismatch:
        raise TrainError(
            f"{mismatch}; the folds of one work folder are one ensemble, so train another model in another work "
            f"folder (--set workdir=...; kseg blend combines runs), or remove that fold's folder first"
        )
    rank, _ = distributed.init()
    hold = WorkDir(cfg.workdir).hold_fold(fold) if rank == 0 else None  # readers leave our commits to us
    try:
        run = FoldRun(cfg, fold, resume=resume, on_step=on_step, on_note=note, pseudo=pseudo)
        return _train(run, on_epoch, note, deadline, pseudo)
    finally:
        if hold is not None:
            hold.close()


def _train(
    run: FoldRun,
    on_epoch: Callable[[EpochStats], None] | None,
    note: NoteCallback,
    deadline: float | None,
    pseudo: PseudoRows | None,
) -> FoldResult:
    """``train_fold``'s epochs, then the averaging it may owe."""
    cfg, fold = run.cfg, run.fold
    _opening_notes(run, pseudo, note)
    run.prepare_outputs()
    if run.progress.epoch >= cfg.train.epochs:
        note(
            f"fold {fold} has already trained {run.progress.epoch} epochs (train.epochs is {cfg.train.epochs}); "
            "raise train.epochs to train on"
        )
    stopped_early, out_of_time = _epochs(run, on_epoch, note, deadline)
    result = run.result(stopped_early)
    result.stopped_by_time = out_of_time
    if out_of_time:
        note(
            f"time limit reached after epoch {len(run.progress.history)} of {cfg.train.epochs} (train.time_limit "
            f"{cfg.train.time_limit:g} s): fold{fold}/last.pt is saved; continue with "
            f"'kseg train --fold {fold} --resume'"
        )
    elif cfg.train.average is not None and run.main and average_is_due(run):
        if deadline is not None and time.monotonic() >= deadline:
            result.stopped_by_time = True
            note(
                f"time limit reached (train.time_limit {cfg.train.time_limit:g} s) before checkpoint averaging; "
                f"'kseg train --fold {fold} --resume' averages the epochs"
            )
            distributed.barrier(run.world)
            return result
        result.average = average_fold(run, note)
        if result.average.kept:
            result.best_score = result.average.score
    elif cfg.train.average is not None and run.main:
        result.average = AverageResult.from_json(run.work.read_average(fold))
    distributed.barrier(run.world)
    return result


def _opening_notes(run: FoldRun, pseudo: PseudoRows | None, note: NoteCallback) -> None:
    """What the fold trains on, where, from which weights, with which extras."""
    processes = f", {run.world} processes" if run.world > 1 else ""
    note(
        f"fold {run.fold}: {len(run.train_rows)} train / {len(run.val_rows)} validation images on {run.device} "
        f"({run.precision}{processes}); weights: {run.weights_from}"
    )
    if run.weights_note:
        note(run.weights_note)
    if pseudo is not None:
        note(f"pseudo-labelled: {len(pseudo.rows)} images, {pseudo.share:.0%} of each batch (never validated on)")
    if run.pasted:
        note("copy-paste classes: " + ", ".join(run.cfg.data.classes[c] for c in run.pasted))


def _epochs(
    run: FoldRun, on_epoch: Callable[[EpochStats], None] | None, note: NoteCallback, deadline: float | None
) -> tuple[bool, bool]:
    """Train the remaining epochs; returns ``(stopped early, stopped by the time limit)``."""
    cfg = run.cfg
    trackers = open_trackers(cfg.train, cfg.model_dump(mode="json"), run.fold, run.work) if run.main else []
    try:
        for epoch in range(run.progress.epoch, cfg.train.epochs):
            started = time.perf_counter()
            train_loss, images_per_s = run.train_epoch(epoch)
            stats = run.validate(epoch, train_loss, images_per_s, started) if run.main else None
            if stats is not None:
                run.progress.history.append(stats.row())
            run.share_progress()
            if run.scheduler is not None and not run.per_step:
                run.scheduler.step(epoch_score(run.progress.history[-1]))
            if stats is not None:
                run.save(epoch, stats.best)
                for tracker in trackers:
                    tracker.log(stats.row(), stats.epoch)
                if on_epoch:
                    on_epoch(stats)
            distributed.barrier(run.world)
            if cfg.train.patience and run.progress.bad_epochs >= cfg.train.patience:
                note(
                    f"early stop: no better validation {cfg.submission.metric} for {run.progress.bad_epochs} epochs "
                    "(train.patience)"
                )
                return True, False
            # every rank reads its own clock: the decision is shared so that no rank waits alone
            late = deadline is not None and time.monotonic() >= deadline
            if distributed.broadcast(late, run.rank, run.world) and epoch + 1 < cfg.train.epochs:
                return False, True
    finally:
        for tracker in trackers:
            tracker.close()
    return False, False


def average_is_due(run: FoldRun) -> bool:
    """Whether the fold's history has no current average yet (none, or one made before more epochs)."""
    done = AverageResult.from_json(run.work.read_average(run.fold))
    history = run.progress.history
    return len(history) >= 2 and (
        done is None or done.after_epoch != len(history) or done.epochs != run.averaged_epochs()
    )


def average_fold(run: FoldRun, note: NoteCallback | None = None) -> AverageResult:
    """Average the kept epochs' weights, re-estimate batch norm on training images, validate the average
    like an epoch and, when it beats every epoch, make it the fold's ``best.pt`` (and ``oof.npy``).
    Writes ``average.json`` either way (rank 0 only)."""
    cfg, work, fold = run.cfg, run.work, run.fold
    epochs = run.averaged_epochs()
    missing = [e for e in epochs if not work.snapshot(fold, e).is_file()]
    if missing:
        raise TrainError(
            f"{work.snapshot(fold, missing[0])} is missing, so train.average cannot take epoch {missing[0]}; "
            f"train fold {fold} again without --resume to average its epochs"
        )
    earlier = AverageResult.from_json(work.read_average(fold))
    previous = (
        earlier.epochs if earlier and best_is_average(earlier, run.progress.best_score, run.progress.history) else None
    )
    started = time.perf_counter()
    model = copy.deepcopy(unwrap(run.eval_model))
    model.load_state_dict(average_weights([load_checkpoint(work.snapshot(fold, e))["model"] for e in epochs]))
    after = len(run.progress.history)
    seed_everything(epoch_seed(cfg.train.seed, after))
    bn_batches = recalibrate_batchnorm(model, iter(run.loader(after)), run.device)
    predictor = Predictor([model], run.predictor.options, run.device, run.amp)
    stats = run.score(predictor, after, float("nan"), float("nan"), started)
    result = AverageResult(
        epochs,
        cfg.train.average_rule,
        stats.val_score,
        run.progress.best_score,
        stats.best,
        bn_batches,
        after,
        stats.row(),
        previous if not stats.best else None,
    )
    names = []
    if stats.best:  # later epochs of a resumed run must beat the average to replace it
        run.progress.best_score = stats.val_score
        save_checkpoint(work.staged(fold, "last.pt"), run.state(after - 1))
        state = inference_state(run.state(after - 1))
        state.update(model=unwrap(model).state_dict(), averaged_epochs=epochs)
        save_checkpoint(work.staged(fold, "best.pt"), state)
        names += ["best.pt", "oof.npy", "last.pt"] if work.staged(fold, "oof.npy").exists() else ["best.pt", "last.pt"]
    work.write_average(fold, result.__dict__, staged=True)
    work.commit(fold, [*names, "average.json"])
    if note:
        holder = f"the average of epochs {', '.join(map(str, previous))}" if previous else "the best epoch"
        verdict = "kept as best.pt" if stats.best else f"best.pt stays {holder}"
        note(
            f"average of epochs {', '.join(map(str, epochs))}: validation {cfg.submission.metric} "
            f"{stats.val_score:.4f} vs {result.best_epoch_score:.4f} for {holder}; {verdict}"
        )
    return result
