"""``kseg blend``: runs trained on the same folds, combined with per-run weights searched on their
out-of-fold (OOF) probabilities, never on the leaderboard.

The weights are searched exhaustively on a grid over the simplex (steps of 0.1 for up to four runs, 0.2
beyond), so every single run is one of the candidates and the chosen blend never scores below the best
run on the data it was searched on. Because that choice is itself fitted to the OOF images, the images
are also split in two halves: weights chosen on one half are scored on the other (and the reverse), next
to the best single run chosen the same way, so the search's own optimism shows. Post-processing is then
tuned on the blended probabilities, as ``kseg tune`` does for one run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kseg.common import Progress
from kseg.config import Config
from kseg.errors import KsegError
from kseg.metrics.scores import class_scores
from kseg.postprocess import OOFBuilder, TuneResult, tune_oof
from kseg.prediction.ensemble import run_config
from kseg.workspace.oof import read_oof, read_oof_presence
from kseg.workspace.pins import pin_run
from kseg.workspace.workdir import ID, WorkDir

MAX_RUNS = 8
BLEND_FORMAT = "kseg-blend"


class BlendError(KsegError):
    """Runs that cannot be blended, or a blend that cannot be used."""


@dataclass
class RunOOF:
    """One run's out-of-fold files, opened (arrays memory-mapped)."""

    path: Path
    cfg: Config
    folds: pd.DataFrame  # ImageID, fold
    probs: dict[int, np.ndarray]  # fold -> (N_f, K, H, W) uint8
    masks: dict[int, np.ndarray]  # fold -> (N_f, H, W)
    ids: dict[int, list[str]]  # fold -> OOF row ids
    presence: dict[int, np.ndarray | None] = field(default_factory=dict)  # fold -> (N_f, K) head scores, if any


def open_run(path: Path) -> RunOOF:
    """A run's folds and OOF files.

    Raises:
        BlendError: The folder is not a trained run, or a fold has no OOF files.
    """
    path = Path(path)
    if path.is_file():
        raise BlendError(f"run {path} is a file, not a folder; give the work folders of trained runs (e.g. ./work)")
    if not path.is_dir():
        raise BlendError(f"run folder {path} does not exist; give the work folders of trained runs")
    work = WorkDir(path)
    try:
        cfg = run_config(path)
    except KsegError as exc:
        raise BlendError(str(exc)) from None
    try:
        folds = work.read_folds()
    except KsegError as exc:
        raise BlendError(f"{exc}") from None
    probs, masks, ids, presence = {}, {}, {}, {}
    for f in sorted(folds["fold"].unique().tolist()):
        try:
            p, m, table = read_oof(work, f)
            presence[f] = read_oof_presence(work, f, tuple(p.shape[:2]))
        except KsegError as exc:
            raise BlendError(
                f"run {path}: {exc}; train the fold again with 'kseg train --fold {f}' (train.save_oof: true)"
            ) from None
        probs[f], masks[f], ids[f] = p, m, table[ID].astype(str).tolist()
    return RunOOF(path, cfg, folds, probs, masks, ids, presence)


def check_compatible(runs: list[RunOOF]) -> None:
    """Runs blend only when they hold the same images in the same folds, for the same classes."""
    if len(runs) < 2:
        raise BlendError("a blend needs at least two runs; give two or more work folders")
    if len(runs) > MAX_RUNS:
        raise BlendError(f"{len(runs)} runs is more than a blend searches ({MAX_RUNS}); leave the weakest out")
    first = runs[0]
    multilabel = [run.path for run in runs if run.cfg.multilabel]
    if multilabel:
        raise BlendError(
            f"run {multilabel[0]} is multilabel (data.multilabel: true), and kseg blend searches weights of "
            "softmax runs only; ensemble multilabel runs' folds with kseg infer instead"
        )
    mine = first.folds.sort_values(ID).reset_index(drop=True)
    for run in runs[1:]:
        if list(run.cfg.data.classes) != list(first.cfg.data.classes):
            raise BlendError(
                f"run {run.path} has classes {run.cfg.data.classes} but {first.path} has {first.cfg.data.classes}; "
                "blend runs of the same competition"
            )
        theirs = run.folds.sort_values(ID).reset_index(drop=True)
        if not mine[ID].equals(theirs[ID]):
            extra = sorted(set(theirs[ID]) ^ set(mine[ID]))
            raise BlendError(
                f"runs {first.path} and {run.path} hold different image ids (e.g. {extra[0] if extra else '?'}); "
                "blend runs trained on the same images"
            )
        if not mine["fold"].equals(theirs["fold"]):
            raise BlendError(
                f"runs {first.path} and {run.path} put images in different folds; train both from the same "
                "folds.csv (same split settings, or copy it) before blending"
            )
        for f, ids in first.ids.items():
            if run.ids.get(f) != ids:
                raise BlendError(
                    f"fold {f}'s out-of-fold rows differ between {first.path} and {run.path}; train that fold again"
                )


