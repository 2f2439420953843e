"""What a fold run keeps between epochs (``RunProgress``, saved in ``last.pt``), what it reports when it
ends (``FoldResult``), and the callbacks it reports through."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kseg.errors import TrainError
from kseg.models.averaging import AverageResult
from kseg.training.distributed import Ranks
from kseg.training.evaluation import EpochStats

StepCallback = Callable[[int, int, int, float, float], None]  # epoch, step, steps, loss, images/s
NoteCallback = Callable[[str], None]


@dataclass
class FoldResult:
    """What ``train_fold`` did."""

    fold: int
    dir: Path
    best_epoch: int
    best_score: float
    epochs_done: int
    stopped_early: bool
    metrics: pd.DataFrame
    weights_from: str
    device: str
    precision: str
    notes: list[str] = field(default_factory=list)
    stopped_by_time: bool = False  # train.time_limit passed: resume to finish
    average: AverageResult | None = None  # train.average: the averaged checkpoint's figures
    metric: str = "row_dice"  # what best_score is (submission.metric)


@dataclass
class RunProgress:
    """Where a run stands: what ``last.pt`` saves and ``restore`` brings back."""

    epoch: int = 0  # epochs done
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> RunProgress:
        """The progress a ``last.pt`` saved (``FoldRun.state``)."""
        return cls(**{name: checkpoint[name] for name in cls.__dataclass_fields__})

    def record(self, stats: EpochStats) -> None:
        """An epoch validated: its row, and the best score so far or one more epoch without it."""
        if stats.best:
            self.best_score, self.best_epoch, self.bad_epochs = stats.val_score, stats.epoch, 0
        else:
            self.bad_epochs += 1
        self.history.append(stats.row())
        self.epoch = stats.epoch

    def share(self, ranks: Ranks) -> None:
        """Rank 0's history and best-so-far on every rank."""
        self.history = ranks.broadcast(self.history)
        self.best_score, self.best_epoch, self.bad_epochs, self.epoch = ranks.broadcast(
            (self.best_score, self.best_epoch, self.bad_epochs, self.epoch)
        )


def check_finite(value: float, what: str, lr: float) -> None:
    """Stop a run whose loss went non-finite (``what`` names the loss, its fold and epoch).

    Raises:
        TrainError: One line with the fix; the fold's ``best.pt`` keeps the last finite epoch.
    """
    if not math.isfinite(value):
        raise TrainError(
            f"{what} is {value} (training diverged); lower train.lr (now {lr:g}), set train.clip_grad or "
            "runtime.amp: off, then train the fold again (its best.pt keeps the last finite epoch)"
        )
