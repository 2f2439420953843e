"""Checkpoint averaging (``train.average``): which epochs' weights to keep, their mean, and batch-norm
statistics re-estimated for the mean on training images.

The weights of a few good epochs, averaged, often generalise better than any one of them (the idea of
stochastic weight averaging). The running batch-norm statistics of an average are not the average of
the statistics, so they are measured again with ``torch.optim.swa_utils.update_bn``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from kseg.metrics.scores import epoch_score

BN_BATCHES = 100  # training batches that re-estimate the batch-norm statistics of an average (at most)


def epochs_to_average(history: list[dict[str, Any]], k: int, rule: str) -> list[int]:
    """The epochs (1-based, ascending) whose weights the average takes: the ``k`` best by the metric
    (``rule="best"``; the earlier epoch wins a tie) or the last ``k`` (``rule="last"``)."""
    epochs = [int(row["epoch"]) for row in history]
    if rule == "last":
        return sorted(epochs[-k:])
    if rule != "best":
        raise ValueError(f"rule {rule!r} is neither 'best' nor 'last'")
    ranked = sorted(history, key=lambda row: (-epoch_score(row), int(row["epoch"])))
    return sorted(int(row["epoch"]) for row in ranked[:k])


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts of one model (floating tensors, summed in float64);
    integer buffers such as ``num_batches_tracked`` are taken from the last."""
    if not states:
        raise ValueError("no weights to average")
    keys = list(states[-1])
    mean: dict[str, torch.Tensor] = {}
    for key in keys:
        last = states[-1][key]
        if last.is_floating_point():
            total = torch.stack([s[key].to(torch.float64) for s in states]).mean(0)
            mean[key] = total.to(last.dtype)
        else:
            mean[key] = last.clone()
    return mean


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[Any], device: torch.device, *, limit: int = BN_BATCHES
) -> int:
    """Re-estimate the model's batch-norm running statistics on up to ``limit`` training batches of
    ``(images, masks)``; returns the number of batches used (0 when the model has no batch norm)."""
    if not has_batchnorm(model):
        return 0
    used = 0

    def counted() -> Iterable[Any]:
        nonlocal used
        for batch in islice(batches, limit):
            used += 1
            yield batch

    with torch.no_grad():
        update_bn(counted(), model, device)
    return used


@dataclass
class AverageResult:
    """What checkpoint averaging (``train.average``) did for one fold (``fold<N>/average.json``)."""

    epochs: list[int]
    rule: str
    score: float
    best_epoch_score: float
    kept: bool
    bn_batches: int
    after_epoch: int
    figures: dict[str, float]
    # the epochs of an earlier average (of a shorter run, resumed) that best.pt held when this one was made
    # and still holds when this one was not kept; None when best.pt was an epoch
    previous: list[int] | None = None

    @classmethod
    def from_json(cls, info: dict[str, Any] | None) -> AverageResult | None:
        if info is None:
            return None
        try:
            return cls(**{k: info[k] for k in cls.__dataclass_fields__ if k in info or k != "previous"})
        except (KeyError, TypeError):
            return None

    def best_label(self, best_epoch: int) -> str:
        """What ``best.pt`` holds after this average: ``average of 4,5``, or the epoch (or earlier average)
        it did not beat."""
        if self.kept:
            return "average of " + ",".join(map(str, self.epochs))
        if self.previous:
            return "average of " + ",".join(map(str, self.previous))
        return str(best_epoch)


def best_is_average(previous: AverageResult | None, best_score: float, history: list[dict[str, Any]]) -> bool:
    """Whether ``best.pt`` is still the earlier average ``previous``: it was kept, and no epoch since has
    beaten it (epochs after an average must beat the average to replace it)."""
    if previous is None or not previous.kept:
        return False
    return best_score == previous.score and all(epoch_score(row) < previous.score for row in history)