def weight_grid(n_runs: int) -> np.ndarray:
    """Every weight vector on the simplex grid (steps of 0.1 up to four runs, 0.2 beyond).

    Shape:
        Returns ``(C, n_runs)``, rows summing to 1.
    """
    steps = 10 if n_runs <= 4 else 5
    rows = [c for c in itertools.product(range(steps + 1), repeat=n_runs) if sum(c) == steps]
    return np.array(rows, dtype=np.float64) / steps


def _image_probs(runs: list[RunOOF], fold: int, i: int, size: tuple[int, int]) -> torch.Tensor:
    """Every run's probabilities of one OOF image at ``size``. Shape: ``(R, K, H, W)`` float32 0-1."""
    out = []
    for run in runs:
        p = torch.from_numpy(np.array(run.probs[fold][i])).float() / 255
        if tuple(p.shape[1:]) != size:
            p = nn.functional.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0]
        out.append(p)
    return torch.stack(out)


def _row_counts(probs: torch.Tensor, grid: torch.Tensor, truth: torch.Tensor, k: int, chunk: int = 16) -> np.ndarray:
    """Pixel counts of one image under each weight vector, ``chunk`` vectors at a time.

    Shape:
        probs ``(R, K, H, W)``, grid ``(C, R)``, truth ``(H, W)`` int64; returns ``(C, 3, K)``
        (intersection, predicted and true pixels per class).
    """
    scored = truth < k
    labels = truth[scored]
    true = torch.bincount(labels, minlength=k)[:k].numpy()
    flat = probs.flatten(2)[:, :, scored.flatten()]  # (R, K, P): only the scored pixels
    out = []
    for first in range(0, len(grid), chunk):
        weights = grid[first : first + chunk]
        predicted = torch.einsum("cr,rkp->ckp", weights, flat).argmax(1)  # (c, P)
        offset = torch.arange(len(weights))[:, None] * k
        pred = torch.bincount((predicted + offset).flatten(), minlength=len(weights) * k).view(-1, k)
        hit = predicted == labels[None]
        inter = torch.bincount((predicted + offset)[hit], minlength=len(weights) * k).view(-1, k)
        out.append(np.stack([inter.numpy(), pred.numpy(), np.broadcast_to(true, (len(weights), k))], axis=1))
    return np.concatenate(out)


@dataclass
class SearchResult:
    """Per-image pixel counts under every weight vector, and what was chosen."""

    grid: np.ndarray  # (C, R)
    counts: np.ndarray  # (N, C, 3, K) intersection, predicted, true pixels of each image under each vector
    ids: list[str]
    folds: np.ndarray
    metric: str = "row_dice"
    best: int = 0
    scored: list[int] | None = None  # the classes the metric averages (default all)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The metric of each weight vector over the images ``rows``. Shape ``(C,)``."""
        c = self.counts[rows]
        per_class = class_scores(c[:, :, 0], c[:, :, 1], c[:, :, 2], self.metric)
        return (per_class if self.scored is None else per_class[:, self.scored]).mean(-1)

    def choose(self, rows: np.ndarray) -> int:
        """The weight vector with the best metric over ``rows`` (ties: the first on the grid)."""
        return int(np.argmax(self.scores(rows)))

    def single(self, run: int) -> int:
        """The grid row that is run ``run`` alone."""
        return int(np.flatnonzero(self.grid[:, run] == 1.0)[0])


def search_weights(
    runs: list[RunOOF],
    metric: str = "row_dice",
    on_progress: Progress | None = None,
    scored: list[int] | None = None,
) -> SearchResult:
    """Score every weight vector of ``weight_grid`` on every OOF image (at the first run's resolution)."""
    grid = weight_grid(len(runs))
    grid_t = torch.from_numpy(grid).float()
    first = runs[0]
    k = first.cfg.n_classes
    total = sum(len(ids) for ids in first.ids.values())
    counts, ids, folds = [], [], []
    for f, fold_ids in first.ids.items():
        size = tuple(first.probs[f].shape[2:])
        for i, image_id in enumerate(fold_ids):
            truth = torch.from_numpy(np.asarray(first.masks[f][i]).astype(np.int64))
            counts.append(_row_counts(_image_probs(runs, f, i, size), grid_t, truth, k))
            ids.append(image_id)
            folds.append(f)
            if on_progress:
                on_progress(len(ids), total)
    result = SearchResult(grid, np.stack(counts), ids, np.array(folds), metric, scored=scored)
    result.best = result.choose(np.arange(len(ids)))
    return result


