"""Training masks from a table of runs (``data.mask_format: rle``), decoded on the fly, no mask files.

A sample's ``mask`` column holds a reference ``<table>::<H>x<W>::<key>``: the table's path, the image's
size (runs do not carry it) and the image's key in the table. ``read_rle_labels`` turns it into an
``(H, W)`` label map; each process reads the table once (``rle_index``) and keeps its rows by image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kseg.bits import class_planes
from kseg.errors import DataError
from kseg.rle import decode_labels, encode, encode_labels, parse_rows
from kseg.schema import DataConfig

if TYPE_CHECKING:  # pandas is imported where a table is read or made
    import pandas as pd

REF_SEPARATOR = "::"


@dataclass(frozen=True)
class RleSource:
    """How to read one runs table; small, hashable and picklable (it travels with ``MaskSpec``)."""

    csv: str
    form: str
    id_column: str
    encoded_column: str
    class_column: str | None
    separator: str
    class_key: str
    index_base: int
    order: str
    first_index: int
    empty: str
    classes: tuple[str, ...]
    fill: int
    multilabel: bool = False  # classes may overlap: the map holds bitmasks (bit k = class k), fill 0

    @classmethod
    def from_config(cls, data: DataConfig) -> RleSource:
        rle = data.rle
        return cls(
            str(data.root / rle.csv),
            rle.form,
            rle.id_column,
            rle.encoded_column,
            rle.class_column,
            rle.separator,
            rle.class_key,
            rle.index_base,
            rle.order,
            rle.first_index,
            rle.empty,
            tuple(data.classes),
            data.classes.index(rle.background) if rle.background else 0,
            data.multilabel,
        )

    def class_of(self, text: str, where: str) -> int:
        """The class index a cell names (by name or number), or a ``DataError`` naming ``where``."""
        if self.class_key == "name":
            if text in self.classes:
                return self.classes.index(text)
            fix = f"add it to data.classes ({', '.join(self.classes)})"
        else:
            k = int(text) - self.index_base if text.strip().lstrip("-").isdigit() else -1
            if 0 <= k < len(self.classes):
                return k
            last = self.index_base + len(self.classes) - 1
            fix = f"classes are numbered {self.index_base} to {last} (data.rle.index_base)"
        raise DataError(f"{where} names class {text!r}, which is not in the config; {fix}")


@dataclass(frozen=True)
class RleRows:
    """One image's rows of the table: the class, the runs and the table row (1-based, after the header)."""

    classes: tuple[int, ...]
    encoded: tuple[str, ...]
    lines: tuple[int, ...]


def make_ref(table: str, height: int, width: int, key: str) -> str:
    return f"{table}{REF_SEPARATOR}{height}x{width}{REF_SEPARATOR}{key}"


def split_ref(ref: str) -> tuple[str, tuple[int, int], str]:
    """``(table path, (H, W), key)`` of a reference made by ``make_ref``."""
    table, size, key = str(ref).split(REF_SEPARATOR, 2)
    height, width = size.split("x")
    return table, (int(height), int(width)), key


def mask_file(ref: str) -> str:
    """The file a mask reference reads: the table for an RLE reference, else the path itself."""
    return str(ref).split(REF_SEPARATOR, 1)[0]


def _read_table(source: RleSource) -> pd.DataFrame:
    import pandas as pd

    path = Path(source.csv)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check data.root and data.rle.csv")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); fix or re-download it") from None
    needed = [source.id_column, source.encoded_column] + ([source.class_column] if source.class_column else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(table.columns)}); set data.rle.id_column, "
            "encoded_column or class_column"
        )
    if table.empty:
        raise DataError(f"{path} has a header but no rows, so every mask would be background; check the file")
    return table


