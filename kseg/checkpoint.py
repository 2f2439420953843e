"""kseg checkpoints: save and load atomically, check them against a config, unwrap wrapped models."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kseg.config import Config
from kseg.errors import TrainError
from kseg.io import atomic_open


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


TRAINING_ONLY = ("optimizer", "scheduler", "scaler", "rng", "raw_model")


def inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """A training state without what only resuming needs (optimiser moments, schedule, RNG, the raw
    weights behind an EMA): ``best.pt`` keeps the weights, config, classes and history, a third of the
    size of ``last.pt`` with Adam."""
    return {k: v for k, v in state.items() if k not in TRAINING_ONLY}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a kill leaves the previous file or the new one, never half of one."""
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)
    except RuntimeError as exc:  # torch reports a failed write (a full disk) as a RuntimeError
        raise OSError(
            errno.EIO, f"could not be written ({str(exc).splitlines()[0][:80]}); is the disk full?", str(path)
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A kseg checkpoint (our own file: it also holds RNG states, so not weights-only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TrainError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it and train again"
        ) from None


def checkpoint_mismatch(checkpoint: dict[str, Any], cfg: Config) -> str | None:
    """How a checkpoint's model or classes differ from the config's (``None`` when they agree)."""
    saved = checkpoint.get("config", {}).get("model", {})
    for key in ("arch", "encoder_name", "in_channels"):
        if saved.get(key) != getattr(cfg.model, key):
            return f"was trained with model.{key}={saved.get(key)!r} but the config says {getattr(cfg.model, key)!r}"
    if checkpoint.get("classes") != list(cfg.data.classes):
        return f"was trained on classes {checkpoint.get('classes')}, not {list(cfg.data.classes)}"
    return None
