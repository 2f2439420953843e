"""Data layouts, image and mask reading, palettes. Two layouts cover what competitions ship (``data.layout``):

- ``csv``: ids listed in ``train.csv`` / ``test.csv`` (column ``data.id_column``); file paths come from
  templates such as ``imgs/imgs/{id}.jpg`` (any other CSV column may be used as ``{column}``).
- ``glob``: image/mask pairs discovered on disk by patterns such as ``{tile}/images/{name}.jpg``; each
  ``{field}`` matches within one path segment, ``*`` matches anything there too. Images and masks are
  paired on their fields; the id joins the fields with ``_`` (or follows ``data.id_template``), and the
  fields become columns usable as ``split.group_by``.

Masks are index masks (one class index per pixel) or colour masks decoded through ``data.palette``. Class
indices at or above the class count, and colours outside the palette, are errors unless
``data.unknown_labels: ignore`` maps them to ``data.ignore_index``."""

from __future__ import annotations

import fnmatch
import functools
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from kseg.common import ID  # re-exported: the id column of every table
from kseg.config import DataConfig
from kseg.data.labels import RleSource, image_keys, make_ref, read_rle_labels
from kseg.errors import DataError

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskSpec:
    """Everything needed to turn a mask file into class indices; small and picklable for workers.

    Attributes:
        format: ``index`` or ``color``.
        n_classes: Number of classes; valid indices are ``0 .. n_classes - 1``.
        ignore_index: Label written for ignored pixels.
        unknown: ``error`` or ``ignore`` for values / colours that map to no class.
        colors: ``(packed_rgb, label)`` pairs for colour masks; label may be ``ignore_index``.
        rle: The runs table, for ``rle`` masks (a mask "path" is then a reference into it).
        multilabel: Mask values are class bitmasks (``data.multilabel``), not class indices.
    """

    format: str
    n_classes: int
    ignore_index: int
    unknown: str
    colors: tuple[tuple[int, int], ...] = ()
    rle: RleSource | None = None
    multilabel: bool = False

    @classmethod
    def from_config(cls, data: DataConfig) -> MaskSpec:
        pairs: list[tuple[int, int]] = []
        if data.palette is not None:
            for k, colours in enumerate(data.palette):
                pairs += [(int(c[1:], 16), k) for c in colours]
        pairs += [(int(c[1:], 16), data.ignore_index) for c in data.ignore_colors]
        rle = RleSource.from_config(data) if data.mask_format == "rle" else None
        return cls(
            data.mask_format,
            len(data.classes),
            data.ignore_index,
            data.unknown_labels,
            tuple(sorted(pairs)),
            rle,
            data.multilabel,
        )

    @property
    def n_values(self) -> int:
        """Mask values that are labels: class indices, or every bitmask of the classes (multilabel)."""
        return 2**self.n_classes if self.multilabel else self.n_classes

    @property
    def marker(self) -> int:
        """A uint8 value that is neither a class nor the ignore index: marks unknown colours."""
        used = set(range(self.n_values)) | {self.ignore_index}
        return max(v for v in range(256) if v not in used)


@functools.lru_cache(maxsize=4)
def _color_lut(spec: MaskSpec) -> np.ndarray:
    # A 2**24 lookup table (16 MiB) turns packed RGB into labels in one gather, ~10x faster than sorting.
    lut = np.full(1 << 24, spec.marker, dtype=np.uint8)
    for key, label in spec.colors:
        lut[key] = label
    return lut


def hex_color(packed: int) -> str:
    return f"#{int(packed):06X}"


