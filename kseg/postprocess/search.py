"""The post-processing search: each scored class's rule that maximises the OOF metric, exhaustively over
grids that include the identity: (threshold, min area), a mask gate in front of a threshold, or the
presence head's gate in front of a (threshold, min area); the gain is checked on held-out halves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kseg.metrics.scores import class_scores
from kseg.postprocess.oof import OOFSet, class_table
from kseg.postprocess.params import AREA_FRACTIONS, PRESENCE_THRESHOLDS, ClassParams, PostProcess


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
GateFn = Callable[[int, np.ndarray], np.ndarray]  # (class, image rows) -> (P, A) scores of the gated rules
HeadFn = Callable[[int, np.ndarray], np.ndarray]  # (class, image rows) -> (Q, T, A) scores of the head gates
# A rule's grid indices: (threshold, min area); (-1, gate pair, gate area) with a mask gate; (-2, presence
# threshold, threshold, min area) with the presence head's gate.
Choice = tuple[int, ...]


@dataclass(frozen=True)
class Grids:
    """A class's scores over the rules searched: ``pairs`` (threshold x min area) and, where gates are
    searched, ``gates`` (the pairs (gate, mask threshold) of ``gate_pairs`` x gate area) and, where the
    OOF predictions have presence scores, ``heads`` (``PRESENCE_THRESHOLDS`` x threshold x min area)."""

    pairs: GridFn
    gates: GateFn | None = None
    heads: HeadFn | None = None

    def value(self, k: int, rows: np.ndarray, choice: Choice) -> float:
        if len(choice) == 2:
            return float(self.pairs(k, rows)[choice])
        grid = self.gates(k, rows) if len(choice) == 3 else self.heads(k, rows)  # type: ignore[misc]
        return float(grid[choice[1:]])


# A gate is a third parameter: it must beat the best threshold and minimum area by half a row's score at
# least (in-sample), or the simpler rule stays. Chosen on the severstal style's and a Dubai run's held-out
# halves (docs/how-it-works.md): without the margin a gate that gained 0.002 in-sample on Dubai lost 0.001
# on held-out halves; with it that gate is not taken and the severstal style keeps its gates.
GATE_MARGIN = 0.5


def _search(
    grids: Grids, classes: list[int], identity: tuple[int, int], rows: np.ndarray
) -> tuple[dict[int, Choice], dict[int, float], dict[int, float]]:
    """Each class's best rule on the chosen images: its best (threshold, min area) pair, or a gated rule
    (a mask gate, then a head gate) when one scores higher than the rule so far by ``GATE_MARGIN`` rows;
    ties keep the identity.

    Returns:
        ``(choice, score before, score after)`` per class: each class's share of the metric.
    """
    choice: dict[int, Choice] = {}
    before, after = {}, {}
    for k in classes:
        grid = grids.pairs(k, rows)
        t, a = np.unravel_index(np.argmax(grid), grid.shape)
        best: Choice = (int(t), int(a)) if grid[t, a] > grid[identity] else identity
        score = float(grid[best])
        for tag, family in ((-1, grids.gates), (-2, grids.heads)):
            if family is None:
                continue
            gated = family(k, rows)
            top = np.unravel_index(np.argmax(gated), gated.shape)
            if gated[top] > score + GATE_MARGIN / len(rows):
                best, score = (tag, *(int(i) for i in top)), float(gated[top])
        choice[k], before[k], after[k] = best, float(grid[identity]), score
    return choice, before, after


def _score(grids: Grids, rows: np.ndarray, choice: dict[int, Choice]) -> float:
    return float(np.mean([grids.value(k, rows, c) for k, c in choice.items()]))


def gate_pairs(thresholds: np.ndarray) -> np.ndarray:
    """The (gate, mask threshold) index pairs searched: every gate above 0 with every mask threshold at or
    below it. Shape ``(P, 2)``."""
    return np.array([(g, t) for g in range(len(thresholds)) for t in range(g + 1) if thresholds[g] > 0])


def pixel_grids(oof: OOFSet, metric: str, gates: bool = True) -> Grids:
    """Each class's metric for every (threshold, min area) pair and, with ``gates``, every gated rule
    (gate, gate area, mask threshold) from the OOF histograms and, where the OOF predictions have presence
    scores, every head gate (presence threshold, threshold, min area)."""
    pairs = gate_pairs(oof.thresholds)
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the search asks for each class's many times

    def table(k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in tables:
            tables[k] = class_table(oof, k)
        return tables[k]

    def grid_for(k: int, rows: np.ndarray) -> np.ndarray:
        area, inter = table(k)
        return _score_grid(area[rows], inter[rows], oof.truth_area[rows, k], oof.n_pixels[rows], metric)

    def gates_for(k: int, rows: np.ndarray) -> np.ndarray:
        area, inter = table(k)
        kept = gate_keeps(area[rows][:, pairs[:, 0]], oof.n_pixels[rows])  # (N, P, A)
        a = np.where(kept, area[rows][:, pairs[:, 1], None], 0)
        i = np.where(kept, inter[rows][:, pairs[:, 1], None], 0)
        return class_scores(i, a, np.broadcast_to(oof.truth_area[rows, k][:, None, None], a.shape), metric)

    def heads_for(k: int, rows: np.ndarray) -> np.ndarray:
        area, inter = table(k)
        assert oof.presence is not None
        score = oof.presence[rows, k]
        truth, n_pixels = oof.truth_area[rows, k], oof.n_pixels[rows]
        grid = []
        for q in PRESENCE_THRESHOLDS:  # an image below the presence threshold predicts nothing
            kept = (score >= q)[:, None]
            grid.append(_score_grid(area[rows] * kept, inter[rows] * kept, truth, n_pixels, metric))
        return np.stack(grid)

    heads = gates and oof.presence is not None
    return Grids(grid_for, gates_for if gates else None, heads_for if heads else None)


def gate_keeps(strong: np.ndarray, n_pixels: np.ndarray) -> np.ndarray:
    """Which rows a gate keeps, for every gate area: ``strong`` ``(N, P)`` pixels reach the gate, of
    ``n_pixels`` ``(N,)``; returns ``(N, P, A)`` (``ClassParams.gated_out`` on histograms)."""
    minimum = np.maximum(1.0, AREA_FRACTIONS[None, None, :] * n_pixels[:, None, None])
    return strong[:, :, None] >= minimum


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
    class_holdout_gain: dict[str, float] = field(default_factory=dict)  # tuned on one half, scored on the other
    gate_rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows a gate empties: (right, wrong)


def tune_oof(
    oof: OOFSet,
    classes: list[str],
    seed: int = 0,
    metric: str = "row_dice",
    scored: list[int] | None = None,
    gates: bool = True,
) -> TuneResult:
    """``tune`` on statistics already collected (``load_oof``, or a blend's); writes nothing. ``scored``:
    the classes the metric averages (``Config.scored_classes``; default all); the others keep no
    post-processing. ``gates``: search the gated rules too."""
    space = SearchSpace(oof.thresholds, oof.identity, len(oof.ids), list(oof.resolution), oof.multilabel)
    result = tune_grids(pixel_grids(oof, metric, gates), classes, space, seed, metric, scored)
    result.oof = oof
    result.gate_rows = gate_rows(oof, result.post)
    return result


def gate_rows(oof: OOFSet, post: PostProcess) -> dict[str, tuple[int, int]]:
    """Per gated class, the OOF rows its gate empties that its mask rule alone would not: ``(right, wrong)``,
    right where the truth is empty."""
    out = {}
    for name in post.gated:
        k, params = post.classes.index(name), post.params[name]
        area = class_table(oof, k)[0]
        drawn = area[:, oof.level(params.threshold)]
        drawn = np.where(drawn >= params.min_area * oof.n_pixels, drawn, 0)  # what the mask rule keeps
        if params.presence > 0:
            assert oof.presence is not None  # a head gate is only chosen on presence scores
            emptied = (oof.presence[:, k] < params.presence) & (drawn > 0)
        else:
            strong = area[:, oof.level(params.gate)]
            emptied = (strong < np.maximum(1.0, params.gate_area * oof.n_pixels)) & (drawn > 0)
        empty_truth = oof.truth_area[:, k] == 0
        out[name] = (int((emptied & empty_truth).sum()), int((emptied & ~empty_truth).sum()))
    return out


@dataclass(frozen=True)
class SearchSpace:
    """What a post-processing search runs over: the threshold grid (``AREA_FRACTIONS`` for areas), the
    identity's grid indices, the OOF images and their resolution, and the mode."""

    thresholds: np.ndarray
    identity: tuple[int, int]
    n_images: int
    resolution: list[int]
    multilabel: bool

    def params(self, choice: Choice) -> ClassParams:
        """The parameters a grid choice stands for."""
        if len(choice) == 2:
            return ClassParams(float(self.thresholds[choice[0]]), float(AREA_FRACTIONS[choice[1]]))
        if len(choice) == 4:
            return ClassParams(
                float(self.thresholds[choice[2]]),
                float(AREA_FRACTIONS[choice[3]]),
                presence=float(PRESENCE_THRESHOLDS[choice[1]]),
            )
        g, t = gate_pairs(self.thresholds)[choice[1]]
        return ClassParams(
            float(self.thresholds[t]), 0.0, gate=float(self.thresholds[g]), gate_area=float(AREA_FRACTIONS[choice[2]])
        )


def tune_grids(
    grids: Grids | GridFn,
    classes: list[str],
    space: SearchSpace,
    seed: int = 0,
    metric: str = "row_dice",
    scored: list[int] | None = None,
) -> TuneResult:
    """Choose each scored class's rule on its score grids, and score the choice on held-out halves (in all
    and per class); writes nothing."""
    grids = grids if isinstance(grids, Grids) else Grids(grids)
    scored = list(range(len(classes))) if scored is None else scored
    choice, before, after = _search(grids, scored, space.identity, np.arange(space.n_images))
    order = np.random.default_rng(seed).permutation(space.n_images)
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    holdout_before, holdout_after = [], []
    class_gain = {k: 0.0 for k in scored}
    if min(len(h) for h in halves):
        for fit, check in (halves, halves[::-1]):
            tuned = _search(grids, scored, space.identity, fit)[0]
            plain = {k: grids.value(k, check, space.identity) for k in scored}
            held = {k: grids.value(k, check, tuned[k]) for k in scored}
            holdout_before.append(float(np.mean(list(plain.values()))))
            holdout_after.append(float(np.mean(list(held.values()))))
            for k in scored:
                class_gain[k] += (held[k] - plain[k]) / 2
    hb = float(np.mean(holdout_before)) if holdout_before else float("nan")
    ha = float(np.mean(holdout_after)) if holdout_after else float("nan")
    params = {name: space.params(choice.get(k, space.identity)) for k, name in enumerate(classes)}
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
    result = TuneResult(
        post,
        {classes[k]: v for k, v in before.items()},
        {classes[k]: v for k, v in after.items()},
        hb,
        ha,
        None,
        None,
        metric,
    )
    result.class_holdout_gain = {classes[k]: v if holdout_before else float("nan") for k, v in class_gain.items()}
    return result
