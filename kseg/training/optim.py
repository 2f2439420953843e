"""Optimisers and learning-rate schedules of ``train.*``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kseg.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: not on biases and normalisation parameters (1-D tensors)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(train: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD with Nesterov momentum) over ``param_groups``."""
    groups = param_groups(model, train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=train.lr)


def build_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The learning-rate schedule; stepped after every optimiser step except ``plateau`` (per epoch)."""
    total = max(1, steps_per_epoch * train.epochs)
    warmup = int(round(train.warmup_epochs * steps_per_epoch))
    kind = train.scheduler
    if kind == "cosine":

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if kind == "onecycle":
        if total < 4:  # too few steps for the three phases of a cycle: constant rate
            return None
        pct = min(0.5, max(2 / total, warmup / total)) if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.lr, total_steps=total, pct_start=pct)
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None
