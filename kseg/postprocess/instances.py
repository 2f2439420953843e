"""The post-processing search under ``submission.metric: instance_fbeta``: for each scored class, every
OOF image's instance F-beta at every (threshold, min area) pair, instances as the connected components
of the thresholded class mask and of the truth. A row emptied by the minimum area scores 1 when its
truth is empty and 0 otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kseg.bits import class_mask
from kseg.common import Progress
from kseg.metrics.instances import components, fbeta, iou_matrix
from kseg.postprocess.oof import OOFBuilder, OOFRun, read_oof_images
from kseg.postprocess.params import AREA_FRACTIONS, PostProcess, threshold_grid
from kseg.postprocess.search import SearchSpace


def _image_grid(
    probs: np.ndarray, truth: np.ndarray, k: int, levels: np.ndarray, multilabel: bool, beta: float
) -> np.ndarray:
    """One image's ``(T, A)`` F-beta of class ``k`` under every threshold level and minimum area."""
    n_classes = len(probs)
    scored = truth < (2**n_classes if multilabel else n_classes)  # the rest is the ignore index
    truth_ids, n_truth = components(class_mask(truth, k, multilabel) & scored)
    mine = probs[k] if multilabel else np.where(probs.argmax(0) == k, probs[k], -1)
    grid = np.empty((len(levels), len(AREA_FRACTIONS)))
    for t, level in enumerate(levels):
        pred = (mine >= level) & scored
        pred_ids, n_pred = components(pred)
        score = fbeta(iou_matrix(truth_ids, n_truth, pred_ids, n_pred), beta)
        emptied = int(pred.sum()) < AREA_FRACTIONS * int(scored.sum())
        grid[t] = np.where(emptied, float(n_truth == 0), score)
    return grid


@dataclass
class InstanceGrids:
    """Every OOF image's F-beta grid ``(N, T, A)`` per scored class, with the images' ids and folds."""

    grids: dict[int, np.ndarray]
    ids: list[str]
    folds: np.ndarray
    space: SearchSpace

    def grid_for(self, k: int, rows: np.ndarray) -> np.ndarray:
        """Class ``k``'s mean F-beta over the images ``rows``, for every (threshold, min area)."""
        return self.grids[k][rows].mean(0)

    def image_scores(self, post: PostProcess | None) -> np.ndarray:
        """Each image's F-beta per scored class under ``post`` (None: no post-processing). Shape ``(N, S)``."""
        columns = []
        for k, grid in self.grids.items():
            t, a = self.space.identity
            params = post.params.get(post.classes[k]) if post is not None else None
            if params is not None:
                t = int(np.argmin(np.abs(self.space.thresholds - params.threshold))) if params.threshold else t
                a = int(np.argmin(np.abs(AREA_FRACTIONS - params.min_area)))
            columns.append(grid[:, t, a])
        return np.stack(columns, axis=1) if columns else np.ones((len(self.ids), 0))


def instance_grids(
    run: OOFRun, beta: float, on_progress: Progress | None = None, pixels: OOFBuilder | None = None
) -> InstanceGrids:
    """Each scored class's F-beta grid (``beta``: ``submission.beta``) over the OOF images of ``run``, and
    the space it was searched in; ``pixels`` also collects the images' pixel statistics in the same pass
    (``kseg report`` needs both)."""
    multilabel = run.multilabel
    thresholds, identity = threshold_grid(multilabel)
    levels = np.minimum(np.ceil(thresholds * 255 - 1e-6).astype(int), 255)
    per_class: dict[int, list[np.ndarray]] = {k: [] for k in run.scored_classes}
    resolution, ids, folds = [0, 0], [], []
    for image_id, fold, probs, truth, presence in read_oof_images(run.workdir, run.n_classes, on_progress):
        probs, truth = np.asarray(probs).astype(np.int16), np.asarray(truth)
        resolution = [int(probs.shape[1]), int(probs.shape[2])]
        if pixels is not None:
            pixels.add(image_id, fold, probs.astype(np.uint8), truth, presence)
        ids.append(image_id)
        folds.append(fold)
        for k in per_class:
            per_class[k].append(_image_grid(probs, truth, k, levels, multilabel, beta))
    grids = {k: np.stack(v) for k, v in per_class.items()}  # (N, T, A)
    space = SearchSpace(thresholds, identity, len(ids), resolution, multilabel)
    return InstanceGrids(grids, ids, np.array(folds), space)
