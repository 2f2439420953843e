"""What a fold run keeps between epochs (``RunProgress``, saved in ``last.pt``), what it reports when it
ends (``FoldResult``), and the callbacks it reports through."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kseg.averaging import AverageResult

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
    steps_done: int = 0  # optimiser steps done
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
