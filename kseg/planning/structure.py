"""The data as a whole: class shares and presence, image groups that must stay in one fold, duplicates."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from kseg.planning.fingerprint import GroupCandidate, MaskFinding, TableFinding
from kseg.planning.tables import Runs

STEM_SEPARATORS = ("_", "-")


def mask_class_counts(records: list[dict[str, Any]], finding: MaskFinding) -> tuple[list[int], list[int]]:
    """Pixels and images of each class, from the masks' histograms."""
    n = len(finding.classes)
    pixels, images = np.zeros(n, np.int64), np.zeros(n, np.int64)
    lookup = _class_lookup(finding)
    for record in records:
        pairs = record.get("values") if finding.kind == "index" else record.get("colors") or _gray_colors(record)
        present = np.zeros(n, bool)
        for value, count in pairs or []:
            k = lookup.get(int(value))
            if k is not None:
                pixels[k] += count
                present[k] = True
        images += present
    return pixels.tolist(), images.tolist()


def _gray_colors(record: dict[str, Any]) -> list[list[int]]:
    return [[(v << 16) | (v << 8) | v if v <= 255 else 0xFFFFFF, c] for v, c in record.get("values", [])]


def _class_lookup(finding: MaskFinding) -> dict[int, int]:
    if finding.kind == "index":
        return {k: k for k in range(len(finding.classes))}
    return {int(colour[1:], 16): k for k, colour in enumerate(finding.palette or [])}


def table_class_counts(
    finding: TableFinding, runs: Runs, sizes: dict[str, tuple[int, int]], image_ids: list[str]
) -> tuple[list[int], list[int]]:
    """Pixels and images of each class from the runs' lengths (no decoding); the background gets the
    pixels no run covers."""
    classes = finding.classes
    pixels = np.zeros(len(classes), np.int64)
    present: list[set[str]] = [set() for _ in classes]
    lengths = runs.numbers[1::2]
    per_row = np.bincount(runs.row_of[0::2], weights=lengths, minlength=len(runs.image)).astype(np.int64)
    for row, (image_id, cell) in enumerate(zip(runs.image, runs.cell, strict=True)):
        if per_row[row] == 0:
            continue
        k = class_index(finding, cell)
        pixels[k] += per_row[row]
        present[k].add(image_id)
    if not finding.multilabel:
        background = classes.index(finding.background) if finding.background else 0
        total = sum(int(np.prod(sizes[i])) for i in image_ids if i in sizes)
        pixels[background] = max(total - int(pixels.sum()), 0)
        present[background] = set(image_ids)
    return pixels.tolist(), [len(s) for s in present]


def class_index(finding: TableFinding, cell: str | None) -> int:
    """The class index of a table's class cell (no cell: the one object class)."""
    if cell is None:
        return 1
    if finding.class_key == "index":
        return int(cell) - finding.index_base
    return finding.classes.index(cell)


def field_groups(fields: dict[str, list[str]]) -> list[GroupCandidate]:
    """Folder levels of the pattern (Dubai's tiles): each a group candidate when it groups images."""
    out = []
    n = len(fields.get("name", []))
    for name, values in fields.items():
        if name == "name":
            continue
        sizes = Counter(values)
        if 2 <= len(sizes) < n:
            top, size = sizes.most_common(1)[0]
            out.append(GroupCandidate("field", name, len(sizes), size, f"{top!r}: {size} images"))
    return out


def stem_groups(ids: list[str]) -> list[GroupCandidate]:
    """Ids that share a stem (``<object>_<view>``, ``<patient>_<slice>``): a group candidate when most ids
    share their stem with others and there are several stems."""
    n = len(ids)
    for sep in STEM_SEPARATORS:
        if sum(sep in i for i in ids) < 0.9 * n:
            continue
        stems = Counter(i.rpartition(sep)[0] for i in ids if sep in i)
        shared = sum(size for size in stems.values() if size >= 2)
        if 2 <= len(stems) <= n / 2 and shared >= 0.8 * n:
            top, size = stems.most_common(1)[0]
            escaped = "\\" + sep if sep == "-" else sep
            regex = f"^(.+){escaped}[^{escaped}]+$"
            return [GroupCandidate("stem", regex, len(stems), size, f"{top!r}: {size} images")]
    return []
