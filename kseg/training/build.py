"""A fold's training pieces built from the config: its data (``FoldData``: rows, dataset, sampling, the
loader of each epoch) and its ``SegTask`` (model, EMA, loss, optimiser, schedule), fresh or from a
resumed ``last.pt``. The config stops here: the task and the loop take plain values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from kseg.config import Config, ModelConfig, TrainConfig
from kseg.data.split import fold_tables, with_pseudo_rows
from kseg.errors import TrainError
from kseg.models.build import build_model
from kseg.models.checkpoint import checkpoint_mismatch, load_checkpoint
from kseg.models.weights import normalization_note
from kseg.runtime import loader_workers, pin_memory, seed_everything
from kseg.training.dataset import (
    PseudoRows,
    TrainDataset,
    copy_paste,
    cutmix,
    paste_classes,
    rare_class_weights,
    train_loader,
)
from kseg.training.distributed import Ranks
from kseg.training.losses import loss_from_config
from kseg.training.optim import build_optimizer, build_scheduler
from kseg.training.task import BatchTransform, SegTask


class FoldData:
    """One fold's training and validation rows and the training batches of each epoch.

    Args:
        train_rows: ``ImageID, image, mask`` rows trained on (pseudo-labelled ones included).
        val_rows: The held-out rows, validated on.
        counts: Per-image class pixel counts of the training rows (``kseg split``'s scan), or ``None``.
        dataset: The training dataset of ``train_rows``.
        batch_size, seed, workers, pin_memory: As ``train_loader`` takes them.
        sample_weights: Per-image sampling weights (``train.sampling: rare``), or ``None``.
        pseudo_share: Share of every batch given to pseudo-labelled rows.
        ranks: The training processes; each loads its share.
    """

    def __init__(
        self,
        train_rows: pd.DataFrame,
        val_rows: pd.DataFrame,
        counts: np.ndarray | None,
        dataset: TrainDataset,
        *,
        batch_size: int,
        seed: int,
        workers: int = 0,
        pin_memory: bool = False,
        sample_weights: np.ndarray | None = None,
        pseudo_share: float = 0.0,
        ranks: Ranks | None = None,
    ):
        self.train_rows, self.val_rows, self.counts, self.dataset = train_rows, val_rows, counts, dataset
        self.batch_size, self.seed, self.workers, self.pin_memory = batch_size, seed, workers, pin_memory
        self.sample_weights, self.pseudo_share, self.ranks = sample_weights, pseudo_share, ranks or Ranks()

    @property
    def class_pixels(self) -> np.ndarray | None:
        return self.counts.sum(0) if self.counts is not None else None

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """The training batches of one epoch (this rank's share)."""
        return train_loader(
            self.dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            workers=self.workers,
            sample_weights=self.sample_weights,
            rank=self.ranks.rank,
            world=self.ranks.world,
            pin_memory=self.pin_memory,
            pseudo_share=self.pseudo_share,
        )

    @classmethod
    def from_config(
        cls, cfg: Config, fold: int, device: torch.device, ranks: Ranks, pseudo: PseudoRows | None = None
    ) -> FoldData:
        train_rows, val_rows, counts = fold_tables(cfg.data, cfg.workdir, fold)
        if len(train_rows) == 0 or len(val_rows) == 0:
            raise TrainError(
                f"fold {fold} leaves {len(train_rows)} training and {len(val_rows)} validation images; "
                "run 'kseg split' with fewer folds"
            )
        if pseudo is not None:
            train_rows = with_pseudo_rows(train_rows, val_rows, pseudo.rows)
        weights = None
        if cfg.train.sampling == "rare":
            if counts is None:
                raise TrainError("train.sampling: rare needs the class pixel counts of 'kseg split'; run it first")
            weights = rare_class_weights(counts)
        return cls(
            train_rows,
            val_rows,
            counts,
            TrainDataset.from_config(train_rows, cfg),
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            workers=loader_workers(cfg.runtime),
            pin_memory=pin_memory(cfg.runtime, device),
            sample_weights=weights,
            pseudo_share=pseudo.share if pseudo is not None else 0.0,
            ranks=ranks,
        )


def resume_checkpoint(
    last: Path, fold: int, model: ModelConfig, classes: list[str], multilabel: bool, train: TrainConfig
) -> dict[str, Any]:
    """``last.pt`` of the fold, checked against the model, classes and training it is to be resumed with.

    Raises:
        TrainError: It is missing, of another model or classes, past ``train.epochs``, or of another EMA.
    """
    if not last.is_file():
        raise TrainError(
            f"no checkpoint to resume: {last} does not exist; run 'kseg train --fold {fold}' without --resume"
        )
    checkpoint = load_checkpoint(last)
    mismatch = checkpoint_mismatch(checkpoint, model, classes, multilabel)
    if mismatch:
        raise TrainError(f"{last} {mismatch}; resume with the same model and classes, or train without --resume")
    done = int(checkpoint.get("epoch", 0))
    if done > train.epochs:
        raise TrainError(
            f"{last} has already trained {done} epochs but train.epochs is {train.epochs}; to train on, "
            f"set train.epochs above {done}; the best epoch so far is in best.pt already"
        )
    if (checkpoint.get("ema_decay") is not None) != (train.ema is not None):
        raise TrainError(
            f"{last} was trained with train.ema {checkpoint.get('ema_decay')} and the config says "
            f"{train.ema}; resume with the same train.ema, or train without --resume"
        )
    return checkpoint


@dataclass
class BuiltTask:
    """A task and where its weights came from."""

    task: SegTask
    weights_from: str
    weights_note: str | None
    pasted: list[int]  # copy-paste classes


def build_task(
    cfg: Config, data: FoldData, device: torch.device, amp: torch.dtype | None, resumed: bool = False
) -> BuiltTask:
    """The fold's task: the model seeded by ``train.seed`` (from ImageNet weights, or none when it is
    to be resumed: ``last.pt`` then brings them), EMA, loss, optimiser, schedule, batch augmentations."""
    seed_everything(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    model_cfg = cfg.model.model_copy(update={"encoder_weights": None}) if resumed else cfg.model
    model, source = build_model(model_cfg, len(cfg.data.classes))
    model.to(device)
    if cfg.runtime.channels_last:  # faster on GPUs and, measured here, on CPUs too (scripts/bench_train.py)
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.train.ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # BatchNorm statistics are averaged too (use_buffers), so the averaged model needs no recalibration
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
    optimizer = build_optimizer(cfg.train, model)
    steps = steps_per_epoch(data, cfg.train.accumulate)
    scheduler = build_scheduler(cfg.train, optimizer, steps)
    aug = cfg.train.augment
    pasted = paste_classes(aug.copy_paste_classes, list(cfg.data.classes), data.class_pixels) if aug.copy_paste else []
    task = SegTask(
        model,
        loss_from_config(cfg, data.class_pixels).to(device),
        optimizer,
        device,
        scheduler=scheduler,
        per_step=cfg.train.scheduler != "plateau",
        ema=ema,
        amp=amp,
        accumulate=cfg.train.accumulate,
        clip_grad=cfg.train.clip_grad,
        channels_last=cfg.runtime.channels_last,
        batch_transform=_mixing(aug.cutmix, aug.copy_paste, pasted),
    )
    return BuiltTask(task, str(source), normalization_note(source.report, cfg.data.mean, cfg.data.std), pasted)


def steps_per_epoch(data: FoldData, accumulate: int) -> int:
    """Optimiser steps in one epoch (what the schedule is laid out over)."""
    return math.ceil(len(data.loader(0)) / accumulate)


def _mixing(cutmix_p: float, paste_p: float, pasted: list[int]) -> BatchTransform | None:
    """CutMix then copy-paste on a batch's CPU tensors, from the epoch-seeded generator; ``None`` when off."""
    if cutmix_p <= 0 and paste_p <= 0:
        return None

    def transform(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = cutmix(images, masks, cutmix_p)
        return copy_paste(images, masks, paste_p, pasted)

    return transform


def compiled(model: nn.Module, enabled: bool, device: torch.device, note: Callable[[str], None]) -> nn.Module:
    """``torch.compile(model)`` on CUDA when ``runtime.compile`` asks; the model itself otherwise. Compilation
    happens at the first forward pass, so that pass is guarded too: a failure there (a missing compiler, an
    unsupported operation) is a note, and the run goes on uncompiled."""
    if not enabled or device.type != "cuda":
        return model
    try:
        return CompileOrEager(model, torch.compile(model), note)
    except Exception as exc:  # compile is an optimisation: never a reason to stop
        note(f"torch.compile unavailable ({type(exc).__name__}); training uncompiled")
        return model


class CompileOrEager(nn.Module):
    """The compiled model, or the eager one from the moment its first forward pass fails to compile."""

    compiled: Callable[..., Any]

    def __init__(self, model: nn.Module, compiled: Callable[..., Any], note: Callable[[str], None]):
        super().__init__()
        self.model = model
        object.__setattr__(self, "compiled", compiled)  # the same parameters: not registered twice
        self.note, self.tried, self.eager = note, False, False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.eager:
            return self.model(*args, **kwargs)
        if self.tried:
            return self.compiled(*args, **kwargs)
        self.tried = True
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # compilation runs here, at the first call
            self.eager = True
            self.note(f"torch.compile failed at the first forward pass ({type(exc).__name__}); training uncompiled")
            return self.model(*args, **kwargs)
