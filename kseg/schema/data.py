"""The ``data`` section: where the competition's files are and how to read them (and runs tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kseg.schema.fields import Color, PaletteEntry, Section, Size, Token

MAX_MULTILABEL = 7  # bitmask classes in a uint8 mask, 255 left for the ignore index


class RleLabelsConfig(Section):
    """Training masks as a table of runs (``data.mask_format: rle``): no mask files.

    ``wide``: one row per image and class, the class in the id (``0011165.jpg_Fish``: the last
    ``separator`` splits image and class). ``long``: the image in ``id_column``, the class in
    ``class_column``; a missing (image, class) row is an empty mask. The image part names an image by its
    file name (``0011165.jpg``) or by its id."""

    csv: str = "train.csv"  # under data.root
    form: Literal["wide", "long"] = "wide"
    id_column: str = "ImageId"
    encoded_column: str = "EncodedPixels"
    class_column: str | None = None  # long form: the row's class (none: every row is the one non-background class)
    separator: str = "_"  # wide form: image + separator + class
    class_key: Literal["name", "index"] = "name"  # a class is written as its name or as a number
    index_base: int = 0  # class_key index: the number written for data.classes[0]
    order: Literal["column", "row"] = "column"  # pixel numbering: down columns (Kaggle's usual) or along rows
    first_index: Literal[0, 1] = 1  # the number of the first pixel
    empty: Token = ""  # the token of an empty mask (besides a blank cell), e.g. "-1"
    background: str | None = None  # the class of pixels no run covers (default: data.classes[0])


class DataConfig(Section):
    """Where the competition's files are and how to read them."""

    root: Path = Path(".")
    layout: Literal["csv", "glob"] = "csv"
    classes: list[str] = Field(min_length=2, max_length=254)
    image_size: Size = (384, 512)
    ignore_index: int = Field(255, ge=0, le=255)
    unknown_labels: Literal["error", "ignore"] = "error"
    # classes that may overlap (clouds): one sigmoid channel per class; a mask pixel holds a bitmask (bit k
    # set = class k present, 0 = none), at most 7 classes; no background class
    multilabel: bool = False
    # layout: csv -- ids listed in CSV files, paths from templates with {id} (and any other CSV column)
    train_csv: str = "train.csv"
    test_csv: str | None = "test.csv"
    id_column: str = "ImageID"
    image_template: str = "images/{id}.png"
    mask_template: str = "masks/{id}.png"
    test_image_template: str | None = None
    test_mask_template: str | None = None
    # layout: glob -- files discovered by patterns whose {name} parts match one path segment each
    image_pattern: str | None = None
    mask_pattern: str | None = None
    test_image_pattern: str | None = None
    id_template: str | None = None
    # masks
    mask_format: Literal["index", "color", "rle"] = "index"
    rle: RleLabelsConfig = Field(default_factory=RleLabelsConfig)  # mask_format: rle
    palette: list[PaletteEntry] | None = None
    ignore_colors: list[Color] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)  # glob patterns (relative to root) of files to leave out
    scale: float = Field(1.0, gt=0, le=4)  # images (and masks) are resized by this factor before anything else
    # input normalisation, per channel, on 0-1 pixel values: fixed mean/std (ImageNet's by default), or each
    # image standardised by its own statistics (per_image: robust to lighting that differs between scenes)
    normalize: Literal["fixed", "per_image"] = "fixed"
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("must be two positive integers [height, width]")
        if value[0] % 32 or value[1] % 32:
            up = [-(-v // 32) * 32 for v in value]
            raise ValueError(f"must be multiples of 32 (the encoders downsample 32x); use {up}")
        return value

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"class names must be unique but {dupes} appear more than once")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        n = len(self.classes)
        if self.ignore_index < n:
            raise ValueError(
                f"ignore_index {self.ignore_index} is a class index (there are {n} classes); "
                "use a value >= the class count, such as 255"
            )
        if self.palette is not None and len(self.palette) != n:
            raise ValueError(f"palette has {len(self.palette)} entries but classes has {n}; give one per class")
        if self.mask_format == "color" and self.palette is None:
            raise ValueError("mask_format 'color' needs a palette: one colour (or list of colours) per class")
        if self.palette is not None:
            seen: dict[str, int] = {}
            for k, colours in enumerate(self.palette):
                for colour in colours:
                    if colour in seen and seen[colour] != k:
                        raise ValueError(f"colour {colour} is given to classes {seen[colour]} and {k}")
                    seen[colour] = k
            both = sorted(set(seen) & set(self.ignore_colors))
            if both:
                raise ValueError(f"colours {both} are both in palette and in ignore_colors")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel")
        if any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        if self.layout == "glob" and not self.image_pattern:
            raise ValueError("layout 'glob' needs image_pattern, e.g. '{tile}/images/{name}.jpg'")
        if self.layout == "glob" and not self.mask_pattern and self.mask_format != "rle":
            raise ValueError("layout 'glob' needs mask_pattern, e.g. '{tile}/masks/{name}.png' (or mask_format: rle)")
        if self.mask_format == "rle":
            self._check_rle()
        if self.multilabel:
            self._check_multilabel()
        return self

    def _check_multilabel(self) -> None:
        n = len(self.classes)
        if n > MAX_MULTILABEL:
            raise ValueError(
                f"multilabel masks are bitmasks of at most {MAX_MULTILABEL} classes in 8 bits but classes has {n}; "
                "merge classes or train several runs on subsets"
            )
        if self.ignore_index < 2**n:
            raise ValueError(
                f"ignore_index {self.ignore_index} is a class bitmask with {n} multilabel classes (0-{2**n - 1}); "
                "use 255"
            )
        if self.mask_format == "color":
            raise ValueError(
                "multilabel classes cannot come from colour masks (a pixel has one colour); use mask_format: rle, "
                "or index masks whose values are bitmasks (bit k = class k)"
            )
        if self.mask_format == "rle" and self.rle.background is not None:
            raise ValueError(
                "rle.background has no meaning with multilabel: true (a pixel no run covers has no class); remove it"
            )

    def _check_rle(self) -> None:
        rle = self.rle
        if rle.form == "long" and not rle.class_column and len(self.classes) != 2:
            raise ValueError(
                "rle.form 'long' needs rle.class_column, the column that holds each row's class (without one, "
                f"every row is of the one class besides the background, which needs 2 classes, not {len(self.classes)})"
            )
        if rle.background is not None and rle.background not in self.classes:
            raise ValueError(f"rle.background {rle.background!r} is not one of classes {self.classes}")
        if rle.class_key == "index" and rle.index_base < 0:
            raise ValueError("rle.index_base must be 0 or more")
