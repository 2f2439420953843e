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
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from kseg.config import Config
from kseg.data.split import fold_tables
from kseg.errors import KsegError, TrainError
from kseg.models.averaging import AverageResult, average_weights, best_is_average, recalibrate_batchnorm
from kseg.models.checkpoint import MODEL_KEYS, inference_state, load_checkpoint, save_checkpoint, unwrap
from kseg.prediction.predictor import Predictor
from kseg.runtime import epoch_seed, seed_everything
from kseg.training.dataset import PseudoRows
from kseg.training.distributed import Ranks
from kseg.training.evaluation import EpochStats
from kseg.training.foldrun import CommitEpoch, FoldRun
from kseg.training.foldstate import FoldResult, NoteCallback, RunProgress, StepCallback
from kseg.training.loop import (
    EARLY,
    OUT_OF_TIME,
    Callback,
    EarlyStopping,
    EpochEnd,
    FiniteLoss,
    StepProgress,
    TimeLimit,
    fit,
)
from kseg.training.tracking import Trackers, open_trackers
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
    "train_folds",
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
    work = WorkDir(workdir)
    work.settle(fold)
    return resume and (not several or work.last(fold).is_file())


def train_folds(
    cfg: Config,
    folds: list[int],
    *,
    resume: bool = False,
    progress: Callable[[int], AbstractContextManager[Any]] | None = None,
    before_fold: Callable[[int], PseudoRows | None] | None = None,
) -> list[FoldResult]:
    """Train ``folds`` one after another, the one fold loop of ``kseg train``, ``kseg pseudo`` and the demo:
    one ``train.time_limit`` for them all (no fold starts after a fold stopped at it or once it has
    passed) and one resume rule (``resumes``).

    Args:
        cfg: The experiment config of the run being trained.
        folds: Fold numbers, in order.
        resume: ``--resume``.
        progress: ``progress(fold)`` gives a context whose value is ``train_fold``'s callbacks
            (``on_step``, ``on_epoch``, ``on_note``).
        before_fold: ``before_fold(fold)`` runs before the fold trains and gives its pseudo-labelled rows.
    """
    deadline = time.monotonic() + cfg.train.time_limit if cfg.train.time_limit is not None else None
    results: list[FoldResult] = []
    for fold in folds:
        late = deadline is not None and time.monotonic() >= deadline
        if results and (results[-1].stopped_by_time or late):
            break
        pseudo = before_fold(fold) if before_fold is not None else None
        again = resumes(cfg.workdir, fold, resume, several=len(folds) > 1)
        with progress(fold) if progress is not None else nullcontext({}) as callbacks:
            results.append(train_fold(cfg, fold, again, **callbacks, deadline=deadline, pseudo=pseudo))
    return results


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
    main = Ranks.joined().main
    hold = WorkDir(cfg.workdir).journal(fold).hold() if main else None  # readers leave our commits to us
    try:
        run = FoldRun(cfg, fold, resume=resume, on_note=note, pseudo=pseudo)
        return _train(run, on_step, on_epoch, note, deadline, pseudo)
    finally:
        if hold is not None:
            hold.close()


def _train(
    run: FoldRun,
    on_step: StepCallback | None,
    on_epoch: Callable[[EpochStats], None] | None,
    note: NoteCallback,
    deadline: float | None,
    pseudo: PseudoRows | None,
) -> FoldResult:
    """``train_fold``'s epochs through ``fit``, with the callbacks a fold run has."""
    cfg, fold, ranks = run.cfg, run.fold, run.ranks
    _opening_notes(run, pseudo, note)
    run.prepare_outputs()
    if run.progress.epoch >= cfg.train.epochs:
        note(
            f"fold {fold} has already trained {run.progress.epoch} epochs (train.epochs is {cfg.train.epochs}); "
            "raise train.epochs to train on"
        )
    callbacks: list[Callback] = [FiniteLoss(f"fold {fold}", cfg.train.lr)]
    if on_step is not None and ranks.main:
        callbacks.append(StepProgress(on_step, ranks.world))
    averaging = Averaging(run, note, deadline) if cfg.train.average is not None and ranks.main else None
    if ranks.main:
        trackers = open_trackers(cfg.train, cfg.model_dump(mode="json"), fold, run.work)
        callbacks += [CommitEpoch(run), Trackers(trackers)]
    if on_epoch is not None:
        callbacks.append(EpochEnd(on_epoch))
    callbacks += [
        EarlyStopping(cfg.train.patience, cfg.submission.metric, note),
        TimeLimit(deadline, cfg.train.epochs, ranks),
    ]
    if averaging is not None:
        callbacks.append(averaging)
    reason = fit(
        run.task,
        run.data.loader,
        run.validate,
        run.progress,
        epochs=cfg.train.epochs,
        seed=cfg.train.seed,
        callbacks=callbacks,
        ranks=ranks,
    )
    result = run.result(stopped_early=reason == EARLY)
    result.stopped_by_time = reason == OUT_OF_TIME or (averaging is not None and averaging.out_of_time)
    if reason == OUT_OF_TIME:
        note(
            f"time limit reached after epoch {len(run.progress.history)} of {cfg.train.epochs} (train.time_limit "
            f"{cfg.train.time_limit:g} s): fold{fold}/last.pt is saved; continue with "
            f"'kseg train --fold {fold} --resume'"
        )
    if averaging is not None:
        result.average = averaging.result
        if result.average is not None and averaging.made and result.average.kept:
            result.best_score = result.average.score
    ranks.barrier()
    return result


