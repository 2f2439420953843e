"""Instances and the F-beta metric over IoU thresholds (``submission.metric: instance_fbeta``), as Airbus
ship detection scores: for each (image, class), predicted and true instances are matched at IoU
thresholds 0.50, 0.55, ..., 0.95; at each threshold ``t`` a true instance with a predicted one above
``t`` is a true positive (instances are disjoint, so above 0.5 a match is unique), the other true ones
false negatives, the other predicted ones false positives, and
``F = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)``; the row's score is the mean over thresholds, 1 when
both sides are empty and 0 when only one is. The metric is the mean over rows.

Where instances come from: the rows of a file in the ``instances`` layout (one row per instance), or
the connected components (8-connected) of a class's mask, as in validation and tuning, where touching
instances of one class count as one.
"""

from __future__ import annotations

import cv2
import numpy as np

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of a binary mask: ``(ids (H, W) int32, 0 = none; count)``."""
    count, ids = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return ids, count - 1


def iou_matrix(truth: np.ndarray, n_truth: int, pred: np.ndarray, n_pred: int) -> np.ndarray:
    """IoU of every (true, predicted) instance pair of two instance-id maps (0 = none).

    Shape:
        truth, pred: any equal shapes, int; returns ``(n_truth, n_pred)`` float64.
    """
    t, p = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    joint = np.bincount(t * (n_pred + 1) + p, minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_t, area_p = joint[1:].sum(1), joint[:, 1:].sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def fbeta(iou: np.ndarray, beta: float = 2.0) -> float:
    """One row's F-beta averaged over ``IOU_THRESHOLDS``, from its ``(n_truth, n_pred)`` IoU matrix."""
    n_truth, n_pred = iou.shape
    if n_truth == 0 and n_pred == 0:
        return 1.0
    if n_truth == 0 or n_pred == 0:
        return 0.0
    b2 = beta * beta
    scores = []
    for t in IOU_THRESHOLDS:
        hit = iou > t
        tp = int(hit.any(1).sum())
        fn, fp = n_truth - tp, n_pred - int(hit.any(0).sum())
        scores.append((1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp))
    return float(np.mean(scores))


def mask_fbeta(pred: np.ndarray, truth: np.ndarray, beta: float = 2.0, scored: np.ndarray | None = None) -> float:
    """F-beta of one row from its predicted and true binary masks, instances as connected components;
    pixels outside ``scored`` (the ignore label) belong to neither."""
    if scored is not None:
        pred, truth = pred & scored, truth & scored
    truth_ids, n_truth = components(truth)
    pred_ids, n_pred = components(pred)
    return fbeta(iou_matrix(truth_ids, n_truth, pred_ids, n_pred), beta)
