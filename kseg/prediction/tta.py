"""Test-time augmentation: paired augment / de-augment views, batched into few forward passes.

A view is an element of the dihedral group D4 acting on the last two axes ``(H, W)``: an optional
horizontal flip followed by ``k`` quarter turns. Its de-augmentation is the exact inverse, so
``view.deaugment(view.augment(x)) == x`` bit for bit, on square and non-square tensors.

View sets (``infer.tta`` / ``kseg infer --tta VIEWS``):

    none    identity
    hflip   identity, horizontal flip
    vflip   identity, vertical flip
    flip    identity, horizontal, vertical, both (ttach's ``flip_transform``)
    rot90   0, 90, 180, 270 degrees
    d4      the 8 dihedral views (ttach's ``d4_transform``)

All views of a batch go through the model in one forward pass (chunked by ``infer.batch_size``); views
that swap height and width (90 and 270 degrees) make a second pass when the image is not square, so no
image is ever rejected. Predictions are merged in probability space: ``mean`` of softmax (default) or
``gmean``, the geometric mean taken as a mean of log-probabilities (a product of probabilities
underflows). The sum over views is bracketed along the view group's own structure, so it does not depend on the order of
the views: a mirrored image gets exactly the mirrored prediction under ``flip`` and ``d4`` (see
``_tree_sum``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kseg.errors import ConfigError


@dataclass(frozen=True)
class View:
    """One test-time view: a horizontal flip (optional) then ``k`` counter-clockwise quarter turns."""

    k: int = 0
    flip: bool = False

    @property
    def name(self) -> str:
        turn = f"rot{90 * self.k}" if self.k else ""
        return "+".join(p for p in ("hflip" if self.flip else "", turn) if p) or "identity"

    @property
    def transposes(self) -> bool:
        """Whether the view swaps height and width."""
        return self.k % 2 == 1

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(..., H, W)`` -> ``(..., H, W)`` or ``(..., W, H)``."""
        if self.flip:
            x = x.flip(-1)
        return torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x

    def deaugment(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of ``augment``."""
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        return y.flip(-1) if self.flip else y


IDENTITY = View()
VIEW_SETS: dict[str, list[View]] = {
    "none": [IDENTITY],
    "hflip": [IDENTITY, View(0, True)],
    "vflip": [IDENTITY, View(2, True)],  # flip, then half a turn: a vertical flip
    "flip": [IDENTITY, View(0, True), View(2, True), View(2, False)],
    "rot90": [View(k) for k in range(4)],
    "d4": [View(k, f) for f in (False, True) for k in range(4)],
}


def views(name: str) -> list[View]:
    """The views of a named set; the error lists the valid names."""
    if name not in VIEW_SETS:
        raise ConfigError(f"TTA views {name!r} are unknown; choose from {', '.join(VIEW_SETS)}")
    return VIEW_SETS[name]


def _tree_sum(terms: dict[View, torch.Tensor]) -> torch.Tensor:
    """Sum per-view tensors along a binary tree that the view group maps onto itself.

    Floating-point addition is commutative but not associative, so a sum is only order-free if its
    bracketing is. Views are paired as the cosets of the subgroup chain {e} < {e, R^2} < rotations < D4:
    first ``k`` with ``k + 2`` (same flip), then even with odd quarter turns, then unflipped with flipped.
    Mirroring or turning the input permutes the views so that every bracket maps onto a bracket, only
    swapping its two operands: the merged prediction of a mirrored image is the mirrored prediction,
    bit for bit.
    """

    def pair(items: list[torch.Tensor]) -> torch.Tensor:
        return items[0] if len(items) == 1 else items[0] + items[1]

    by_flip = []
    for flip in (False, True):
        by_parity = []
        for parity in (0, 1):
            members = [terms[v] for v in sorted(terms, key=lambda v: v.k) if v.flip == flip and v.k % 2 == parity]
            if members:
                by_parity.append(pair(members))
        if by_parity:
            by_flip.append(pair(by_parity))
    return pair(by_flip)


def merge_views(per_view: dict[View, torch.Tensor], model_weights: list[float] | None, mode: str) -> torch.Tensor:
    """Merge per-view, per-model probabilities into one prediction.

    Shape:
        per_view values ``(M, N, K, ...)`` probabilities (``(M, N, K)`` presence scores too); returns
        ``(N, K, ...)``.
    """
    n_models = next(iter(per_view.values())).shape[0]
    weights = torch.tensor(model_weights if model_weights is not None else [1.0] * n_models, dtype=torch.float32)
    terms = {}
    for view, stack in per_view.items():
        stack = stack.float()
        if mode == "gmean":
            stack = torch.log(stack.clamp_min(1e-12))  # a mean of logs: a product of probabilities underflows
        total = stack[0] * weights[0]
        for m in range(1, n_models):  # models in their fixed order
            total = total + stack[m] * weights[m]
        terms[view] = total
    merged = _tree_sum(terms) / (weights.sum() * len(terms))
    return merged.softmax(1) if mode == "gmean" else merged


def predict_views(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batch: torch.Tensor,
    view_list: list[View],
    chunk: int,
    merge: str = "mean",
    model_weights: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and presence scores of a batch merged over views (and models).

    Args:
        forward: Maps an input batch to per-model probabilities ``(M, B, K, h, w)`` and presence scores
            ``(M, B, K)``.
        batch: Input images ``(N, C, H, W)``.
        view_list: The views.
        chunk: Most images (views count as images) per forward pass.
        merge: ``mean`` or ``gmean`` (of the probabilities; presence scores are always averaged).
        model_weights: One weight per model (default: equal).

    Shape:
        Returns ``((N, K, H, W), (N, K))`` float32.
    """
    per_view: dict[View, torch.Tensor] = {}
    presence: dict[View, torch.Tensor] = {}
    for transposed in (False, True):
        group = [v for v in view_list if v.transposes == transposed]
        if not group:
            continue
        stacked = torch.cat([v.augment(batch) for v in group])  # (len(group) * N, C, h, w)
        parts = [forward(part) for part in stacked.split(chunk)]
        outputs = torch.cat([probs for probs, _ in parts], dim=1)  # (M, V*N, K, h, w)
        scores = torch.cat([present for _, present in parts], dim=1)  # (M, V*N, K)
        for i, v in enumerate(group):
            per_view[v] = v.deaugment(outputs[:, i * len(batch) : (i + 1) * len(batch)])
            presence[v] = scores[:, i * len(batch) : (i + 1) * len(batch)]
    return merge_views(per_view, model_weights, merge), merge_views(presence, model_weights, "mean")
