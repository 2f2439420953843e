"""The post-processing search: each scored class's (threshold, min area) that maximises the OOF metric,
exhaustively over a grid that includes the identity, with the gain checked on held-out halves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kseg.metrics.scores import class_scores
from kseg.postprocess.oof import OOFSet, class_table
from kseg.postprocess.params import AREA_FRACTIONS, ClassParams, PostProcess


def _score_grid(
    area: np.ndarray, inter: np.ndarray, truth: np.ndarray, n_pixels: np.ndarray, metric: str
) -> np.ndarray:
    """One class's metric for every (threshold, min area) pair.

    Shape:
        area, inter ``(N, T)``; truth, n_pixels ``(N,)``; returns ``(T, A)``.
    """
    minimum = AREA_FRACTIONS[None, None, :] * n_pixels[:, None, None]
    emptied = area[:, :, None] < minimum
    a = np.where(emptied, 0, area[:, :, None])
    i = np.where(emptied, 0, inter[:, :, None])
    return class_scores(i, a, np.broadcast_to(truth[:, None, None], a.shape), metric)


GridFn = Callable[[int, np.ndarray], np.ndarray]  # (class, image rows) -> (T, A) scores of that class


def _search(
    grid_for: GridFn, classes: list[int], identity: tuple[int, int], rows: np.ndarray
) -> tuple[dict[int, tuple[int, int]], dict[int, float], dict[int, float]]:
    """Best (threshold index, area index) per class on the chosen images, ties keeping the identity.

    Returns:
        ``(choice, score before, score after)`` per class: each class's share of the metric.
    """
    choice, before, after = {}, {}, {}
    for k in classes:
        grid = grid_for(k, rows)
        t, a = np.unravel_index(np.argmax(grid), grid.shape)
        best = (int(t), int(a)) if grid[t, a] > grid[identity] else identity
        choice[k], before[k], after[k] = best, float(grid[identity]), float(grid[best])
    return choice, before, after


def _score(grid_for: GridFn, rows: np.ndarray, choice: dict[int, tuple[int, int]]) -> float:
    return float(np.mean([grid_for(k, rows)[t, a] for k, (t, a) in choice.items()]))


def pixel_grids(oof: OOFSet, metric: str) -> GridFn:
    """Each class's metric for every (threshold, min area) pair, from the OOF histograms."""

    def grid_for(k: int, rows: np.ndarray) -> np.ndarray:
        area, inter = class_table(oof, k)
        return _score_grid(area[rows], inter[rows], oof.truth_area[rows, k], oof.n_pixels[rows], metric)

    return grid_for


@dataclass
class TuneResult:
    """What ``tune`` found and wrote."""

    post: PostProcess
    class_before: dict[str, float]
    class_after: dict[str, float]
    holdout_before: float
    holdout_after: float
    path: Path | None  # postprocess.json, once written
    oof: OOFSet | None  # the pixel statistics searched (None for instance tuning)
    metric: str = "row_dice"


def tune_oof(
    oof: OOFSet, classes: list[str], seed: int = 0, metric: str = "row_dice", scored: list[int] | None = None
) -> TuneResult:
    """``tune`` on statistics already collected (``load_oof``, or a blend's); writes nothing. ``scored``:
    the classes the metric averages (``Config.scored_classes``; default all); the others keep no
    post-processing."""
    space = SearchSpace(oof.thresholds, oof.identity, len(oof.ids), list(oof.resolution), oof.multilabel)
    result = tune_grids(pixel_grids(oof, metric), classes, space, seed, metric, scored)
    result.oof = oof
    return result


@dataclass(frozen=True)
class SearchSpace:
    """What a post-processing search runs over: the threshold grid (``AREA_FRACTIONS`` for areas), the
    identity's grid indices, the OOF images and their resolution, and the mode."""

    thresholds: np.ndarray
    identity: tuple[int, int]
    n_images: int
    resolution: list[int]
    multilabel: bool


def tune_grids(
    grid_for: GridFn,
    classes: list[str],
    space: SearchSpace,
    seed: int = 0,
    metric: str = "row_dice",
    scored: list[int] | None = None,
) -> TuneResult:
    """Choose each scored class's (threshold, min area) on its score grids, and score the choice on
    held-out halves; writes nothing."""
    scored = list(range(len(classes))) if scored is None else scored
    choice, before, after = _search(grid_for, scored, space.identity, np.arange(space.n_images))
    order = np.random.default_rng(seed).permutation(space.n_images)
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    holdout_before, holdout_after = [], []
    if min(len(h) for h in halves):
        identity = {k: space.identity for k in scored}
        for fit, check in (halves, halves[::-1]):
            tuned = _search(grid_for, scored, space.identity, fit)[0]
            holdout_before.append(_score(grid_for, check, identity))
            holdout_after.append(_score(grid_for, check, tuned))
    hb = float(np.mean(holdout_before)) if holdout_before else float("nan")
    ha = float(np.mean(holdout_after)) if holdout_after else float("nan")
    params = {}
    for k, name in enumerate(classes):
        t, a = choice.get(k, space.identity)
        params[name] = ClassParams(float(space.thresholds[t]), float(AREA_FRACTIONS[a]))
    post = PostProcess(
        classes,
        params,
        float(np.mean(list(before.values()))),
        float(np.mean(list(after.values()))),
        ha - hb,
        space.n_images,
        space.resolution,
        space.multilabel,
    )
    class_before = {classes[k]: v for k, v in before.items()}
    class_after = {classes[k]: v for k, v in after.items()}
    return TuneResult(post, class_before, class_after, hb, ha, None, None, metric)