@functools.lru_cache(maxsize=2)
def rle_index(source: RleSource) -> dict[str, RleRows]:
    """The table's non-empty rows grouped by image key (read once per process)."""
    table = _read_table(source)
    ids = table[source.id_column].tolist()
    encoded = table[source.encoded_column].str.strip().tolist()
    if source.form == "long":  # without a class column every row is the one class besides the background
        k = 1 - source.fill if len(source.classes) == 2 else 0
        only = source.classes[k] if source.class_key == "name" else str(k + source.index_base)
        cells = table[source.class_column].tolist() if source.class_column else [only] * len(ids)
    else:
        cells = [None] * len(ids)
    grouped: dict[str, list[tuple[int, str, int]]] = {}
    for line, (image_id, cell, runs) in enumerate(zip(ids, cells, encoded, strict=True), start=2):
        where = f"{source.csv} line {line} ({source.id_column} {image_id!r})"
        if cell is None:
            image, sep, cell = image_id.rpartition(source.separator)
            if not sep or not image:
                raise DataError(
                    f"{where} has no {source.separator!r} between image and class; set data.rle.separator, "
                    "or data.rle.form: long with data.rle.class_column"
                )
        else:
            image = image_id
        k = source.class_of(cell, where)
        if runs in ("", source.empty):
            grouped.setdefault(image, [])
            continue
        grouped.setdefault(image, []).append((k, runs, line))
    return {
        key: RleRows(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))
        for key, rows in grouped.items()
    }


