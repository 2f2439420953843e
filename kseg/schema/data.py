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

    csv: str = Field(
        "train.csv",
        description=(
            "the runs table (under `data.root`); `wide`: the class is in the id; `long`: in "
            "`class_column` (none, with two classes: every row is the non-background class, as Airbus's "
            "one row per ship)"
        ),
    )
    form: Literal["wide", "long"] = Field(
        "wide",
        description=(
            "the runs table (under `data.root`); `wide`: the class is in the id; `long`: in "
            "`class_column` (none, with two classes: every row is the non-background class, as Airbus's "
            "one row per ship)"
        ),
    )
    id_column: str = Field(
        "ImageId",
        description=(
            "the runs table (under `data.root`); `wide`: the class is in the id; `long`: in "
            "`class_column` (none, with two classes: every row is the non-background class, as Airbus's "
            "one row per ship)"
        ),
    )
    encoded_column: str = Field(
        "EncodedPixels",
        description=(
            "the runs table (under `data.root`); `wide`: the class is in the id; `long`: in "
            "`class_column` (none, with two classes: every row is the non-background class, as Airbus's "
            "one row per ship)"
        ),
    )
    class_column: str | None = Field(
        None,
        description=(
            "the runs table (under `data.root`); `wide`: the class is in the id; `long`: in "
            "`class_column` (none, with two classes: every row is the non-background class, as Airbus's "
            "one row per ship)"
        ),
    )
    separator: str = Field(
        "_",
        description=(
            "wide ids split at the last separator; classes written by name or by number (`data.classes[n "
            "- index_base]`)"
        ),
    )
    class_key: Literal["name", "index"] = Field(
        "name",
        description=(
            "wide ids split at the last separator; classes written by name or by number (`data.classes[n "
            "- index_base]`)"
        ),
    )
    index_base: int = Field(
        0,
        description=(
            "wide ids split at the last separator; classes written by name or by number (`data.classes[n "
            "- index_base]`)"
        ),
    )
    order: Literal["column", "row"] = Field(
        "column",
        description=(
            "pixel numbering (down columns or along rows) and the first pixel's number; the empty-mask "
            "token besides a blank cell; the class of pixels no run covers"
        ),
    )
    first_index: Literal[0, 1] = Field(
        1,
        description=(
            "pixel numbering (down columns or along rows) and the first pixel's number; the empty-mask "
            "token besides a blank cell; the class of pixels no run covers"
        ),
    )
    empty: Token = Field(
        "",
        description=(
            "pixel numbering (down columns or along rows) and the first pixel's number; the empty-mask "
            "token besides a blank cell; the class of pixels no run covers"
        ),
    )
    background: str | None = Field(None, description="the class of pixels no run covers (unset: the first class)")


class DataConfig(Section):
    """Where the competition's files are and how to read them."""

    root: Path = Field(Path("."), description="the competition's data folder")
    layout: Literal["csv", "glob"] = Field(
        "csv", description="`csv` (id lists and path templates) or `glob` (path patterns); see the data layouts"
    )
    classes: list[str] = Field(min_length=2, max_length=254, description="class names in index order")
    image_size: Size = Field((384, 512), description="training size `[H, W]` (an int means square)")
    ignore_index: int = Field(255, ge=0, le=255, description="label of pixels that are not scored or trained on")
    unknown_labels: Literal["error", "ignore"] = Field(
        "error", description="`ignore` maps unknown mask values / colours to `ignore_index`"
    )
    # classes that may overlap (clouds): one sigmoid channel per class; a mask pixel holds a bitmask (bit k
    # set = class k present, 0 = none), at most 7 classes; no background class
    multilabel: bool = Field(
        False,
        description=(
            "classes may overlap: a mask pixel holds a class bitmask (bit k = class k, 0 = none; at most "
            "7 classes, no background class), one sigmoid per class (see Other competition formats)"
        ),
    )
    # layout: csv -- ids listed in CSV files, paths from templates with {id} (and any other CSV column)
    train_csv: str = Field("train.csv", description="`csv` layout")
    test_csv: str | None = Field("test.csv", description="`csv` layout")
    id_column: str = Field("ImageID", description="`csv` layout")
    image_template: str = Field("images/{id}.png", description="`csv` layout paths")
    mask_template: str = Field("masks/{id}.png", description="`csv` layout paths")
    test_image_template: str | None = Field(
        None, description="`csv` layout: the test images (unset: `data.image_template`)"
    )
    test_mask_template: str | None = Field(
        None, description="the hidden test masks, for scoring a submission locally (`kseg score`)"
    )
    # layout: glob -- files discovered by patterns whose {name} parts match one path segment each
    image_pattern: str | None = Field(None, description="`glob` layout")
    mask_pattern: str | None = Field(None, description="`glob` layout")
    test_image_pattern: str | None = Field(None, description="`glob` layout")
    id_template: str | None = Field(None, description="`glob` layout")
    # masks
    mask_format: Literal["index", "color", "rle"] = Field(
        "index", description="`index`, `color`, or `rle` (masks from a table of runs, below)"
    )
    rle: RleLabelsConfig = Field(default_factory=RleLabelsConfig)  # mask_format: rle
    palette: list[PaletteEntry] | None = Field(
        None, description="`#RRGGBB` or `[r, g, b]`; a class may have a list of colours"
    )
    ignore_colors: list[Color] = Field(
        default_factory=list, description="`#RRGGBB` or `[r, g, b]`; a class may have a list of colours"
    )
    exclude: list[str] = Field(
        default_factory=list,
        description=(
            'glob patterns of files (relative to `data.root`) to leave out, e.g. a held-out tile `["Tile 7/*"]`'
        ),
    )
    scale: float = Field(
        1.0,
        gt=0,
        le=4,
        description="resize every image (and mask) by this factor before cropping, training and inference",
    )
    # input normalisation, per channel, on 0-1 pixel values: fixed mean/std (ImageNet's by default), or each
    # image standardised by its own statistics (per_image: robust to lighting that differs between scenes)
    normalize: Literal["fixed", "per_image"] = Field(
        "fixed", description="`fixed` (`data.mean`/`data.std`) or `per_image` (each image's own channel statistics)"
    )
    mean: list[float] = Field(
        default_factory=lambda: [0.485, 0.456, 0.406],
        description="input normalisation per channel (one per `model.in_channels`)",
    )
    std: list[float] = Field(
        default_factory=lambda: [0.229, 0.224, 0.225],
        description="input normalisation per channel (one per `model.in_channels`)",
    )

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
