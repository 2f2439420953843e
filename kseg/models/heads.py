"""A model's outputs: the mask logits, and with ``model.presence_head`` smp's classification head's
per-class presence logits (``mask, label = model(x)``, smp's ``aux_params``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kseg.models.checkpoint import unwrap


def split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mask logits (B, K, H, W), presence logits (B, K) or None)`` of a forward pass."""
    if isinstance(output, tuple | list):
        return output[0], output[1]
    return output, None


def has_presence_head(model: nn.Module) -> bool:
    """Whether the model (unwrapped from DDP, ``torch.compile`` or an EMA) has smp's classification head."""
    return getattr(unwrap(model), "classification_head", None) is not None
