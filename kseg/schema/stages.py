"""The sections of the other stages: ``split``, ``tile``, ``audit``, ``infer``, ``pseudo``, ``submission``."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kseg.schema.fields import Section, Size, Token


class SplitConfig(Section):
    """K-fold split of the training images."""

    n_folds: int = Field(5, ge=2)
    seed: int = 42
    group_by: str | None = None
    # a regular expression on the image id whose first group names the image's group: ids that share it stay in
    # one fold ('^(.+)_[^_]+$' keeps <object>_<view> or <patient>_<slice> ids together); with group_by, both hold
    group_pattern: str | None = None
    area_bins: int = Field(3, ge=0, le=10)
    workers: int | None = Field(None, ge=1)
    verify_images: bool = False
    duplicates: bool = False  # keep each duplicate group of 'kseg audit' in one fold

    @field_validator("group_pattern")
    @classmethod
    def _group_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc}); e.g. '^(.+)_[^_]+$'") from None
        if compiled.groups < 1:
            raise ValueError(
                f"{value!r} has no group in parentheses; mark the part that names the group, e.g. '^(.+)_[^_]+$'"
            )
        return value


class TileConfig(Section):
    """`kseg tile`: cutting large georeferenced rasters (and their mask rasters) into tiles."""

    size: int = Field(512, ge=8)  # tile side in image pixels
    stride: int | None = Field(None, ge=1)  # default: the size (no overlap)
    bands: list[int] | None = None  # 1-based band numbers to keep (default: all)
    mask_resampling: Literal["nearest", "mode"] = "mode"  # mask onto the image grid: nearest or majority
    nodata: float | None = None  # image nodata value (default: the raster's own)
    drop_nodata: bool = True  # drop tiles whose pixels are all nodata
    drop_classes: list[int] = Field(default_factory=list)  # drop tiles whose labelled pixels are all these


class AuditConfig(Section):
    """`kseg audit`: perceptual-hash duplicates and the thresholds of what gets flagged."""

    hash: Literal["phash", "dhash", "average_hash", "whash"] = "phash"
    hash_size: int = Field(8, ge=4, le=32)  # bits: hash_size squared
    threshold: int = Field(10, ge=0)  # images whose hashes differ in at most this many bits are near-duplicates
    max_sheets: int = Field(50, ge=0)  # contact sheets written (groups beyond are listed only)
    rare_images: int = Field(5, ge=0)  # a class in fewer training images is flagged rare
    rare_share: float = Field(0.001, ge=0, le=1)  # ... or with a smaller share of the labelled pixels


class InferConfig(Section):
    """Test-time prediction (also how validation images are predicted)."""

    tta: Literal["none", "hflip", "vflip", "flip", "rot90", "d4"] = "d4"
    tta_scales: list[float] = Field(default_factory=lambda: [1.0])
    merge: Literal["mean", "gmean"] = "mean"
    mode: Literal["resize", "tile"] = "resize"
    tile_overlap: float = Field(0.25, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1)  # images per forward pass; default 16 on GPU, 2 on CPU
    folds: list[int] | None = None
    fold_weights: list[float] | None = None
    on_error: Literal["stop", "skip"] = "stop"

    @field_validator("tta_scales")
    @classmethod
    def _scales(cls, value: list[float]) -> list[float]:
        if not value or any(s <= 0 for s in value):
            raise ValueError("needs one or more positive scales, e.g. [0.75, 1.0, 1.25]")
        return value

    @field_validator("fold_weights")
    @classmethod
    def _fold_weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (any(w < 0 for w in value) or sum(value) <= 0):
            raise ValueError("fold weights must be non-negative with a positive sum")
        return value


class PseudoConfig(Section):
    """`kseg pseudo`: pseudo-labels of unlabelled images (the test set by default), and training on them."""

    threshold: float = Field(0.9, ge=0, le=1)  # a pixel keeps its label when the top probability reaches this
    share: float = Field(0.25, gt=0, lt=1)  # share of every training batch given to pseudo-labelled images
    workdir: Path | None = None  # the new run's work folder (default: <workdir>-pseudo)


ID_FIELDS = ("id", "file", "k", "name")  # what submission.id_format can name


class SubmissionConfig(Section):
    """The competition's submission file format."""

    sample: str | None = "sample_submission.csv"
    solution: str | None = None  # the host's truth in the submission's layout (under data.root): kseg score's default
    path: Path = Path("submissions/submission.csv")
    predictions: Path | None = None
    size: Literal["original"] | Size = "original"
    pixel_order: Literal["column", "row"] = "column"
    empty_token: Token = ""
    layout: Literal["wide", "long"] = "wide"  # wide: id and mask; long: image, mask and class columns
    # nonempty: rows of empty masks left out (a missing row is empty); instances: one row per connected
    # instance of each (image, class), one empty row for a pair without any
    rows: Literal["all", "nonempty", "instances"] = "all"
    classes: list[str] | None = None  # the classes that get rows (default: all; in the wide layout the sample's)
    id_format: str | None = None  # wide: the row id ('{id}_{k}'); long: the image column ('{id}')
    class_format: str = "{k}"  # long: the class column ('{k}' index or '{name}')
    # what best epochs, tune, blend, report and score use; instance_fbeta: F-beta over IoU thresholds 0.5-0.95
    metric: Literal["row_dice", "row_iou", "dataset_iou", "instance_fbeta"] = "row_dice"
    beta: float = Field(2.0, gt=0)  # instance_fbeta: recall weighs beta times precision (Airbus: F2)
    check_overlap: bool = True
    require_manifest: bool = True  # submit only predictions kseg infer wrote whole (false: label maps made elsewhere)
    resize_predictions: bool = False  # resize label maps of another size (nearest) instead of refusing them

    @model_validator(mode="after")
    def _id_fields(self) -> SubmissionConfig:
        if self.id_format is None:
            self.id_format = "{id}_{k}" if self.layout == "wide" else "{id}"
        image, klass = _format_fields(self.id_format, "submission.id_format")
        single = self.classes is not None and len(self.classes) == 1
        if self.layout == "wide" and image and not klass and not single:
            raise ValueError(
                f"submission.id_format {self.id_format!r} has no class field, which only works when one class gets "
                "rows: add {k} or {name}, or set submission.classes to that one class"
            )
        if self.layout == "wide" and not image:
            raise ValueError(
                f"submission.id_format {self.id_format!r} must contain both an image field ({{id}} or {{file}}) "
                "and a class field ({k} or {name}), e.g. '{id}_{k}' or '{file}_{name}'"
            )
        if self.layout == "long" and (not image or klass):
            raise ValueError(
                f"submission.id_format {self.id_format!r} names the image column of the long layout: an image "
                "field ({id} or {file}) and no class field (the class has its own column: class_format)"
            )
        if self.metric == "instance_fbeta" and self.rows != "instances":
            raise ValueError(
                "submission.metric instance_fbeta scores instances, one per row: set submission.rows: instances"
            )
        image, klass = _format_fields(self.class_format, "submission.class_format")
        if image or not klass:
            raise ValueError(
                f"submission.class_format {self.class_format!r} must name the class ({{k}} or {{name}}) and "
                "nothing else"
            )
        return self

    @property
    def row_id(self) -> str:
        """``id_format`` with its layout's default filled in."""
        return self.id_format or ("{id}_{k}" if self.layout == "wide" else "{id}")


def _format_fields(value: str, key: str) -> tuple[bool, bool]:
    """Whether a row-id format names the image (``{id}``/``{file}``) and the class (``{k}``/``{name}``)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(
            f"{key} {value!r} is not a format ({exc}); write fields in braces, e.g. '{{id}}_{{k}}'"
        ) from None
    unknown = sorted(fields - set(ID_FIELDS))
    if unknown:
        raise ValueError(
            f"{key} {value!r} has the field {{{unknown[0]}}}; the fields are {{id}} (image id), {{file}} (image "
            "file name), {k} (class index) and {name} (class name)"
        )
    return bool(fields & {"id", "file"}), bool(fields & {"k", "name"})