def _opening_notes(run: FoldRun, pseudo: PseudoRows | None, note: NoteCallback) -> None:
    """What the fold trains on, where, from which weights, with which extras."""
    processes = f", {run.ranks.world} processes" if run.ranks.world > 1 else ""
    note(
        f"fold {run.fold}: {len(run.data.train_rows)} train / {len(run.data.val_rows)} validation images on "
        f"{run.device} ({run.precision}{processes}); weights: {run.weights_from}"
    )
    if run.weights_note:
        note(run.weights_note)
    if pseudo is not None:
        note(f"pseudo-labelled: {len(pseudo.rows)} images, {pseudo.share:.0%} of each batch (never validated on)")
    if run.pasted:
        note("copy-paste classes: " + ", ".join(run.cfg.data.classes[c] for c in run.pasted))


class Averaging(Callback):
    """``train.average`` when the loop ends (rank 0): the kept epochs averaged (``average_fold``) unless
    the fold already has a current average, or the time limit stopped the run or has passed."""

    def __init__(self, run: FoldRun, note: NoteCallback, deadline: float | None):
        self.run, self.note, self.deadline = run, note, deadline
        self.result: AverageResult | None = None
        self.made = self.out_of_time = False

    def on_fit_end(self, reason: str | None, progress: RunProgress) -> None:
        run = self.run
        if reason == OUT_OF_TIME:
            return
        if not average_is_due(run):
            self.result = AverageResult.from_json(run.work.read_average(run.fold))
            return
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.out_of_time = True
            self.note(
                f"time limit reached (train.time_limit {run.cfg.train.time_limit:g} s) before checkpoint "
                f"averaging; 'kseg train --fold {run.fold} --resume' averages the epochs"
            )
            return
        self.result, self.made = average_fold(run, self.note), True


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
    cfg, work, fold, journal = run.cfg, run.work, run.fold, run.journal
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
    model = copy.deepcopy(unwrap(run.task.eval_model))
    model.load_state_dict(average_weights([load_checkpoint(work.snapshot(fold, e))["model"] for e in epochs]))
    after = len(run.progress.history)
    seed_everything(epoch_seed(cfg.train.seed, after))
    bn_batches = recalibrate_batchnorm(model, iter(run.data.loader(after)), run.device)
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
        save_checkpoint(journal.staged("last.pt"), run.state(after - 1))
        state = inference_state(run.state(after - 1))
        state.update(model=unwrap(model).state_dict(), averaged_epochs=epochs)
        save_checkpoint(journal.staged("best.pt"), state)
        names += ["best.pt", *run.staged_oof(), "last.pt"]
    work.write_average(fold, result.__dict__, staged=True)
    journal.commit([*names, "average.json"])
    if note:
        holder = f"the average of epochs {', '.join(map(str, previous))}" if previous else "the best epoch"
        verdict = "kept as best.pt" if stats.best else f"best.pt stays {holder}"
        note(
            f"average of epochs {', '.join(map(str, epochs))}: validation {cfg.submission.metric} "
            f"{stats.val_score:.4f} vs {result.best_epoch_score:.4f} for {holder}; {verdict}"
        )
    return result