def _runs(source: RleSource, rows: RleRows, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts (1-based), lengths and classes of one image's rows, each row checked on its own."""
    numbers, row_of, bad = parse_rows(list(rows.encoded))
    column = source.encoded_column
    if len(bad):
        raise DataError(
            f"{source.csv} line {rows.lines[bad[0]]}, column {column}: {rows.encoded[bad[0]][:40]!r} is not "
            "space-separated numbers; fix the row or set data.rle.empty to the table's empty token"
        )
    counts = np.bincount(row_of, minlength=len(rows.lines))
    for r, line in enumerate(rows.lines):
        values = numbers[row_of == r]
        starts, lengths = values[0::2] + (1 - source.first_index), values[1::2]
        if counts[r] % 2 or (lengths < 1).any() or (starts < 1).any():
            problem = "an odd number of values" if counts[r] % 2 else "a start or length out of range"
            raise DataError(f"{source.csv} line {line}, column {column}: {problem}; each run is 'start length'")
        if len(starts) and (starts + lengths - 1).max() > size:
            raise DataError(
                f"{source.csv} line {line}, column {column}: a run ends at pixel {(starts + lengths - 1).max()} "
                f"past the image's {size} pixels; check data.rle.order and data.rle.first_index"
            )
        ends = np.sort(starts) + lengths[np.argsort(starts)]
        if (np.sort(starts)[1:] < ends[:-1]).any():
            raise DataError(f"{source.csv} line {line}, column {column}: runs overlap; each pixel may appear once")
    pair_row = row_of[0::2]
    return numbers[0::2] + (1 - source.first_index), numbers[1::2], np.asarray(rows.classes)[pair_row]


def read_rle_labels(ref: str, source: RleSource) -> np.ndarray:
    """The ``(H, W)`` uint8 label map of a mask reference: pixels no run covers get the background class."""
    _, (height, width), key = split_ref(ref)
    rows = rle_index(source).get(key)
    if rows is None or not rows.encoded:
        return np.full((height, width), source.fill, dtype=np.uint8)
    starts, lengths, classes = _runs(source, rows, height * width)
    try:
        if source.multilabel:
            return _decode_bits(starts, lengths, classes, (height, width), source.order)
        return decode_labels(starts, lengths, classes, (height, width), source.order, source.fill)  # type: ignore[arg-type]
    except ValueError:
        if source.multilabel:
            raise DataError(
                f"{source.csv} lines {', '.join(map(str, rows.lines))} (image {key!r}) give one class the same "
                "pixel twice; keep one row per image and class"
            ) from None
        lines = ", ".join(map(str, rows.lines))
        repeated = [k for k in set(rows.classes) if rows.classes.count(k) > 1]
        if repeated and len(set(rows.classes)) == 1:  # one class's rows cover a pixel twice: a repeated row
            name = source.classes[repeated[0]]
            raise DataError(
                f"{source.csv} lines {lines} (image {key!r}) cover the same pixels of class {name!r} twice; keep "
                "one row per image and class (or one per object, without overlaps)"
            ) from None
        raise DataError(
            f"{source.csv} lines {lines} (image {key!r}) give one pixel two classes; if classes may overlap, set "
            "data.multilabel: true"
        ) from None


def _decode_bits(
    starts: np.ndarray, lengths: np.ndarray, classes: np.ndarray, shape: tuple[int, int], order: str
) -> np.ndarray:
    """A bitmask label map: each class's runs decoded on their own (they may overlap other classes')."""
    out = np.zeros(shape, dtype=np.uint8)
    for k in np.unique(classes):
        mine = classes == k
        plane = decode_labels(starts[mine], lengths[mine], np.ones(int(mine.sum()), np.uint8), shape, order)  # type: ignore[arg-type]
        out |= plane << np.uint8(k)
    return out


def image_keys(names: list[str], ids: list[str], source: RleSource) -> list[str]:
    """Each image's key in the table: its file name, or its id where the table names images by id.

    Raises:
        DataError: If a row of the table names no image (with its line and the fix).
    """
    index = rle_index(source)
    known = set(names) | set(ids)
    stray = [key for key in index if key not in known]
    if stray:
        line = _first_line(source, stray[0])
        raise DataError(
            f"{source.csv} line {line} names image {stray[0]!r}, which is not among the {len(names)} training "
            f"images ({len(stray)} such key(s)); remove those rows, or fix data.image_pattern / data.image_template"
        )
    return [name if name in index else image_id for name, image_id in zip(names, ids, strict=True)]


def _first_line(source: RleSource, key: str) -> int:
    rows = rle_index(source)[key]
    if rows.lines:
        return rows.lines[0]
    table = _read_table(source)  # an image listed with empty rows only: find its first row
    column = table[source.id_column]
    hits = column == key if source.form == "long" else column.str.startswith(key + source.separator)
    return int(np.flatnonzero(hits.to_numpy())[0]) + 2


def _shift(runs: str, first_index: int) -> str:
    if first_index == 1 or not runs:
        return runs
    values = np.array(runs.split(), dtype=np.int64)
    values[0::2] -= 1
    return " ".join(map(str, values))


def rle_table(labels: dict[str, np.ndarray], source: RleSource) -> pd.DataFrame:
    """The runs table of label maps in the source's form (the inverse of ``read_rle_labels``).

    Wide: one row per image and class other than the background (every class when multilabel), empty
    masks as ``source.empty``. Long:
    the non-empty rows only. Classes are written by name or by number as the source says.
    """
    import pandas as pd

    rows = []
    n = len(source.classes)
    for key, label_map in labels.items():
        if source.multilabel:
            planes = class_planes(label_map, n, multilabel=True)
            encoded = [encode(plane, source.order) for plane in planes]  # type: ignore[arg-type]
        else:
            encoded = encode_labels(label_map, n, source.order)  # type: ignore[arg-type]
        for k, name in enumerate(source.classes):
            if k == source.fill and not source.multilabel:
                continue
            cell = name if source.class_key == "name" else str(k + source.index_base)
            runs = _shift(encoded[k], source.first_index)
            if source.form == "wide":
                rows.append(
                    {source.id_column: f"{key}{source.separator}{cell}", source.encoded_column: runs or source.empty}
                )
            elif runs:
                rows.append({source.id_column: key, str(source.class_column): cell, source.encoded_column: runs})
    columns = [source.id_column, source.encoded_column]
    if source.form == "long":
        columns.insert(1, str(source.class_column))
    return pd.DataFrame(rows, columns=columns)
