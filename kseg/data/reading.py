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

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from kseg.common import ID  # re-exported: the id column of every table
from kseg.config import DataConfig
from kseg.data.labels import RleSource, image_keys, make_ref, read_rle_labels
from kseg.data.listing import list_records
from kseg.errors import DataError

if TYPE_CHECKING:  # pandas is imported where a DataFrame is made: listing the test set needs none
    import pandas as pd


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


def list_samples(data: DataConfig, which: str = "train") -> pd.DataFrame:
    """The table of one split's samples (``kseg.data.listing.list_records`` as a DataFrame).

    Args:
        data: The data config.
        which: ``train`` or ``test``.

    Returns:
        A DataFrame with columns ``ImageID``, ``image``, ``mask`` (train, and test when hidden test
        masks are configured) and the layout's extra columns (CSV columns or pattern fields).
    """
    import pandas as pd

    columns, rows = list_records(data, which)
    table = pd.DataFrame(rows, columns=columns)
    if which == "train" and data.mask_format == "rle":
        table.insert(columns.index("image") + 1, "mask", _rle_refs(table, data))
    return table


def _rle_refs(table: pd.DataFrame, data: DataConfig) -> list[str]:
    """Each training image's mask reference into the runs table (its size read from the image header)."""
    source = RleSource.from_config(data)
    keys = image_keys([Path(p).name for p in table["image"]], table[ID].tolist(), source)
    sizes = [image_size(Path(p)) for p in table["image"]]
    return [make_ref(source.csv, h, w, key) for (h, w), key in zip(sizes, keys, strict=True)]
