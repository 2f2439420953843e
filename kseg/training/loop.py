"""The one training loop (``fit``) and the callbacks that act around it, in the manner of Lightning's
callbacks and mmengine's hooks: the loop trains a ``SegTask`` epoch by epoch and validates it; what
happens around (the commit of an epoch's files, early stopping, the time limit, trackers, progress,
checkpoint averaging) is a ``Callback``. Everything random in an epoch (shuffling, augmentations,
dropout) is seeded from ``epoch_seed(seed, epoch)``, so a run resumed after epoch N goes on exactly as if
it had never stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kseg.metrics.scores import epoch_score
from kseg.runtime import epoch_seed, seed_everything
from kseg.training.distributed import Ranks
from kseg.training.evaluation import EpochStats
from kseg.training.foldstate import RunProgress, StepCallback, check_finite
from kseg.training.task import SegTask

EARLY, OUT_OF_TIME = "early stop", "time limit"


class Callback:
    """What acts around ``fit``; every hook is a no-op here. Hooks run on every rank, in list order;
    ``stats`` is ``None`` on ranks other than 0 (which validates)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the epoch's first batch (``epoch`` counts from 0)."""

    def on_batch(self, epoch: int, step: int, steps: int, loss: float, images: int) -> None:
        """After a batch's backward pass, before its optimiser step; may raise to stop the run."""

    def on_epoch_end(self, epoch: int, stats: EpochStats | None, progress: RunProgress) -> None:
        """After validation and the schedule's step."""

    def stop_reason(self, epoch: int, progress: RunProgress) -> str | None:
        """Why the loop should stop after this epoch, or ``None``; asked on every rank after the barrier."""
        return None

    def on_fit_end(self, reason: str | None, progress: RunProgress) -> None:
        """After the last epoch trained (``reason`` is why the loop stopped early, or ``None``)."""

    def close(self) -> None:
        """Always, last (trackers close their files)."""


Validate = Callable[[int, float, float, float], EpochStats]  # epoch, train loss, images/s, started


def fit(
    task: SegTask,
    loader: Callable[[int], Iterable[Any]],
    validate: Validate,
    progress: RunProgress,
    *,
    epochs: int,
    seed: int,
    callbacks: Sequence[Callback] = (),
    ranks: Ranks | None = None,
) -> str | None:
    """Train ``task`` from epoch ``progress.epoch`` to ``epochs``; returns why it stopped early (``EARLY``,
    ``OUT_OF_TIME`` or a callback's own reason), or ``None``.

    Args:
        task: The model and its optimisation.
        loader: The batches of one epoch (this rank's share), made after the epoch's seed is set.
        validate: Scores the task's ``eval_model`` after an epoch (rank 0 only).
        progress: Where the run stands; updated in place (best score, bad epochs, history).
        epochs: The number of epochs the run trains in all.
        seed: ``train.seed``; each epoch is seeded from it and the epoch number.
        callbacks: What acts around the loop.
        ranks: The training processes (one by default).
    """
    ranks = ranks or Ranks()
    reason: str | None = None
    try:
        for epoch in range(progress.epoch, epochs):
            reason = _epoch(task, loader, validate, progress, epoch, seed, callbacks, ranks)
            if reason is not None:
                break
        for callback in callbacks:
            callback.on_fit_end(reason, progress)
    finally:
        for callback in callbacks:
            callback.close()
    return reason


def _epoch(
    task: SegTask,
    loader: Callable[[int], Iterable[Any]],
    validate: Validate,
    progress: RunProgress,
    epoch: int,
    seed: int,
    callbacks: Sequence[Callback],
    ranks: Ranks,
) -> str | None:
    started = time.perf_counter()
    seed_everything(epoch_seed(seed, epoch))
    for callback in callbacks:
        callback.on_epoch_start(epoch)

    def on_batch(step: int, steps: int, loss: float, images: int) -> None:
        for callback in callbacks:
            callback.on_batch(epoch, step, steps, loss, images)

    total, seen = task.train_epoch(loader(epoch), on_batch)
    images_per_s = seen * ranks.world / max(time.perf_counter() - started, 1e-9)
    train_loss = ranks.mean(total, seen)
    stats = validate(epoch, train_loss, images_per_s, started) if ranks.main else None
    if stats is not None:
        progress.record(stats)
    progress.share(ranks)
    task.end_epoch(epoch_score(progress.history[-1]))
    for callback in callbacks:
        callback.on_epoch_end(epoch, stats, progress)
    ranks.barrier()
    for callback in callbacks:
        reason = callback.stop_reason(epoch, progress)
        if reason is not None:
            return reason
    return None


# ------------------------------------------------------------------------------------ callbacks


class FiniteLoss(Callback):
    """Stops a run whose training loss goes non-finite before that batch's step reaches the weights."""

    def __init__(self, label: str, lr: float):
        self.label, self.lr = label, lr

    def on_batch(self, epoch: int, step: int, steps: int, loss: float, images: int) -> None:
        check_finite(loss, f"{self.label}, epoch {epoch + 1}, step {step + 1}: the training loss", self.lr)


class StepProgress(Callback):
    """Reports ``on_step(epoch, step, steps, mean loss so far, images per second)`` after every batch."""

    def __init__(self, on_step: StepCallback, world: int = 1):
        self.on_step, self.world = on_step, world
        self.running, self.seen, self.t0 = 0.0, 0, 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.running, self.seen, self.t0 = 0.0, 0, time.perf_counter()

    def on_batch(self, epoch: int, step: int, steps: int, loss: float, images: int) -> None:
        self.running += loss * images
        self.seen += images
        speed = self.seen * self.world / max(time.perf_counter() - self.t0, 1e-9)
        self.on_step(epoch, step + 1, steps, self.running / self.seen, speed)


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without a better validation score (``train.patience``)."""

    def __init__(self, patience: int | None, metric: str, note: Callable[[str], None]):
        self.patience, self.metric, self.note = patience, metric, note

    def stop_reason(self, epoch: int, progress: RunProgress) -> str | None:
        if not self.patience or progress.bad_epochs < self.patience:
            return None
        self.note(f"early stop: no better validation {self.metric} for {progress.bad_epochs} epochs (train.patience)")
        return EARLY


class TimeLimit(Callback):
    """Stops at the first epoch end past ``deadline`` (a ``time.monotonic()`` instant), unless it was the
    last epoch; every rank reads its own clock, so rank 0's decision is shared and no rank waits alone."""

    def __init__(self, deadline: float | None, epochs: int, ranks: Ranks | None = None):
        self.deadline, self.epochs, self.ranks = deadline, epochs, ranks or Ranks()

    def stop_reason(self, epoch: int, progress: RunProgress) -> str | None:
        late = self.deadline is not None and time.monotonic() >= self.deadline
        return OUT_OF_TIME if self.ranks.broadcast(late) and epoch + 1 < self.epochs else None


class EpochEnd(Callback):
    """Calls ``on_epoch(stats)`` with each validated epoch (rank 0), e.g. to log or draw it."""

    def __init__(self, on_epoch: Callable[[EpochStats], None]):
        self.on_epoch = on_epoch

    def on_epoch_end(self, epoch: int, stats: EpochStats | None, progress: RunProgress) -> None:
        if stats is not None:
            self.on_epoch(stats)
