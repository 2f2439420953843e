"""What a valid submission of this competition looks like, from its sample submission and test set, and
the file's bytes (header, then ``id,rle`` per row).

Each id names a test image and a class through ``submission.id_format`` (``{id}_{k}`` by default: image
id, underscore, class index; ``{file}`` is the image's file name and ``{name}`` the class name, as in
``0011165.jpg_Fish``). Masks are run-length encoded at each test image's original size (or
``submission.size``) with the conventions of ``kseg.rle``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kseg.config import DataConfig, SubmissionConfig
from kseg.data.listing import Records, list_records, read_csv_records, repeats
from kseg.data.reading import ID, image_size
from kseg.errors import DataError, SubmissionError
from kseg.rle import Order


@dataclass
class SubmissionFormat:
    """What a valid submission of this competition looks like.

    The rows are a grid of (image, class) pairs; a file need not list them all (``nonempty``), and in the
    long layout a row is named by two cells, image and class, whose key here is ``"<image>,<class>"``.

    Attributes:
        header: Column names, as in the sample (long layout: image, mask, class).
        ids: Row keys in the sample's order (wide: the id; long: ``grid_key(image, class)``).
        image_ids: Test image ids.
        image_paths: Test image files.
        row_image: Index into ``image_ids`` of each row. Shape ``(R,)``.
        row_class: Class index of each row. Shape ``(R,)``.
        shapes: Required ``(H, W)`` of each test image's masks. Shape ``(n_images, 2)``.
        order: Pixel order of the RLE.
        empty: Token written for an empty mask.
        classes: Class names.
        layout: ``wide`` (id, mask) or ``long`` (image, mask, class).
        nonempty: Rows of empty masks are left out; a missing row is an empty mask.
        instances: One file row per instance of a grid row (several rows may share a key), one empty row
            for a grid row without any.
        cells: Long layout: the image and class cells of each row.
    """

    header: list[str]
    ids: list[str]
    image_ids: list[str]
    image_paths: list[str]
    row_image: np.ndarray
    row_class: np.ndarray
    shapes: np.ndarray
    order: Order
    empty: str
    classes: list[str]
    source: str = "the sample submission"
    layout: str = "wide"
    nonempty: bool = False
    cells: list[tuple[str, str]] | None = None
    instances: bool = False

    def row_index(self) -> dict[str, int]:
        return {row_id: i for i, row_id in enumerate(self.ids)}


def grid_key(image: str, klass: str) -> str:
    """The key of a long-layout row: its image and class cells."""
    return f"{image},{klass}"


def _grid(sub: SubmissionConfig, classes: list[str], test: Records) -> dict[str, tuple[int, int, str, str]]:
    """Every (image, class) row of the competition: key -> (image index, class index, image cell, class cell)."""
    submitted = [classes.index(c) for c in sub.classes] if sub.classes else range(len(classes))
    grid: dict[str, tuple[int, int, str, str]] = {}
    for i, (image_id, image) in enumerate((r[ID], r["image"]) for r in test):
        names = {"id": image_id, "file": Path(image).name}
        for k in submitted:
            if sub.layout == "wide":
                key = cell = sub.row_id.format(**names, k=k, name=classes[k])
                klass = str(k)
            else:
                cell = sub.row_id.format(**names)
                klass = sub.class_format.format(k=k, name=classes[k])
                key = grid_key(cell, klass)
            grid[key] = (i, k, cell, klass)
    if len(grid) != len(test) * len(submitted):
        field = "id_format" if sub.layout == "wide" else "id_format / class_format"
        raise SubmissionError(
            f"submission.{field} {sub.row_id!r} gives the same row to two (image, class) pairs; "
            "make it unambiguous, e.g. '{id}_{k}'"
        )
    return grid


def _read_sample(sample_path: Path | None, width: int) -> tuple[list[str], list[str]] | None:
    """The sample submission's header and first column (``None`` when ``submission.sample`` is null); it
    has at least ``width`` columns."""
    if sample_path is None:
        return None
    if not sample_path.is_file():
        raise SubmissionError(
            f"sample submission {sample_path} does not exist; set submission.sample (relative to data.root), "
            "or null to write every test image and class"
        )
    try:
        header, rows = read_csv_records(sample_path)
    except DataError as exc:
        raise SubmissionError(str(exc)) from None
    if len(header) < width:
        need = "an id and a mask column" if width == 2 else "image, mask and class columns (submission.layout: long)"
        raise SubmissionError(f"{sample_path} has {len(header)} column(s); a sample submission has {need}")
    return header, [row[header[0]] for row in rows]


def _sample_rows(sub: SubmissionConfig, path: Path, firsts: list[str], grid: dict) -> list[str] | None:
    """The sample's own row order where it lists every row (wide layout, all rows); else ``None``, after
    checking that the sample (its first column ``firsts``) names only test images and classes (``path``:
    the sample, for messages)."""
    if sub.layout == "long":
        known = {cell for _, _, cell, _ in grid.values()}
        unknown = [x for x in firsts if x not in known]
        what = f"names no test image under submission.id_format {sub.row_id!r}"
    else:
        unknown = [x for x in firsts if x not in grid]
        what = f"is no test image and class under submission.id_format {sub.row_id!r}"
    if unknown:
        raise SubmissionError(
            f"{path} id {unknown[0]!r} ({len(unknown)} such) {what} and the {len(grid)} rows of the test set; "
            "fix submission.id_format or the test set"
        )
    if sub.layout == "long" or sub.rows == "nonempty":
        return None
    if sub.rows == "instances":  # the sample's order of keys, where it names every one (rows repeat keys)
        keys = list(dict.fromkeys(firsts))
        return keys if len(keys) == len(grid) else None
    again = repeats(firsts)
    if again:
        raise SubmissionError(f"{path} lists id {firsts[again[0]]!r} twice; fix the sample file")
    return list(firsts)


def load_format(data: DataConfig, sub: SubmissionConfig, test: Records | None = None) -> SubmissionFormat:
    """The submission format of a competition (its data and submission sections), from its sample
    submission and test set (``test``: the test set's records, ``list_records(data, "test")`` by default)."""
    test = list_records(data, "test")[1] if test is None else test
    sample_path = data.root / sub.sample if sub.sample is not None else None
    grid = _grid(sub, list(data.classes), test)
    width = 2 if sub.layout == "wide" else 3
    sample = _read_sample(sample_path, width)
    ids = _sample_rows(sub, Path(str(sample_path)), sample[1], grid) if sample is not None else None
    if sample is not None:
        header, source = sample[0], str(sample_path)
    else:
        header = [ID, "EncodedPixels", "ClassId"][:width]
        source = "submission.id_format" if sub.layout == "wide" else "submission.id_format and class_format"
    ids = list(grid) if ids is None else ids
    rows = [grid[x] for x in ids]
    pairs = np.array([(i, k) for i, k, _, _ in rows], dtype=np.int64).reshape(-1, 2)
    paths = [r["image"] for r in test]
    if sub.size == "original":
        with ThreadPoolExecutor(8) as pool:
            shapes = np.array(list(pool.map(lambda p: image_size(Path(p)), paths)), dtype=np.int64)
    else:
        shapes = np.tile(np.array(sub.size, dtype=np.int64), (len(test), 1))
    return SubmissionFormat(
        header=header,
        ids=ids,
        image_ids=[r[ID] for r in test],
        image_paths=paths,
        row_image=pairs[:, 0],
        row_class=pairs[:, 1],
        shapes=shapes.reshape(-1, 2),
        order=sub.pixel_order,
        empty=sub.empty_token,
        classes=list(data.classes),
        source=source,
        layout=sub.layout,
        nonempty=sub.rows == "nonempty",
        instances=sub.rows == "instances",
        cells=[(cell, klass) for _, _, cell, klass in rows] if sub.layout == "long" else None,
    )


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_csv(
    header: list[str], ids: list[str], masks: list[bytes], empty: str = "", classes: list[str] | None = None
) -> bytes:
    """The submission file's bytes: header, then ``id,rle`` per row (``empty`` for an empty mask), or
    ``image,rle,class`` in the long layout (``classes`` given)."""
    empty_b = empty.encode("ascii")
    parts = [(",".join(_csv_field(h) for h in header) + "\n").encode()]
    tails = [b"\n"] * len(ids) if classes is None else [b"," + _csv_field(c).encode() + b"\n" for c in classes]
    for row_id, mask, tail in zip(ids, masks, tails, strict=True):
        parts.append(_csv_field(row_id).encode() + b"," + (mask or empty_b) + tail)
    return b"".join(parts)


def format_instances(fmt: SubmissionFormat, masks: list[list[bytes]]) -> bytes:
    """The file of ``fmt`` in the instances layout: one row per instance mask of each grid row, one empty
    row for a grid row without any."""
    rows = [i for i, found in enumerate(masks) for _ in (found or [b""])]
    flat = [m for found in masks for m in (found or [b""])]
    if fmt.cells is None:
        return format_csv(fmt.header, [fmt.ids[i] for i in rows], flat, fmt.empty)
    images = [fmt.cells[i][0] for i in rows]
    classes = [fmt.cells[i][1] for i in rows]
    return format_csv(fmt.header, images, flat, fmt.empty, classes)


def format_rows(fmt: SubmissionFormat, masks: list[bytes]) -> bytes:
    """The file of ``fmt`` for one encoded mask per grid row: rows of empty masks left out where the layout
    says so, the long layout's image and class cells written apart."""
    keep = [i for i, m in enumerate(masks) if m or not fmt.nonempty]
    if fmt.cells is None:
        return format_csv(fmt.header, [fmt.ids[i] for i in keep], [masks[i] for i in keep], fmt.empty)
    images = [fmt.cells[i][0] for i in keep]
    classes = [fmt.cells[i][1] for i in keep]
    return format_csv(fmt.header, images, [masks[i] for i in keep], fmt.empty, classes)
