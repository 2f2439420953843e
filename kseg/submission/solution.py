"""The truth as a Kaggle host holds it: a solution file in the submission's own layout (the sample's id
and mask columns, any other columns besides), and the overlap of two files' runs, row by row.

A ``Usage`` column, as Kaggle's solution files have, splits the score into its ``Public`` and
``Private`` parts and leaves ``Ignored`` rows out of every score.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from kseg.errors import SubmissionError
from kseg.submission.format import SubmissionFormat, format_csv, grid_key
from kseg.submission.validate import validate_bytes

USAGE = "Usage"
IGNORED = "Ignored"


def read_solution(path: Path, fmt: SubmissionFormat, check_overlap: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """The runs of a solution file and each sample row's ``Usage`` (``""`` without that column).

    The file must hold every id of the submission format once, with masks that pass the submission's own
    checks (``validate_bytes``), in any row order.

    Returns:
        ``(runs, usage)``: runs as ``validate_bytes(keep_runs=True)`` parses them (``sample_row``,
        ``start``, ``length``); ``usage`` of shape ``(R,)`` in the sample's row order.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(
            f"solution file {path} does not exist; pass --truth SOLUTION.csv (or a folder of true masks)"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SubmissionError(f"solution file {path} is not a CSV ({reason}); give the solution as a CSV") from None
    absent = [c for c in fmt.header if c not in table.columns]
    if absent:
        raise SubmissionError(
            f"solution file {path} has no column {absent[0]!r} (it has {', '.join(map(repr, table.columns))}); "
            f"a solution is written in the submission's layout: {','.join(fmt.header)}, and Usage if wanted"
        )
    ids = table[fmt.header[0]].tolist()
    masks = [text.encode() for text in table[fmt.header[1]]]
    classes = table[fmt.header[2]].tolist() if fmt.layout == "long" else None
    report = validate_bytes(format_csv(fmt.header, ids, masks, classes=classes), fmt, check_overlap, keep_runs=True)
    if not report.ok:
        raise SubmissionError(
            f"solution file {path} does not fit the submission format ({report.first()}; line numbers count "
            "its rows); write it in the layout of the sample submission"
        )
    usage = np.full(len(fmt.ids), "", dtype=object)
    if USAGE in table.columns:
        index = fmt.row_index()
        keys = ids if classes is None else [grid_key(i, c) for i, c in zip(ids, classes, strict=True)]
        usage[[index[x] for x in keys]] = _usage_values(table[USAGE], path)
        usage = _usage_of_absent_rows(usage, fmt, path)
    assert report.parsed is not None
    return report.parsed, usage


USAGES = ("Public", "Private", IGNORED)


def _usage_values(column: pd.Series, path: Path) -> np.ndarray:
    """``Usage`` cells in Kaggle's spelling (any case); anything else is refused."""
    canonical = {u.lower(): u for u in USAGES}
    cells = column.str.strip()
    unknown = sorted({c for c in cells if c.lower() not in canonical})
    if unknown:
        raise SubmissionError(
            f"solution file {path} has Usage {unknown[0]!r}, which is none of Public, Private and Ignored; fix the "
            "column (or drop it to score every row as one)"
        )
    return np.array([canonical[c.lower()] for c in cells], dtype=object)


def _usage_of_absent_rows(usage: np.ndarray, fmt: SubmissionFormat, path: Path) -> np.ndarray:
    """Rows a solution leaves out (a defects-only solution lists non-empty rows) are empty truth and take
    the Usage of their image's other rows, so the overall score and its parts count the same rows, as
    Kaggle splits a solution by image. An image with no row at all has no part: refused."""
    missing = usage == ""
    if missing.any():
        by_image: dict[int, str] = {}
        for image, value in zip(fmt.row_image[~missing].tolist(), usage[~missing].tolist(), strict=True):
            by_image.setdefault(image, value)
        lost = [i for i in np.unique(fmt.row_image[missing]).tolist() if i not in by_image]
        if lost:
            raise SubmissionError(
                f"solution file {path} has a Usage column but no row of test image {fmt.image_ids[lost[0]]!r} "
                f"({len(lost)} such), so its rows belong to no part; list every image (an empty row will do)"
            )
        usage = usage.copy()
        usage[missing] = [by_image[i] for i in fmt.row_image[missing].tolist()]
    if (usage == IGNORED).all():
        raise SubmissionError(
            f"solution file {path} marks every row Ignored, so nothing is scored; fix its Usage column"
        )
    return usage


def coverage(starts: np.ndarray, stops: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """For disjoint half-open intervals ``[starts, stops)``: a function giving, for each point, how many
    covered positions lie below it (one ``searchsorted`` for any number of points)."""
    by_pos = np.argsort(starts, kind="stable")
    starts, stops = starts[by_pos], stops[by_pos]
    cum = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(stops - starts, out=cum[1:])

    def covered_before(points: np.ndarray) -> np.ndarray:
        j = np.searchsorted(stops, points, side="right")
        partial = np.zeros(len(points), dtype=np.int64)
        inside = j < len(starts)
        partial[inside] = np.clip(points[inside] - starts[j[inside]], 0, None)
        return cum[j] + partial

    return covered_before


def run_overlaps(pred: pd.DataFrame, true: pd.DataFrame, fmt: SubmissionFormat) -> np.ndarray:
    """Intersection, predicted and true pixels of every sample row, from two files' runs.

    Each row's runs are placed at the row's own offset on one line of coordinates, so one ``coverage``
    of the true runs answers every predicted run at once.

    Shape:
        Returns ``(3, R)`` int64 for the ``R`` rows of the sample.
    """
    n = len(fmt.ids)
    sizes = fmt.shapes.prod(1)[fmt.row_image]
    offset = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offset[1:])

    def line(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row = runs["sample_row"].to_numpy()
        length = runs["length"].to_numpy()
        return row, offset[row] + runs["start"].to_numpy() - 1, length

    t_row, t_lo, t_len = line(true)
    p_row, p_lo, p_len = line(pred)
    covered_before = coverage(t_lo, t_lo + t_len)
    hits = covered_before(p_lo + p_len) - covered_before(p_lo)
    inter = np.bincount(p_row, weights=hits, minlength=n)
    pred_px = np.bincount(p_row, weights=p_len, minlength=n)
    true_px = np.bincount(t_row, weights=t_len, minlength=n)
    return np.stack([inter, pred_px, true_px]).astype(np.int64)
