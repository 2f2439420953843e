"""Where tensors run: device choice, mixed precision, seeding and loader workers.

One rule for every stage (training, validation, inference): ``runtime.device: auto`` takes the GPU
when one is visible and the CPU otherwise; ``cuda`` asked for on a machine without one is an error,
never a silent fall-back. AMP and ``torch.compile`` apply on CUDA only, so the same config trains in
fp32 on a CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from kseg.errors import ConfigError
from kseg.schema import RuntimeConfig

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """The device of ``runtime.device``; under torchrun, this process's GPU (``LOCAL_RANK``).

    Raises:
        ConfigError: ``cuda`` is asked for and no CUDA GPU is visible.
    """
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device is 'cuda' but no CUDA GPU is visible; set runtime.device: auto or cpu")
    if runtime.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``runtime.amp``: bf16 / fp16 on CUDA, none (plain fp32) on CPU or when off."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed precision on CUDA when asked; a no-op elsewhere."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def epoch_seed(seed: int, epoch: int) -> int:
    """The one seed of everything random in epoch ``epoch`` (0-based; ``epoch == epochs done`` for the
    checkpoint average's batch-norm pass) of a run seeded ``train.seed``: shuffling, augmentations and
    dropout draw from it, so a resumed run continues exactly as if it had never stopped."""
    return seed * 1000 + epoch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers() -> int:
    """Data loader processes when ``runtime.num_workers`` is unset: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


def loader_workers(runtime: RuntimeConfig, cap: int | None = None) -> int:
    """``runtime.num_workers``, or the default; at most ``cap`` when given."""
    workers = default_workers() if runtime.num_workers is None else runtime.num_workers
    return workers if cap is None else min(workers, cap)


def pin_memory(runtime: RuntimeConfig, device: torch.device) -> bool:
    """``runtime.pin_memory``, by default on exactly when training on CUDA."""
    return runtime.pin_memory if runtime.pin_memory is not None else device.type == "cuda"