def blended_statistics(runs: list[RunOOF], weights: np.ndarray) -> OOFBuilder:
    """The blend's OOF statistics (what ``kseg tune`` reads for one run), from its weighted probabilities;
    with presence scores when a run has a presence head (a run without one counts with its masks' maximum,
    as ``BlendPredictor`` counts it)."""
    first = runs[0]
    builder = OOFBuilder(first.cfg.n_classes)
    w = torch.from_numpy(weights).float()
    heads = any(s is not None for run in runs for s in run.presence.values())
    for f, fold_ids in first.ids.items():
        size = tuple(first.probs[f].shape[2:])
        for i, image_id in enumerate(fold_ids):
            probs = _image_probs(runs, f, i, size)
            blended = torch.einsum("r,rkhw->khw", w, probs)
            uint8 = (blended * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            presence = None
            if heads:
                scores = [_presence(run, f, i, probs[r]) for r, run in enumerate(runs)]
                presence = np.einsum("r,rk->k", weights.astype(np.float32), np.stack(scores))
            builder.add(image_id, f, uint8, np.asarray(first.masks[f][i]), presence)
    return builder


def _presence(run: RunOOF, fold: int, i: int, probs: torch.Tensor) -> np.ndarray:
    """A run's presence scores of one OOF image: its head's, or its mask's highest probability per class."""
    scores = run.presence.get(fold)
    return scores[i] if scores is not None else probs.amax((1, 2)).numpy()


@dataclass
class BlendResult:
    """What ``blend_runs`` found and wrote."""

    runs: list[Path]
    weights: list[float]
    run_scores: list[float]  # each run's OOF metric (submission.metric)
    score: float  # the blend's, in-sample
    holdout_blend: float  # weights chosen on one half, scored on the other (mean of both ways)
    holdout_best_run: float  # the best single run chosen on one half, scored on the other
    tuned: TuneResult
    path: Path
    n_images: int
    notes: list[str] = field(default_factory=list)
    metric: str = "row_dice"


def _holdout(search: SearchResult, seed: int) -> tuple[float, float]:
    """(blend, best single run): chosen on one half of the images, scored on the other, both ways."""
    order = np.random.default_rng(seed).permutation(len(search.ids))
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    if not min(len(h) for h in halves):
        return float("nan"), float("nan")
    singles = [search.single(r) for r in range(search.grid.shape[1])]
    blend, single = [], []
    for fit, check in (halves, halves[::-1]):
        on_fit, on_check = search.scores(fit), search.scores(check)
        blend.append(on_check[search.choose(fit)])
        single.append(on_check[max(singles, key=lambda c: on_fit[c])])
    return float(np.mean(blend)), float(np.mean(single))


def blend_runs(cfg: Config, paths: list[Path], seed: int = 0, on_progress: Progress | None = None) -> BlendResult:
    """Search the blend of ``paths`` (work folders of runs trained on the same folds) on their OOF
    probabilities, tune post-processing on it, and write ``blend.json`` in ``cfg.workdir``."""
    if cfg.submission.metric == "instance_fbeta":
        raise BlendError(
            "kseg blend searches weights by pixel counts, which submission.metric instance_fbeta does not use; "
            "ensemble the runs' folds with kseg infer instead"
        )
    resolved = [Path(p).resolve() for p in paths]
    twice = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if twice is not None:
        raise BlendError(f"run {twice} is given twice; give each run once")
    runs = [open_run(Path(p)) for p in paths]
    check_compatible(runs)
    if list(cfg.data.classes) != list(runs[0].cfg.data.classes):
        raise BlendError(
            f"the config's classes {cfg.data.classes} differ from the runs' {runs[0].cfg.data.classes}; "
            "blend with the competition's config"
        )
    search = search_weights(runs, cfg.submission.metric, on_progress, cfg.scored_classes)
    weights = search.grid[search.best]
    holdout_blend, holdout_single = _holdout(search, seed)
    statistics = blended_statistics(runs, weights).build()
    tuned = tune_oof(statistics, list(cfg.data.classes), seed, cfg.submission.metric, cfg.scored_classes)
    everything = search.scores(np.arange(len(search.ids)))
    run_scores = [float(everything[search.single(r)]) for r in range(len(runs))]
    score = float(everything[search.best])
    info = {
        "format": BLEND_FORMAT,
        "version": 1,
        "classes": list(cfg.data.classes),
        "runs": [
            {"path": str(run.path.resolve()), "weight": float(w), "oof": s, "checkpoints": pin_run(run.path)}
            for run, w, s in zip(runs, weights, run_scores, strict=True)
        ],
        "grid_step": float(1 / (10 if len(runs) <= 4 else 5)),
        "images": len(search.ids),
        "blend": {
            "oof": score,
            "oof_tuned": tuned.post.oof_score_after,
            "holdout_blend": holdout_blend,
            "holdout_best_run": holdout_single,
            "holdout_tuned_gain": tuned.post.holdout_gain,
            "seed": seed,
        },
        "postprocess": tuned.post.to_json(),
    }
    path = WorkDir(cfg.workdir).write_blend(info)
    return BlendResult(
        [run.path for run in runs],
        [float(w) for w in weights],
        run_scores,
        score,
        holdout_blend,
        holdout_single,
        tuned,
        path,
        len(search.ids),
        metric=search.metric,
    )
