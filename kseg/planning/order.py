"""How a runs table numbers its pixels: down columns or along rows, from 0 or from 1.

With mask files beside the table, the runs of a few images are decoded in each of the four readings and
compared with the masks pixel by pixel: one reading matches, or the two label sources disagree. With the
table alone, the reading is chosen by the shapes the runs draw (objects are compact in the right order
and smeared into stripes in the other, unless the images are square, where the wrong order is a
transpose) and by how well the decoded outlines follow the image's own edges.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kseg.errors import InitError
from kseg.planning.fingerprint import TableFinding
from kseg.planning.tables import ImageNames, Runs

SAMPLED = 16  # images decoded to decide
SURE_SHAPES = 1.3  # the wrong order's outlines are at least this much longer
SURE_EDGES = 1.15  # the right order's outlines sit on image edges at least this much more strongly
DISAGREE = 0.01  # share of object pixels the best reading may miss before the sources disagree


def coverage(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], order: str, first: int) -> np.ndarray:
    """Pixels covered by runs (which may overlap) in one reading.

    Shape:
        Returns ``(H, W)`` bool.
    """
    height, width = shape
    size = height * width
    begin = np.clip(starts - first, 0, size)
    end = np.clip(begin + lengths, 0, size)
    marks = np.zeros(size + 1, np.int64)
    np.add.at(marks, begin, 1)
    np.add.at(marks, end, -1)
    flat = np.cumsum(marks[:-1]) > 0
    return flat.reshape(width, height).T if order == "column" else flat.reshape(height, width)


def _sampled(runs: Runs, names: ImageNames) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, int]]]:
    """The images with the most runs (``SAMPLED``), each with all its runs and its size."""
    pair_row = runs.row_of[0::2]
    image_of_pair = np.array([runs.image[r] for r in pair_row], dtype=object)
    counts: dict[str, int] = {}
    for image_id in image_of_pair:
        counts[image_id] = counts.get(image_id, 0) + 1
    chosen = sorted((i for i in counts if i in names.sizes), key=lambda i: (-counts[i], i))[:SAMPLED]
    out = []
    for image_id in sorted(chosen):
        pick = image_of_pair == image_id
        out.append((image_id, runs.numbers[0::2][pick], runs.numbers[1::2][pick], names.sizes[image_id]))
    return out


def against_masks(
    finding: TableFinding, runs: Runs, names: ImageNames, foreground: Callable[[str], np.ndarray | None], masks: str
) -> None:
    """Decide order and first index by decoding the runs against the masks' object pixels.

    Args:
        finding: The table (its order and first index are set).
        runs: Its parsed rows.
        names: The training images.
        foreground: Image id -> the mask's object pixels (``(H, W)`` bool), or ``None`` for an image without
            a mask.
        masks: The masks' pattern, named in messages.

    Raises:
        InitError: If no reading matches the masks.
    """
    sampled = _sampled(runs, names)
    firsts = (finding.first_index,) if finding.first_sure else (1, 0)
    readings = [(order, first) for order in ("column", "row") for first in firsts]
    missed = dict.fromkeys(readings, 0)
    objects, used = 0, 0
    for image_id, starts, lengths, shape in sampled:
        truth = foreground(image_id)
        if truth is None or truth.shape != shape:
            continue
        used += 1
        objects += int(truth.sum())
        for order, first in readings:
            missed[(order, first)] += int((coverage(starts, lengths, shape, order, first) != truth).sum())
    if not used:
        return
    ranked = sorted(readings, key=lambda r: missed[r])
    (order, first), runner_up = ranked[0], ranked[1]
    if missed[(order, first)] > DISAGREE * max(objects, 1):
        raise InitError(
            f"{finding.csv} and the masks ({masks}) disagree: the closest reading of the runs ({order}-major from "
            f"{first}) misses {missed[(order, first)]:,} of {objects:,} object pixels over {used} images; keep one "
            "label source (move the other out of the folder)"
        )
    finding.order, finding.first_index = order, first
    finding.order_sure = finding.first_sure = True
    finding.verified, finding.mismatch = True, missed[(order, first)]
    exact = "to the pixel" if missed[(order, first)] == 0 else f"but for {missed[(order, first)]:,} pixels"
    finding.order_evidence = (
        f"decoded against {used} mask files: {order}-major from {first} matches {exact} (next best, "
        f"{runner_up[0]}-major from {runner_up[1]}: {missed[runner_up]:,} pixels differ)"
    )
    finding.first_evidence = finding.order_evidence


def outline(plane: np.ndarray) -> int:
    """Boundary length of a mask: neighbouring pixel pairs that differ."""
    return int((plane[1:] != plane[:-1]).sum() + (plane[:, 1:] != plane[:, :-1]).sum())


def edge_strength(plane: np.ndarray, gray: np.ndarray) -> float:
    """Mean image gradient across the mask's boundary (high when the outline follows image edges)."""
    vertical = plane[1:] != plane[:-1]
    horizontal = plane[:, 1:] != plane[:, :-1]
    steps = [np.abs(gray[1:] - gray[:-1])[vertical], np.abs(gray[:, 1:] - gray[:, :-1])[horizontal]]
    values = np.concatenate(steps)
    return float(values.mean()) if len(values) else 0.0


def from_shapes(
    finding: TableFinding, runs: Runs, names: ImageNames, image: Callable[[str], np.ndarray | None]
) -> None:
    """Decide the order from the table alone: outline lengths (non-square images) and image edges.

    Args:
        finding: The table (its order and evidence are set).
        runs: Its parsed rows.
        names: The training images.
        image: Image id -> the image as grey values (``(H, W)`` float), or ``None``.
    """
    sampled = _sampled(runs, names)
    first = finding.first_index
    lengths = {"column": 0, "row": 0}
    edges = {"column": 0.0, "row": 0.0}
    square = all(shape[0] == shape[1] for _, _, _, shape in sampled)
    for image_id, starts, runs_len, shape in sampled:
        planes = {order: coverage(starts, runs_len, shape, order, first) for order in lengths}
        gray = image(image_id)
        for order, plane in planes.items():
            lengths[order] += outline(plane)
            if gray is not None and gray.shape == shape:
                edges[order] += edge_strength(plane, gray)
    if not sampled:
        finding.order_evidence = "the table has no runs: column-major, Kaggle's usual (a guess)"
        return
    by_shape = max(lengths, key=lambda o: -lengths[o])
    shape_ratio = max(lengths.values()) / max(min(lengths.values()), 1)
    by_edges = max(edges, key=lambda o: edges[o])
    edge_ratio = max(edges.values()) / max(min(edges.values()), 1e-9)
    n = len(sampled)
    if not square and shape_ratio >= SURE_SHAPES and (by_edges == by_shape or edge_ratio < SURE_EDGES):
        finding.order, finding.order_sure = by_shape, True
        finding.order_evidence = (
            f"the runs of {n} images draw compact shapes {by_shape}-major (outlines {shape_ratio:.1f}x longer the "
            f"other way)"
        )
    elif edge_ratio >= SURE_EDGES and (square or by_shape == by_edges):
        finding.order, finding.order_sure = by_edges, True
        finding.order_evidence = (
            f"decoded {by_edges}-major, the outlines of {n} images follow the image edges {edge_ratio:.2f}x more "
            "strongly than the other way"
        )
    else:
        finding.order, finding.order_sure = by_shape if not square else "column", False
        finding.order_evidence = (
            f"the shapes leave the order open (outlines {shape_ratio:.2f}x, edges {edge_ratio:.2f}x over {n} images): "
            f"{finding.order}-major is a guess"
        )
