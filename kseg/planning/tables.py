"""Tables of a download: which column holds runs, which names images and classes; the runs table's form,
class keys, empty token, overlaps and instance rows; the sample submission's layout and id format.

Images are named in tables by file name (``0011165.jpg``) or by id (``0011165``); ``ImageNames`` holds both
for one split, so each detector asks it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kseg.errors import InitError
from kseg.planning.fingerprint import SampleFinding, TableFinding
from kseg.rle import parse_rows

RUNS = re.compile(r"^\d+(?: +\d+)*$")
ENCODED_WORDS = ("encodedpixels", "encoded", "rle", "pixels", "mask", "segmentation", "annotation", "predict")
CLASS_WORDS = ("classid", "class", "label", "category", "type")
SEPARATORS = ("_", "-", ".", "|", ":", " ")
MAX_CLASSES = 254


@dataclass
class ImageNames:
    """One split's images as tables may name them.

    Attributes:
        files: File name -> image id.
        sizes: Image id -> ``(height, width)``.
    """

    files: dict[str, str]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = set(self.files.values())

    def key_kind(self, values: list[str]) -> str | None:
        """``file`` or ``id`` if nine in ten of ``values`` name images that way, else ``None``."""
        distinct = set(values)
        if not distinct:
            return None
        for kind, known in (("file", self.files.keys()), ("id", self.ids)):
            if sum(v in known for v in distinct) >= 0.9 * len(distinct):
                return kind
        return None

    def id_of(self, key: str) -> str | None:
        return self.files.get(key, key if key in self.ids else None)


def read_csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InitError(f"{path} is not a readable CSV ({exc}); fix or re-download it") from None


def encoded_column(table: pd.DataFrame) -> str | None:
    """The column that holds runs: the one whose filled cells are runs (``start length ...``), or, where no
    cell holds runs (a sample of empty masks), the one whose name says so (``EncodedPixels``, ``rle_mask``)."""
    best, best_share = None, 0.0
    for column in table.columns:
        cells = table[column].head(2000).str.strip()
        filled = cells[cells != ""]
        runs = filled[filled.str.match(RUNS)]
        if len(runs) and (runs.str.count(" ") % 2 == 1).mean() >= 0.9:
            share = len(runs) / len(filled)
            if share >= 0.5 and share > best_share:
                best, best_share = column, share
    if best is not None:
        return best
    for column in table.columns:
        words = re.sub(r"[^a-z]", "", column.lower())
        if any(w in words for w in ENCODED_WORDS):
            return column
    return None


def empty_tokens(cells: pd.Series) -> Counter:
    """Cells that are not runs, counted (``""`` for blank ones)."""
    stripped = cells.str.strip()
    return Counter(stripped[~stripped.str.match(RUNS)].tolist())


def _token(tokens: Counter, where: str) -> str:
    named = [t for t in tokens if t != ""]
    if len(named) > 1:
        shown = ", ".join(repr(t) for t, _ in Counter({t: tokens[t] for t in named}).most_common(3))
        raise InitError(f"{where} holds cells that are neither runs nor one empty token ({shown}); fix those rows")
    return named[0] if named else ""


# ------------------------------------------------------------------------------------------ runs tables


@dataclass
class Runs:
    """A runs table parsed: per row its image id, class cell, first number, last covered number (1-based
    starts as written plus length minus one), and the parsed numbers."""

    image: list[str]
    cell: list[str | None]
    numbers: np.ndarray
    row_of: np.ndarray
    lines: np.ndarray


def id_split(values: list[str], names: ImageNames) -> tuple[str, str, str] | None:
    """How an id column names images: ``("long", kind, "")`` directly, or ``("wide", kind, separator)`` with
    the class after the last separator; ``None`` if it names no images."""
    kind = names.key_kind(values)
    if kind:
        return "long", kind, ""
    for sep in SEPARATORS:
        heads = [v.rpartition(sep)[0] for v in values if sep in v]
        if len(heads) >= 0.9 * len(values):
            kind = names.key_kind(heads)
            if kind:
                return "wide", kind, sep
    return None


def _class_column(table: pd.DataFrame, taken: set[str]) -> str | None:
    rest = [c for c in table.columns if c not in taken and c.lower() != "usage"]
    for column in rest:
        if any(w in re.sub(r"[^a-z]", "", column.lower()) for w in CLASS_WORDS):
            return column
    for column in rest:
        values = set(table[column])
        if 1 < len(values) <= 32 and all(len(v) <= 32 for v in values):
            return column
    return None


def read_runs_table(rel: str, table: pd.DataFrame, column: str, names: ImageNames) -> tuple[TableFinding, Runs] | None:
    """The form, columns, classes, token, overlaps and instance rows of a runs table of ``names``' images;
    ``None`` if no column of the table names those images.

    Raises:
        InitError: Rows that are neither runs nor an empty token, runs with an odd count, or runs past the
            end of every image size.
    """
    for id_column in [c for c in table.columns if c != column]:
        found = id_split(table[id_column].tolist(), names)
        if found:
            break
    else:
        return None
    form, keyed_by, sep = found
    raw = table[id_column].tolist()
    if form == "wide":
        heads = [v.rpartition(sep) for v in raw]
        keys, cells = [h[0] for h in heads], [h[2] for h in heads]
        class_column = None
    else:
        class_column = _class_column(table, {id_column, column})
        keys = raw
        cells = table[class_column].tolist() if class_column else [None] * len(raw)
    finding = TableFinding(
        csv=rel, rows=len(table), form=form, id_column=id_column, encoded_column=column, class_column=class_column,
        separator=sep or "_", keyed_by=keyed_by,
    )  # fmt: skip
    finding.empty = _token(empty_tokens(table[column]), f"{rel} column {column}")
    runs = _parse(rel, table[column].tolist(), finding.empty, column)
    image = [names.id_of(k) or "" for k in keys]
    parsed = Runs(image, cells, runs[0], runs[1], np.arange(len(table)) + 2)
    _classes(finding, [c for c in cells if c is not None])
    _rows(finding, parsed)
    _fits(finding, parsed, names)
    return finding, parsed


def _parse(rel: str, cells: list[str], empty: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    numbers, row_of, bad = parse_rows([c.strip() for c in cells], empty)
    if len(bad):
        line = int(bad[0]) + 2
        raise InitError(
            f"{rel} line {line}, column {column}: {cells[bad[0]][:40]!r} is neither runs nor the empty token; "
            "fix the row"
        )
    odd = np.flatnonzero(np.bincount(row_of, minlength=len(cells)) % 2)
    if len(odd):
        raise InitError(
            f"{rel} line {int(odd[0]) + 2}, column {column}: an odd number of values; each run is 'start length'"
        )
    return numbers, row_of


def _classes(finding: TableFinding, cells: list[str]) -> None:
    """How classes are written, and ``data.classes``: a background where runs leave pixels uncovered."""
    written = list(dict.fromkeys(cells))
    if not written:  # no class column: every row is the one object class
        finding.class_key, finding.written, finding.classes = "name", [], ["background", "foreground"]
        return
    if len(written) > MAX_CLASSES:
        raise InitError(
            f"{finding.csv} names {len(written)} classes, more than kseg can train (254); check that "
            f"{finding.class_column or finding.id_column} holds classes"
        )
    if all(c.strip().isdigit() for c in written):
        numbers = sorted({int(c) for c in written})
        finding.class_key, finding.written = "index", [str(n) for n in numbers]
    else:
        finding.class_key, finding.written = "name", written


def _rows(finding: TableFinding, runs: Runs) -> None:
    """Overlapping classes (multilabel), instance rows, images and empty rows; then ``data.classes``."""
    has_runs = np.bincount(runs.row_of, minlength=len(runs.image)) > 0
    finding.empty_rows = int((~has_runs).sum())
    finding.images = len(set(runs.image))
    per_key = Counter((img, cell) for img, cell, filled in zip(runs.image, runs.cell, has_runs, strict=True) if filled)
    finding.max_rows = max(per_key.values(), default=1)
    finding.instances = finding.max_rows > 1
    by_image: dict[str, list[int]] = {}
    for row, (img, filled) in enumerate(zip(runs.image, has_runs, strict=True)):
        if filled:
            by_image.setdefault(img, []).append(row)
    starts_all, lengths_all = runs.numbers[0::2], runs.numbers[1::2]
    pair_row = runs.row_of[0::2]
    overlaps = 0
    for rows in by_image.values():
        if len({runs.cell[r] for r in rows}) < 2:
            continue
        pick = np.isin(pair_row, rows)
        starts, ends = starts_all[pick], starts_all[pick] + lengths_all[pick]
        cells = np.array([runs.cell[r] for r in pair_row[pick]], dtype=object)
        order = np.argsort(starts, kind="stable")
        starts, ends, cells = starts[order], ends[order], cells[order]
        reach = np.maximum.accumulate(ends)
        if ((starts[1:] < reach[:-1]) & (cells[1:] != cells[:-1])).any():
            overlaps += 1
    finding.overlap_images = overlaps
    finding.multilabel = overlaps > 0
    _data_classes(finding)


def _data_classes(finding: TableFinding) -> None:
    if not finding.written:
        return
    if finding.class_key == "name":
        names = list(finding.written)
        finding.classes = names if finding.multilabel else ["background", *names]
        return
    numbers = [int(n) for n in finding.written]
    low, high = min(numbers), max(numbers)
    if finding.multilabel:
        finding.classes, finding.index_base = [f"class_{n}" for n in range(low, high + 1)], low
    elif low >= 1:  # 1..K: the background is class 0, as written numbers are class indices
        finding.classes, finding.index_base = ["background", *[f"class_{n}" for n in range(1, high + 1)]], 0
    else:  # 0..K-1 name objects: the background goes last
        finding.classes = [*[f"class_{n}" for n in range(high + 1)], "background"]
        finding.index_base, finding.background = 0, "background"


def _fits(finding: TableFinding, runs: Runs, names: ImageNames) -> None:
    """Runs against the image sizes: a run starting at 0 proves 0-based numbering, one ending on the last
    pixel proves 1-based; one past the last pixel fits no image size."""
    starts, lengths = runs.numbers[0::2], runs.numbers[1::2]
    pair_row = runs.row_of[0::2]
    if not len(starts):
        finding.first_evidence = "the table has no runs"
        return
    sizes = np.array([np.prod(names.sizes.get(runs.image[r], (0, 0))) for r in range(len(runs.image))], np.int64)
    last = starts + lengths - 1
    pixels = sizes[pair_row]
    known = pixels > 0
    past = np.flatnonzero(known & (last > pixels))
    if len(past):
        r = int(pair_row[past[0]])
        h, w = names.sizes[runs.image[r]]
        raise InitError(
            f"{finding.csv} line {r + 2}: a run ends at pixel {int(last[past[0]])}, past the {h}x{w} = {h * w} pixels "
            f"of image {runs.image[r]!r}; the table's runs fit no image size: check that it belongs to these images"
        )
    if (starts == 0).any():
        finding.first_index, finding.first_sure = 0, True
        finding.first_evidence = "a run starts at pixel 0, so pixels are numbered from 0"
    elif (known & (last == pixels)).any():
        finding.first_index, finding.first_sure = 1, True
        finding.first_evidence = "a run ends on the last pixel of its image, so pixels are numbered from 1"
    else:
        finding.first_index, finding.first_sure = 1, False
        finding.first_evidence = "no run touches the first or last pixel: numbered from 1, Kaggle's usual (a guess)"


# ----------------------------------------------------------------------------------------- the sample


def read_sample(
    rel: str, table: pd.DataFrame, names: ImageNames, classes: list[str], labels: TableFinding | None
) -> SampleFinding:
    """The submission's layout, id format, submitted classes, rows and empty token, from its sample.

    Args:
        rel: The sample's file.
        table: Its rows.
        names: The test images.
        classes: ``data.classes`` as the labels give them.
        labels: The runs table, if any (its class cells, instance rows and empty token).

    Raises:
        InitError: If the sample names no test image.
    """
    column = encoded_column(table)
    if column is None:
        raise InitError(
            f"{rel} has no column of runs (columns: {', '.join(table.columns)}); is it the sample submission?"
        )
    found = None
    for id_column in [c for c in table.columns if c != column]:
        found = id_split(table[id_column].tolist(), names)
        if found:
            break
    if found is None:
        first = table.iloc[0, 0] if len(table) else "(no rows)"
        raise InitError(
            f"{rel} names no test image (first id {first!r}; {len(names.files)} test images found); check that the "
            "test images are in the download, in a folder whose name says test"
        )
    form, kind, sep = found
    ids = table[id_column].tolist()
    image_field = "{file}" if kind == "file" else "{id}"
    finding = SampleFinding(csv=rel, header=list(table.columns), rows=len(table), layout="wide", id_format=image_field)
    class_column = _class_column(table, {id_column, column}) if form == "long" else None
    if form == "wide":
        keys, suffixes = zip(*[(v.rpartition(sep)[0], v.rpartition(sep)[2]) for v in ids], strict=True)
        finding.id_format, numbered = _class_field(image_field, sep, list(suffixes))
        finding.classes = _submitted(list(dict.fromkeys(suffixes)), numbered, classes, rel, labels)
    elif class_column is not None:
        keys = tuple(ids)
        cells = table[class_column].tolist()
        numbered = all(c.strip().isdigit() for c in cells)
        finding.layout, finding.class_format = "long", "{k}" if numbered else "{name}"
        finding.classes = _submitted(list(dict.fromkeys(cells)), numbered, classes, rel, labels, long=True)
    else:  # one row per image: one class gets rows
        keys = tuple(ids)
        finding.classes = _single_class(classes, labels)
    image_ids = [names.id_of(k) for k in keys]
    finding.images = len({i for i in image_ids if i})
    finding.empty_token = _token(empty_tokens(table[column]), f"{rel} column {column}") or (
        labels.empty if labels else ""
    )
    _rows_mode(finding, Counter(image_ids), labels, classes)
    finding.size_hint = _size_hint(table[column].tolist(), image_ids, names)
    return finding


def _class_field(image_field: str, sep: str, suffixes: list[str]) -> tuple[str, bool]:
    numbered = all(s.strip().isdigit() for s in suffixes)
    return image_field + sep + ("{k}" if numbered else "{name}"), numbered


def _submitted(
    cells: list[str], numbered: bool, classes: list[str], rel: str, labels: TableFinding | None, long: bool = False
) -> list[str] | None:
    """The classes that get rows, by name: the sample's class cells read as class indices or names; in the
    long layout (which exists to leave rows out) and for a table of numbered classes, every object class."""
    if numbered:
        ks = sorted({int(c) for c in cells})
        bad = [k for k in ks if k >= len(classes)]
        if bad:
            raise InitError(
                f"{rel} names class {bad[0]} but the labels hold {len(classes)} classes (0-{len(classes) - 1}); "
                "check the class numbering of the labels and of the sample"
            )
        chosen = [classes[k] for k in ks]
    else:
        unknown = [c for c in cells if c not in classes]
        if unknown:
            raise InitError(
                f"{rel} names class {unknown[0]!r}, which the labels do not ({', '.join(classes)}); name the classes "
                "with --classes as the sample does"
            )
        chosen = [c for c in classes if c in cells]
    numbered_table = labels is not None and labels.written and labels.class_key == "index"
    if (long or numbered_table) and not (labels is not None and labels.multilabel):
        background = labels.background if labels is not None and labels.background else classes[0]
        foreground = [c for c in classes if c != background]
        chosen = sorted(set(chosen) | set(foreground), key=classes.index)  # rows of absent classes may be left out
    return None if chosen == classes else chosen


def _single_class(classes: list[str], labels: TableFinding | None) -> list[str] | None:
    """One row per image: the one object class (class 0 is the background in every layout kseg init writes)."""
    if labels is not None and labels.background:
        return [c for c in classes if c != labels.background][:1]
    return classes[1:2]


def _rows_mode(finding: SampleFinding, per_image: Counter, labels: TableFinding | None, classes: list[str]) -> None:
    counts = Counter(per_image.values())
    finding.rows_per_image = counts.most_common(1)[0][0] if counts else 0
    submitted = len(finding.classes or classes)
    if labels is not None and labels.instances:
        finding.rows_mode = "instances"
        finding.rows_evidence = (
            f"the training table gives one object up to {labels.max_rows} rows of one image and class: one row per "
            "object (an empty row for an image without any)"
        )
    elif finding.layout == "long" and finding.rows_per_image < submitted:
        finding.rows_mode = "nonempty"
        finding.rows_evidence = (
            f"the sample lists {finding.rows_per_image} row(s) per image for {submitted} classes: rows of empty masks "
            "are left out"
        )
    else:
        finding.rows_mode = "all"
        finding.rows_evidence = f"{finding.rows_per_image} row(s) per test image, one per submitted class"


def _size_hint(cells: list[str], image_ids: list[str | None], names: ImageNames) -> str | None:
    """Runs in the sample that end within the first quarter of every image's pixels hint at smaller masks."""
    filled = [
        (c.strip(), i) for c, i in zip(cells, image_ids, strict=True) if c.strip() and RUNS.match(c.strip()) and i
    ]
    if len({c for c, _ in filled}) < 10:  # a placeholder such as "1 1" in every row says nothing
        return None
    ends = []
    for text, image_id in filled:
        values = np.array(text.split(), dtype=np.int64)
        pixels = int(np.prod(names.sizes.get(image_id, (0, 0))))
        if pixels:
            ends.append((values[0::2] + values[1::2] - 1).max() / pixels)
    if ends and max(ends) <= 0.25:
        return (
            f"the sample's runs end within the first {max(ends):.0%} of the test images' pixels: the competition "
            "may ask for smaller masks (submission.size)"
        )
    return None