def _open(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path and the config's templates") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} {path} cannot be read ({exc}); re-download or replace the file") from None
    return image


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header, without decoding the pixels."""
    if Path(path).suffix == ".npy":  # multiband arrays (H, W, C): the header alone, memory-mapped
        try:
            return tuple(np.load(path, mmap_mode="r").shape[:2])
        except FileNotFoundError:
            raise DataError(f"image {path} does not exist; check the path and the config's templates") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"image {path} cannot be read ({exc}); re-create the file") from None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the path and the config's templates") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image {path} cannot be read ({exc}); re-download or replace the file") from None
    return height, width


def read_image(path: Path) -> np.ndarray:
    """Read an image as RGB. 8-bit images of any mode are converted by Pillow; 16-bit images are scaled to
    8 bits (value / 257, so 65535 -> 255); 32-bit integer or float images are refused (store them as
    ``.npy`` arrays, which are read as they are).

    Shape:
        Returns ``(H, W, 3)`` uint8.
    """
    image = _open(path, "image")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N") or (image.mode == "I" and _is_16_bit(image)):
        gray = np.asarray(image, dtype=np.uint32)
        return np.repeat(((gray + 128) // 257).astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        raise DataError(
            f"image {path} has {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels, which kseg "
            "cannot turn into colours without guessing their range; convert it to 8 or 16 bits, or save the "
            "array as .npy (read as is)"
        )
    return np.asarray(image.convert("RGB"))


def _is_16_bit(image: Image.Image) -> bool:  # Pillow opens 16-bit PNGs as mode "I": values within 16 bits
    lo, hi = np.asarray(image).min(), np.asarray(image).max()
    return 0 <= int(lo) and int(hi) <= 65535


def decode_mask(array: np.ndarray, spec: MaskSpec, path: Path | str = "mask") -> tuple[np.ndarray, dict[int, int]]:
    """Turn raw mask pixels into class indices.

    Args:
        array: Raw pixels: ``(H, W)`` indices or ``(H, W, 3)`` RGB.
        spec: How to decode.
        path: Named in error messages.

    Returns:
        ``(labels, unknown)``: labels ``(H, W)`` uint8 with unknown values set to ``ignore_index``, and
        ``{raw value or packed colour: pixel count}`` of what matched no class.
    """
    if spec.format == "rle":  # decoded from runs: class indices already
        return array, {}
    if spec.format == "index":
        if array.ndim == 3:
            if (
                array.shape[2] >= 3
                and (array[..., 0] == array[..., 1]).all()
                and (array[..., 0] == array[..., 2]).all()
            ):
                array = array[..., 0]
            else:
                raise DataError(
                    f"mask {path} is a colour image but data.mask_format is 'index'; "
                    "set data.mask_format: color and give data.palette"
                )
        bad = (array >= spec.n_values) & (array != spec.ignore_index)
        unknown: dict[int, int] = {}
        if bad.any():
            values, counts = np.unique(array[bad], return_counts=True)
            unknown = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
            array = np.where(bad, spec.ignore_index, array)
        return array.astype(np.uint8, copy=False), unknown
    if array.ndim != 3 or array.shape[2] < 3:
        raise DataError(f"mask {path} has one channel but data.mask_format is 'color'; set data.mask_format: index")
    rgb = array[..., :3]
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    labels = _color_lut(spec)[packed]
    unknown = {}
    miss = labels == spec.marker
    if miss.any():
        values, counts = np.unique(packed[miss], return_counts=True)
        unknown = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        labels[miss] = spec.ignore_index
    return labels, unknown


def describe_unknown(unknown: dict[int, int], spec: MaskSpec, limit: int = 5) -> str:
    """``#000000 (306 px), #123456 (12 px)`` or ``13 (1,204 px)``, largest first."""
    items = sorted(unknown.items(), key=lambda kv: -kv[1])
    name = hex_color if spec.format == "color" else str
    text = ", ".join(f"{name(v)} ({c:,} px)" for v, c in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def unknown_error(path: Path | str, unknown: dict[int, int], spec: MaskSpec) -> DataError:
    if spec.format == "color":
        return DataError(
            f"mask {path} has colours outside data.palette: {describe_unknown(unknown, spec)}; add them to "
            "data.palette or data.ignore_colors, or set data.unknown_labels: ignore"
        )
    return DataError(
        f"mask {path} has values that are no class: {describe_unknown(unknown, spec)} ("
        f"{'class bitmasks are' if spec.multilabel else 'classes are'} 0-{spec.n_values - 1}, ignore index "
        f"{spec.ignore_index}); fix the mask, add classes, set "
        "data.ignore_index, or set data.unknown_labels: ignore"
    )


def read_mask_raw(path: Path, spec: MaskSpec) -> np.ndarray:
    """Raw mask pixels in the form ``decode_mask`` expects (class indices for ``rle`` masks)."""
    if spec.rle is not None:
        return read_rle_labels(str(path), spec.rle)
    image = _open(path, "mask")
    if spec.format == "color":
        return np.asarray(image.convert("RGB"))
    if image.mode in ("L", "P", "I", "I;16", "1"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def read_mask(path: Path, spec: MaskSpec) -> np.ndarray:
    """Read a mask as class indices, raising on unknown values unless the config ignores them.

    Shape:
        Returns ``(H, W)`` uint8.
    """
    labels, unknown = decode_mask(read_mask_raw(path, spec), spec, path)
    if unknown and spec.unknown == "error":
        raise unknown_error(path, unknown, spec)
    return labels if labels.flags.writeable else labels.copy()


# ------------------------------------------------------------------------------------- layouts


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _format(template: str, row: dict, what: str) -> str:
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"data.{what} {template!r} uses {exc} which is neither 'id' nor a column of the CSV; fix the template"
        ) from None


def _read_id_csv(root: Path, name: str, id_column: str) -> pd.DataFrame:
    path = root / name
    if not path.is_file():
        raise DataError(f"{path} does not exist; check data.root ({root}) and the CSV name in the config")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); fix or re-download it") from None
    if id_column not in table.columns:
        raise DataError(f"{path} has no column {id_column!r} (columns: {', '.join(table.columns)}); set data.id_column")
    table = table.rename(columns={id_column: ID})
    _check_unique(table[ID], str(path))
    empty = table[ID].str.strip() == ""
    if empty.any():
        raise DataError(f"{path} has {int(empty.sum())} row(s) with an empty {id_column}; remove them")
    return table


def _check_unique(ids: pd.Series, where: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        shown = ", ".join(map(repr, dup.unique()[:5]))
        raise DataError(f"{where} lists {len(dup)} duplicate id(s): {shown}; each id must appear once")


def _check_exist(paths: pd.Series, what: str, fix: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{what} {missing[0]} does not exist{more}; {fix}")


def _csv_table(data: DataConfig, which: str) -> pd.DataFrame:
    root = data.root
    csv_name = data.train_csv if which == "train" else data.test_csv
    if csv_name is None:
        raise DataError("this config has no test set; set data.test_csv, or pass --images DIR")
    table = _read_id_csv(root, csv_name, data.id_column)
    image_t = data.image_template if which == "train" else (data.test_image_template or data.image_template)
    image_key = "data.test_image_template" if which == "test" and data.test_image_template else "data.image_template"
    mask_t = data.mask_template if which == "train" else data.test_mask_template
    mask_key = "data.mask_template" if which == "train" else "data.test_mask_template"
    if data.mask_format == "rle":
        mask_t = None  # training masks come from the runs table (list_samples); no hidden test masks
    rows = table.to_dict("records")
    table["image"] = [str(root / _format(image_t, {**r, "id": r[ID]}, "image_template")) for r in rows]
    _check_exist(table["image"], "image", f"check data.root and {image_key} ({image_t!r})")
    if mask_t:
        table["mask"] = [str(root / _format(mask_t, {**r, "id": r[ID]}, "mask_template")) for r in rows]
        _check_exist(
            table["mask"], "mask", f"each image needs its mask; check {mask_key or 'data.mask_template'} ({mask_t!r})"
        )
    return table


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


def _discover(root: Path, pattern: str, key: str) -> pd.DataFrame:
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
    return pd.DataFrame(rows, columns=[*names, key])


def _make_ids(table: pd.DataFrame, names: list[str], id_template: str | None) -> pd.Series:
    if id_template:
        raw = [_format(id_template, r, "id_template") for r in table[names].to_dict("records")]
    else:
        raw = table[names].astype(str).agg("_".join, axis=1).tolist() if names else []
    return pd.Series([safe_id(s) for s in raw], index=table.index, dtype=object)


def safe_id(text: str) -> str:
    """The glob layout's id of joined pattern fields: other than ``[A-Za-z0-9._-]`` becomes ``_``."""
    return _SAFE_ID.sub("_", text).strip("_")


def _glob_table(data: DataConfig, which: str) -> pd.DataFrame:
    root = data.root
    if which == "test":
        if not data.test_image_pattern:
            raise DataError("this config has no test set; set data.test_image_pattern, or pass --images DIR")
        images = _discover(root, data.test_image_pattern, "image")
        names = [c for c in images.columns if c != "image"]
        images.insert(0, ID, _make_ids(images, names, data.id_template))
        _check_unique(images[ID], f"data.test_image_pattern {data.test_image_pattern!r}")
        return images
    assert data.image_pattern  # DataConfig requires it for layout: glob
    images = _discover(root, data.image_pattern, "image")
    if data.mask_format == "rle":  # the masks are rows of the runs table (list_samples)
        names = [c for c in images.columns if c != "image"]
        images.insert(0, ID, _make_ids(images, names, data.id_template))
        _check_unique(images[ID], f"data.image_pattern {data.image_pattern!r}")
        return images
    assert data.mask_pattern
    masks = _discover(root, data.mask_pattern, "mask")
    names = [c for c in images.columns if c != "image"]
    mask_names = [c for c in masks.columns if c != "mask"]
    if sorted(names) != sorted(mask_names):
        raise DataError(
            f"data.image_pattern fields {names} differ from data.mask_pattern fields {mask_names}; "
            "use the same {fields} in both so images and masks can be paired"
        )
    if not names:
        raise DataError("data.image_pattern has no {field}; name the varying parts, e.g. '{tile}/images/{name}.jpg'")
    merged = images.merge(masks, on=names, how="outer", indicator=True)
    lonely = merged[merged["_merge"] != "both"]
    if len(lonely):
        first = lonely.iloc[0]
        if first["_merge"] == "left_only":
            message = f"image {first['image']} has no mask matching data.mask_pattern {data.mask_pattern!r}"
        else:
            message = f"mask {first['mask']} has no image matching data.image_pattern {data.image_pattern!r}"
        more = f" ({len(lonely) - 1} more unpaired file(s))" if len(lonely) > 1 else ""
        raise DataError(f"{message}{more}; every image needs exactly one mask")
    table = merged.drop(columns="_merge").reset_index(drop=True)
    table.insert(0, ID, _make_ids(table, names, data.id_template))
    _check_unique(table[ID], f"data.image_pattern {data.image_pattern!r}")
    return table[[ID, "image", "mask", *names]]


def list_samples(data: DataConfig, which: str = "train") -> pd.DataFrame:
    """The table of one split's samples.

    Args:
        data: The data config.
        which: ``train`` or ``test``.

    Returns:
        A DataFrame with columns ``ImageID``, ``image``, ``mask`` (train, and test when hidden test
        masks are configured) and the layout's extra columns (CSV columns or pattern fields).
    """
    if which == "test" and data.layout == "csv" and not data.test_csv:
        raise DataError("this config has no test set; set data.test_csv, or pass --images DIR")
    if not data.root.exists():
        raise DataError(f"data.root {data.root} does not exist; point it at the competition's data folder")
    table = _csv_table(data, which) if data.layout == "csv" else _glob_table(data, which)
    if which == "train" and data.mask_format == "rle":
        table.insert(list(table.columns).index("image") + 1, "mask", _rle_refs(table, data))
    if data.exclude:
        relative = [
            Path(p).relative_to(data.root).as_posix() if Path(p).is_relative_to(data.root) else p
            for p in table["image"]
        ]
        keep = [not any(fnmatch.fnmatch(r, pattern) for pattern in data.exclude) for r in relative]
        table = table[keep]
        if table.empty:
            raise DataError(f"data.exclude {data.exclude} leaves no {which} image; narrow the patterns")
    return table.reset_index(drop=True)


def _rle_refs(table: pd.DataFrame, data: DataConfig) -> list[str]:
    """Each training image's mask reference into the runs table (its size read from the image header)."""
    source = RleSource.from_config(data)
    keys = image_keys([Path(p).name for p in table["image"]], table[ID].tolist(), source)
    sizes = [image_size(Path(p)) for p in table["image"]]
    return [make_ref(source.csv, h, w, key) for (h, w), key in zip(sizes, keys, strict=True)]
