"""Instance rows scored by F-beta over IoU thresholds (``submission.metric: instance_fbeta``), from the runs
of two files: each file row of a grid row (image, class) is one instance; true masks given as label maps
are split into their connected components."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kseg import rle
from kseg.bits import class_mask
from kseg.metrics.instances import components, fbeta, iou_matrix
from kseg.submission.format import SubmissionFormat


def _id_map(runs: pd.DataFrame, size: int) -> tuple[np.ndarray, int]:
    """A flat instance-id map (0 = none) of one grid row's runs, an instance per file row."""
    ids = np.zeros(size, dtype=np.int32)
    if runs.empty:
        return ids, 0
    instance = pd.factorize(runs["row"])[0] + 1
    starts, lengths = runs["start"].to_numpy(np.int64) - 1, runs["length"].to_numpy(np.int64)
    first = np.cumsum(lengths) - lengths  # where each run begins in the concatenation
    positions = np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))
    ids[positions] = np.repeat(instance, lengths)
    return ids, int(instance.max())


def instance_scores(pred: pd.DataFrame, true: pd.DataFrame, fmt: SubmissionFormat, beta: float) -> np.ndarray:
    """F-beta of every grid row from the runs of a submission and of the truth (``row``, ``sample_row``,
    ``start``, ``length``, as ``validate_bytes(keep_runs=True)`` parses them).

    Shape:
        Returns ``(R,)`` float64 for the ``R`` grid rows.
    """
    scores = np.ones(len(fmt.ids))  # both empty
    pred_rows = dict(tuple(pred.groupby("sample_row"))) if len(pred) else {}
    true_rows = dict(tuple(true.groupby("sample_row"))) if len(true) else {}
    sizes = fmt.shapes.prod(1)
    for r in set(pred_rows) | set(true_rows):
        if r not in pred_rows or r not in true_rows:
            scores[r] = 0.0
            continue
        size = int(sizes[fmt.row_image[r]])
        truth_ids, n_truth = _id_map(true_rows[r], size)
        pred_ids, n_pred = _id_map(pred_rows[r], size)
        scores[r] = fbeta(iou_matrix(truth_ids, n_truth, pred_ids, n_pred), beta)
    return scores


def component_runs(truths: list[np.ndarray], fmt: SubmissionFormat, bits: tuple[bool, int]) -> pd.DataFrame:
    """The runs of true label maps as instance rows: each connected component of a grid row's class mask
    is one instance (``bits``: multilabel, ignore index; ignored pixels belong to none)."""
    multilabel, ignore_index = bits
    frames, next_id = [], 0
    for r, (i, k) in enumerate(zip(fmt.row_image.tolist(), fmt.row_class.tolist(), strict=True)):
        truth = truths[i]
        ids, count = components(class_mask(truth, k, multilabel) & (truth != ignore_index))
        if not count:
            continue
        _, start, length, label = rle.runs(ids[None], fmt.order)
        on = label > 0
        frames.append(
            pd.DataFrame(
                {"row": next_id + label[on].astype(np.int64), "start": start[on] + 1, "length": length[on]}
            ).assign(sample_row=r)
        )
        next_id += count + 1
    columns = ["row", "start", "length", "sample_row"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns, dtype=np.int64)
