"""The samples of a data layout as plain records (one ``dict`` of strings per sample), without pandas: the
commands that only check or score a submission list the test images without paying for pandas' import
(``kseg.data.reading.list_samples`` makes the DataFrame the training side works with).

Two layouts (``data.layout``): ``csv`` lists ids in ``train.csv`` / ``test.csv`` and builds paths from
templates; ``glob`` discovers image (and mask) files by patterns such as ``{tile}/images/{name}.jpg`` and
pairs them on their fields."""

from __future__ import annotations

import csv
import fnmatch
import re
import string
from collections.abc import Sequence
from pathlib import Path

from kseg.common import ID
from kseg.config import DataConfig
from kseg.errors import DataError

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")

Records = list[dict[str, str]]


def _format(template: str, row: dict, what: str) -> str:
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"data.{what} {template!r} uses {exc} which is neither 'id' nor a column of the CSV; fix the template"
        ) from None


def read_csv_records(path: Path) -> tuple[list[str], Records]:
    """A CSV file's header and rows, every cell a string (blank lines skipped, a UTF-8 byte-order mark
    dropped), as ``pandas.read_csv(dtype=str, keep_default_na=False)`` reads it.

    Raises:
        DataError: The file cannot be read as a CSV table.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            lines = [row for row in csv.reader(handle) if row]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); fix or re-download it") from None
    if not lines:
        raise DataError(f"{path} is not a readable CSV (it is empty); fix or re-download it")
    header = lines[0]
    long = next((i for i, row in enumerate(lines[1:]) if len(row) > len(header)), None)
    if long is not None:
        raise DataError(
            f"{path} is not a readable CSV (line {long + 2} has {len(lines[long + 1])} fields, the header "
            f"{len(header)}); fix or re-download it"
        )
    return header, [dict(zip(header, row + [""] * (len(header) - len(row)), strict=True)) for row in lines[1:]]


def _read_id_csv(root: Path, name: str, id_column: str) -> tuple[list[str], Records]:
    path = root / name
    if not path.is_file():
        raise DataError(f"{path} does not exist; check data.root ({root}) and the CSV name in the config")
    header, rows = read_csv_records(path)
    if id_column not in header:
        raise DataError(f"{path} has no column {id_column!r} (columns: {', '.join(header)}); set data.id_column")
    columns = [ID if c == id_column else c for c in header]
    rows = [{(ID if k == id_column else k): v for k, v in row.items()} for row in rows]
    check_unique([r[ID] for r in rows], str(path))
    empty = sum(1 for r in rows if not r[ID].strip())
    if empty:
        raise DataError(f"{path} has {empty} row(s) with an empty {id_column}; remove them")
    return columns, rows


def repeats(ids: Sequence[str]) -> list[int]:
    """The positions whose id an earlier position already has."""
    seen: set[str] = set()
    again = []
    for position, x in enumerate(ids):
        if x in seen:
            again.append(position)
        seen.add(x)
    return again


def check_unique(ids: list[str], where: str) -> None:
    """Refuse ids that repeat (``where`` names their source)."""
    again = repeats(ids)
    if again:
        shown = ", ".join(map(repr, list(dict.fromkeys(ids[i] for i in again))[:5]))
        raise DataError(f"{where} lists {len(again)} duplicate id(s): {shown}; each id must appear once")


def _check_exist(paths: list[str], what: str, fix: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{what} {missing[0]} does not exist{more}; {fix}")


def _csv_records(data: DataConfig, which: str) -> tuple[list[str], Records]:
    root = data.root
    csv_name = data.train_csv if which == "train" else data.test_csv
    if csv_name is None:
        raise DataError("this config has no test set; set data.test_csv, or pass --images DIR")
    columns, rows = _read_id_csv(root, csv_name, data.id_column)
    image_t = data.image_template if which == "train" else (data.test_image_template or data.image_template)
    image_key = "data.test_image_template" if which == "test" and data.test_image_template else "data.image_template"
    mask_t = data.mask_template if which == "train" else data.test_mask_template
    mask_key = "data.mask_template" if which == "train" else "data.test_mask_template"
    if data.mask_format == "rle":
        mask_t = None  # training masks come from the runs table (list_samples); no hidden test masks
    images = [str(root / _format(image_t, {**r, "id": r[ID]}, "image_template")) for r in rows]
    _check_exist(images, "image", f"check data.root and {image_key} ({image_t!r})")
    for row, image in zip(rows, images, strict=True):
        row["image"] = image
    columns.append("image")
    if mask_t:
        masks = [str(root / _format(mask_t, {**r, "id": r[ID]}, "mask_template")) for r in rows]
        _check_exist(masks, "mask", f"each image needs its mask; check {mask_key or 'data.mask_template'} ({mask_t!r})")
        for row, mask in zip(rows, masks, strict=True):
            row["mask"] = mask
        columns.append("mask")
    return columns, rows


def _pattern_regex(pattern: str) -> tuple[re.Pattern, str, list[str]]:
    """``{tile}/images/{name}.jpg`` -> (regex with named groups, glob ``*/images/*.jpg``, [tile, name])."""
    regex, glob, names = "", "", []
    for literal, name, _, _ in string.Formatter().parse(pattern):
        for chunk in re.split(r"(\*)", literal):
            if chunk == "*":
                regex += "[^/]*"
                glob += "*"
            elif chunk:
                regex += re.escape(chunk)
                glob += re.sub(r"([\[\]?])", r"[\1]", chunk)
        if name:
            if not name.isidentifier() or name in names:
                raise DataError(f"pattern {pattern!r}: field {{{name}}} must be a unique name like {{tile}}")
            names.append(name)
            regex += f"(?P<{name}>[^/]+?)"
            glob += "*"
    return re.compile(regex + "$"), glob, names


def _discover(root: Path, pattern: str, key: str) -> tuple[list[str], Records]:
    """The files a pattern matches: their fields and path (``key``), sorted by path."""
    regex, glob, names = _pattern_regex(pattern)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder; point data.root at the data set")
    rows = []
    for path in sorted(root.glob(glob)):
        match = regex.match(path.relative_to(root).as_posix())
        if match and path.is_file():
            rows.append({**match.groupdict(), key: str(path)})
    if not rows:
        raise DataError(f"data.{key}_pattern {pattern!r} matches no file under {root}; fix the pattern or data.root")
    return names, rows


def _make_ids(rows: Records, names: list[str], id_template: str | None) -> list[str]:
    if id_template:
        raw = [_format(id_template, {n: r[n] for n in names}, "id_template") for r in rows]
    else:
        raw = ["_".join(r[n] for n in names) for r in rows] if names else ["" for _ in rows]
    return [safe_id(s) for s in raw]


def safe_id(text: str) -> str:
    """The glob layout's id of joined pattern fields: other than ``[A-Za-z0-9._-]`` becomes ``_``."""
    return _SAFE_ID.sub("_", text).strip("_")


def _with_ids(rows: Records, names: list[str], data: DataConfig, where: str) -> Records:
    ids = _make_ids(rows, names, data.id_template)
    check_unique(ids, where)
    return [{ID: i, **r} for i, r in zip(ids, rows, strict=True)]


def _glob_records(data: DataConfig, which: str) -> tuple[list[str], Records]:
    root = data.root
    if which == "test":
        if not data.test_image_pattern:
            raise DataError("this config has no test set; set data.test_image_pattern, or pass --images DIR")
        names, images = _discover(root, data.test_image_pattern, "image")
        where = f"data.test_image_pattern {data.test_image_pattern!r}"
        return [ID, *names, "image"], _with_ids(images, names, data, where)
    assert data.image_pattern  # DataConfig requires it for layout: glob
    names, images = _discover(root, data.image_pattern, "image")
    where = f"data.image_pattern {data.image_pattern!r}"
    if data.mask_format == "rle":  # the masks are rows of the runs table (list_samples)
        return [ID, *names, "image"], _with_ids(images, names, data, where)
    assert data.mask_pattern
    mask_names, masks = _discover(root, data.mask_pattern, "mask")
    if sorted(names) != sorted(mask_names):
        raise DataError(
            f"data.image_pattern fields {names} differ from data.mask_pattern fields {mask_names}; "
            "use the same {fields} in both so images and masks can be paired"
        )
    if not names:
        raise DataError("data.image_pattern has no {field}; name the varying parts, e.g. '{tile}/images/{name}.jpg'")
    return [ID, "image", "mask", *names], _with_ids(_pair(images, masks, names, data), names, data, where)


def _pair(images: Records, masks: Records, names: list[str], data: DataConfig) -> Records:
    """Images and masks joined on their fields, in the order of the fields' values; every image needs
    exactly one mask and every mask one image."""
    by_key = {tuple(m[n] for n in names): m for m in masks}
    keys = {tuple(i[n] for n in names) for i in images}
    lonely = [f"image {i['image']} has no mask matching data.mask_pattern {data.mask_pattern!r}"
              for i in images if tuple(i[n] for n in names) not in by_key]  # fmt: skip
    lonely += [f"mask {m['mask']} has no image matching data.image_pattern {data.image_pattern!r}"
               for m in masks if tuple(m[n] for n in names) not in keys]  # fmt: skip
    if lonely:
        more = f" ({len(lonely) - 1} more unpaired file(s))" if len(lonely) > 1 else ""
        raise DataError(f"{lonely[0]}{more}; every image needs exactly one mask")
    pairs = [{**i, "mask": by_key[tuple(i[n] for n in names)]["mask"]} for i in images]
    return sorted(pairs, key=lambda r: tuple(r[n] for n in names))


def list_records(data: DataConfig, which: str = "train") -> tuple[list[str], Records]:
    """The samples of one split as records, and their columns in order: ``ImageID``, ``image``, ``mask``
    (train, and test when hidden test masks are configured) and the layout's extra columns (CSV columns
    or pattern fields), after ``data.exclude``. Masks of the ``rle`` format are added by ``list_samples``."""
    if which == "test" and data.layout == "csv" and not data.test_csv:
        raise DataError("this config has no test set; set data.test_csv, or pass --images DIR")
    if not data.root.exists():
        raise DataError(f"data.root {data.root} does not exist; point it at the competition's data folder")
    columns, rows = _csv_records(data, which) if data.layout == "csv" else _glob_records(data, which)
    if data.exclude:
        kept = []
        for row in rows:
            image = Path(row["image"])
            relative = image.relative_to(data.root).as_posix() if image.is_relative_to(data.root) else row["image"]
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in data.exclude):
                kept.append(row)
        rows = kept
        if not rows:
            raise DataError(f"data.exclude {data.exclude} leaves no {which} image; narrow the patterns")
    return columns, rows
