"""kseg checkpoints: save and load atomically, check them against a config, unwrap wrapped models."""

from __future__ import annotations

import errno
import importlib
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kseg.config import MODEL_KEYS, ModelConfig, checkpoint_mismatch_of
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


# Checkpoints written before kseg stored the NumPy RNG state as a tensor hold one NumPy array: these
# constructors of plain arrays are allowed on load, nothing else (an object array would still need its
# objects' own constructors, which the safe loader refuses).
_MULTIARRAY = importlib.import_module("numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray")
_OLD_NUMPY = (np.ndarray, np.dtype, type(np.dtype(np.uint32)), _MULTIARRAY._reconstruct)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read as data only (``weights_only=True``): a file from elsewhere (a work folder attached
    as a Kaggle dataset) can hold tensors, numbers, strings and containers, never code to run.

    Raises:
        TrainError: If the file is damaged, or holds anything but data (it is then not loaded at all).
    """
    try:
        with torch.serialization.safe_globals(list(_OLD_NUMPY)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = str(exc).split("Unsupported global: GLOBAL ", 1)[-1].split(" ", 1)[0] if "GLOBAL" in str(exc) else ""
        what = f" ({found})" if found else ""
        raise TrainError(
            f"checkpoint {path} holds objects that a data-only load refuses{what}, so it was not loaded; kseg "
            "never runs code from a checkpoint: train the fold again, or re-save the file from a source you trust"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise TrainError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it and train again"
        ) from None


def rng_state() -> dict[str, Any]:
    """The RNG states of torch, NumPy and Python in types a data-only load accepts."""
    state: Any = np.random.get_state()
    name, key, pos, has_gauss, cached = state
    numpy_state = {
        "name": name,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore ``rng_state()`` (or an older checkpoint's NumPy tuple)."""
    torch.set_rng_state(rng["torch"])
    saved = rng["numpy"]
    if isinstance(saved, dict):
        key = saved["key"].numpy().astype(np.uint32)
        saved = (saved["name"], key, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    np.random.set_state(saved)
    random.setstate(rng["python"])


def checkpoint_mismatch(
    checkpoint: dict[str, Any], model: ModelConfig, classes: list[str], multilabel: bool
) -> str | None:
    """How a checkpoint's model, classes or mode differ from a config's ``model`` section, ``data.classes``
    and ``data.multilabel`` (``None`` when they agree)."""
    keys = {key: getattr(model, key) for key in MODEL_KEYS}
    return checkpoint_mismatch_of(checkpoint, keys, classes, multilabel)
