"""The competition metric and friends.

The default metric (``submission.metric: row_dice``) is the mean over submission rows (one row per image
and class) of the Dice coefficient between the predicted and the true mask of that row, where a row whose
predicted and true masks are both empty scores 1. ``row_iou`` is the same with IoU (an image-level mean
IoU); ``dataset_iou`` pools each class's pixels over all images first. Everything below works from pixel
counts per row, so the same code scores a CSV (``kseg score``) and a validation epoch.
"""

from __future__ import annotations

import numpy as np

from kseg.bits import class_planes, plane_counts


def row_dice(intersection: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice per row: ``2 |P & T| / (|P| + |T|)``, and 1 where both masks are empty.

    Shape:
        All inputs ``(R,)`` pixel counts; returns ``(R,)`` float64.
    """
    intersection, pred, truth = (np.asarray(a, dtype=np.float64) for a in (intersection, pred, truth))
    total = pred + truth
    return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


def row_iou(intersection: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU per row: ``|P & T| / |P | T|``, and 1 where both masks are empty.

    Shape:
        All inputs ``(R,)`` pixel counts; returns ``(R,)`` float64.
    """
    intersection, pred, truth = (np.asarray(a, dtype=np.float64) for a in (intersection, pred, truth))
    union = pred + truth - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


METRICS = ("row_dice", "row_iou", "dataset_iou", "instance_fbeta")  # instance_fbeta: kseg.metrics.instances
METRIC_NAMES = {
    "row_dice": "mean row Dice",
    "row_iou": "mean row IoU",
    "dataset_iou": "dataset mean IoU",
    "instance_fbeta": "mean instance F-beta over IoU 0.5-0.95",
}


def class_scores(intersection: np.ndarray, pred: np.ndarray, truth: np.ndarray, metric: str) -> np.ndarray:
    """Each class's share of the competition metric, from per-row pixel counts reduced over axis 0.

    ``row_dice`` / ``row_iou``: the mean over images of each (image, class) row's Dice / IoU, 1 where both
    masks are empty. ``dataset_iou``: pixels pooled over all images, ``sum |P & T| / sum |P | T|`` per class
    (1 for a class absent from every prediction and truth). The metric is the mean over classes.

    Shape:
        Inputs ``(N, ...)`` pixel counts (rows first); returns ``(...)`` float64.
    """
    if metric == "row_dice":
        return row_dice(intersection, pred, truth).mean(0)
    if metric == "row_iou":
        return row_iou(intersection, pred, truth).mean(0)
    if metric == "dataset_iou":
        inter = np.asarray(intersection, dtype=np.float64).sum(0)
        union = np.asarray(pred, dtype=np.float64).sum(0) + np.asarray(truth, dtype=np.float64).sum(0) - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def metric_score(counts: np.ndarray, metric: str = "row_dice") -> tuple[float, np.ndarray]:
    """The metric over ``(N, 3, K)`` counts (intersection, predicted, true pixels), and per class ``(K,)``.

    No rows score 1 (nothing to get wrong), as an empty submission of an empty test set would."""
    counts = np.ascontiguousarray(counts)  # a class subset (fancy indexing) may come in another memory order,
    if counts.shape[0] == 0:  # and a mean sums in memory order: C order gives summarize's bits
        return 1.0, np.ones(counts.shape[-1])
    per_class = class_scores(counts[:, 0], counts[:, 1], counts[:, 2], metric)
    if metric == "dataset_iou":
        return float(per_class.mean()), per_class
    rows = (row_dice if metric == "row_dice" else row_iou)(counts[:, 0], counts[:, 1], counts[:, 2])
    return float(rows.mean()), per_class  # the flat mean: the same bits as the mean over rows elsewhere


def epoch_score(row: dict) -> float:
    """An epoch's score under the configured metric (``val_score``; histories written before it have
    ``val_dice`` only, which was the metric then)."""
    score = float(row.get("val_score", float("nan")))
    return score if score == score else float(row["val_dice"])


def label_counts(
    pred: np.ndarray,
    truth: np.ndarray,
    n_classes: int,
    ignore_index: int | None = None,
    multilabel: bool = False,
) -> np.ndarray:
    """Per-class ``(intersection, pred area, truth area)`` of one image's label maps.

    Pixels whose truth is ``ignore_index`` (or, multiclass, any value >= ``n_classes``) are not scored.
    ``multilabel``: both maps hold class bitmasks, and a pixel counts for every class it holds.

    Shape:
        pred, truth ``(H, W)``; returns ``(3, n_classes)`` int64.
    """
    if multilabel:
        truth = np.asarray(truth)
        scored = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, bool)
        return plane_counts(class_planes(pred, n_classes, True), class_planes(truth, n_classes, True), scored)
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    scored = truth < n_classes
    if ignore_index is not None:
        scored &= truth != ignore_index
    pred, truth = pred[scored].astype(np.int64), truth[scored].astype(np.int64)
    valid = pred < n_classes
    joint = np.bincount(truth[valid] * n_classes + pred[valid], minlength=n_classes * n_classes)
    confusion = joint.reshape(n_classes, n_classes)
    return np.stack([np.diag(confusion), confusion.sum(0), np.bincount(truth, minlength=n_classes)])


def pixel_metrics(counts: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Pixel accuracy, and per-class precision and recall, pooled over all images.

    Args:
        counts: ``(N, 3, K)``: intersection, predicted and true pixels per image and class (pixels with
            the ignore label are in none of them).

    Returns:
        ``(accuracy, precision (K,), recall (K,))``; a class never predicted has precision 1 if it is
        also never true, else 0 (and the same for recall with the roles swapped).
    """
    inter, pred, true = (np.asarray(counts[:, i], dtype=np.float64).sum(0) for i in range(3))
    accuracy = float(inter.sum() / true.sum()) if true.sum() else float("nan")
    precision = np.where(pred > 0, inter / np.maximum(pred, 1), np.where(true > 0, 0.0, 1.0))
    recall = np.where(true > 0, inter / np.maximum(true, 1), np.where(pred > 0, 0.0, 1.0))
    return accuracy, precision, recall
