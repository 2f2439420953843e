"""Optional experiment trackers for training: TensorBoard and Weights & Biases.

Both are off by default (``train.log: []``) and neither package is needed unless asked for:
``train.log: [tensorboard]`` writes ``<workdir>/fold<N>/tensorboard/`` (``pip install -e ".[tensorboard]"``);
``train.log: [wandb]`` starts one W&B run per fold in ``train.wandb_project`` (``pip install wandb``;
``train.wandb_mode: offline`` keeps it on disk for a later ``wandb sync``). Every epoch's row of
``metrics.csv`` is sent as scalars, grouped as ``loss/``, ``val/``, ``dice/``, ``iou/``, ``precision/``,
``recall/``; the resolved config goes with the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import yaml

from kseg.config import TrainConfig
from kseg.errors import TrainError
from kseg.training.evaluation import EpochStats
from kseg.training.foldstate import RunProgress
from kseg.training.loop import Callback
from kseg.workspace.workdir import WorkDir


class Tracker(Protocol):
    def log(self, row: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _grouped(row: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key == "epoch":
            continue
        prefix, _, rest = key.partition("_")
        if key in ("train_loss", "val_loss"):
            out[f"loss/{prefix}"] = value
        elif prefix in ("dice", "iou", "precision", "recall") and rest:
            out[f"{prefix}/{rest}"] = value
        elif key == "lr":
            out["train/lr"] = value
        else:
            out[f"val/{key.removeprefix('val_')}"] = value
    return out


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config_yaml: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError(
                "train.log asks for tensorboard but the tensorboard package is not installed; "
                'run pip install -e ".[tensorboard]", or remove it from train.log'
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + config_yaml + "\n```", 0)

    def log(self, row: dict[str, float], step: int) -> None:
        for key, value in _grouped(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, train: TrainConfig, run: str, config: dict[str, Any], fold: int, fold_dir: Path) -> None:
        """``run``: the work folder's name (the W&B group); ``config``: the resolved config, as JSON."""
        try:
            import wandb
        except ImportError:
            raise TrainError(
                "train.log asks for wandb but the wandb package is not installed; "
                "run pip install wandb, or remove it from train.log"
            ) from None
        self.run = wandb.init(
            project=train.wandb_project,
            name=f"{run}-fold{fold}",
            group=run,
            config=config,
            dir=str(fold_dir),
            mode=train.wandb_mode,
            reinit=True,
        )

    def log(self, row: dict[str, float], step: int) -> None:
        self.run.log(_grouped(row), step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(train: TrainConfig, config: dict[str, Any], fold: int, workdir: WorkDir) -> list[Tracker]:
    """The trackers ``train.log`` asks for (none by default); ``config`` is the resolved config as JSON,
    which each tracker records."""
    trackers: list[Tracker] = []
    try:
        for name in dict.fromkeys(train.log):
            if name == "tensorboard":
                text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, allow_unicode=True)
                trackers.append(TensorBoardTracker(workdir.tensorboard(fold), text))
            else:
                trackers.append(WandbTracker(train, workdir.root.name, config, fold, workdir.fold_dir(fold)))
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers


class Trackers(Callback):
    """The trackers of ``open_trackers`` as a loop callback: every validated epoch's row is sent (rank 0)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def on_epoch_end(self, epoch: int, stats: EpochStats | None, progress: RunProgress) -> None:
        if stats is not None:
            for tracker in self.trackers:
                tracker.log(stats.row(), stats.epoch)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
