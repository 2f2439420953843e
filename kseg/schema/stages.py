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

    n_folds: int = Field(5, ge=2, description="K folds")
    seed: int = Field(42, description="K folds")
    group_by: str | None = Field(None, description="a CSV column or pattern field whose groups stay in one fold")
    # a regular expression on the image id whose first group names the image's group: ids that share it stay in
    # one fold ('^(.+)_[^_]+$' keeps <object>_<view> or <patient>_<slice> ids together); with group_by, both hold
    group_pattern: str | None = Field(
        None,
        description=(
            "a regular expression on the image id whose first group names its group (`'^(.+)_[^_]+$'`: "
            "the views of one object, `<object>_<view>`, or the slices of one patient stay in one fold); "
            "with `group_by`, both hold"
        ),
    )
    area_bins: int = Field(
        3, ge=0, le=10, description="area-share bins per class in the stratification (0: presence only)"
    )
    workers: int | None = Field(None, ge=1, description="processes for the mask scan (unset: all cores)")
    verify_images: bool = Field(False, description="also decode every image during the scan (finds truncated JPEGs)")
    duplicates: bool = Field(False, description="keep each duplicate group of the last `kseg audit` in one fold")

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

    size: int = Field(512, ge=8, description="tile side and step in image pixels")
    stride: int | None = Field(None, ge=1, description="tile side and step in image pixels (unset: size)")
    bands: list[int] | None = Field(None, description="1-based band numbers to keep (unset: all)")
    mask_resampling: Literal["nearest", "mode"] = Field(
        "mode", description="mask onto the image grid: `mode` (majority) or `nearest`"
    )
    nodata: float | None = Field(None, description="image value that marks pixels without data (unset: the raster's)")
    drop_nodata: bool = Field(
        True, description="drop all-nodata tiles; drop tiles whose labelled pixels are all in these classes"
    )
    drop_classes: list[int] = Field(
        default_factory=list,
        description="drop all-nodata tiles; drop tiles whose labelled pixels are all in these classes",
    )


class AuditConfig(Section):
    """`kseg audit`: perceptual-hash duplicates and the thresholds of what gets flagged."""

    hash: Literal["phash", "dhash", "average_hash", "whash"] = Field(
        "phash",
        description="perceptual hash (`phash`, `dhash`, `average_hash`, `whash`) and its side (bits = side squared)",
    )
    hash_size: int = Field(
        8,
        ge=4,
        le=32,
        description="perceptual hash (`phash`, `dhash`, `average_hash`, `whash`) and its side (bits = side squared)",
    )
    threshold: int = Field(10, ge=0, description="hashes at most this many bits apart are near-duplicates")
    max_sheets: int = Field(
        50, ge=0, description="contact sheets written (further groups are listed in the report only)"
    )
    rare_images: int = Field(
        5, ge=0, description="a class in fewer training images, or with a smaller pixel share, is flagged rare"
    )
    rare_share: float = Field(
        0.001,
        ge=0,
        le=1,
        description="a class in fewer training images, or with a smaller pixel share, is flagged rare",
    )


class InferConfig(Section):
    """Test-time prediction (also how validation images are predicted)."""

    tta: Literal["none", "hflip", "vflip", "flip", "rot90", "d4"] = Field(
        "d4", description="views used by `kseg infer --tta`: `none`, `hflip`, `vflip`, `flip`, `rot90`, `d4`"
    )
    tta_scales: list[float] = Field(
        default_factory=lambda: [1.0], description="extra TTA scales; `mean` or `gmean` of probabilities"
    )
    merge: Literal["mean", "gmean"] = Field("mean", description="extra TTA scales; `mean` or `gmean` of probabilities")
    mode: Literal["resize", "tile"] = Field(
        "resize",
        description="how validation and test images are predicted; images per forward pass (16 on GPU, 2 on CPU)",
    )
    tile_overlap: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="how validation and test images are predicted; images per forward pass (16 on GPU, 2 on CPU)",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "how validation and test images are predicted; images per forward pass (16 on GPU, 2 on CPU) (unset: auto)"
        ),
    )
    folds: list[int] | None = Field(None, description="which folds to ensemble, and their weights (unset: all trained)")
    fold_weights: list[float] | None = Field(
        None, description="which folds to ensemble, and their weights (unset: equal)"
    )
    on_error: Literal["stop", "skip"] = Field("stop", description="`skip` leaves unreadable images out (listed)")

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

    threshold: float = Field(
        0.9,
        ge=0,
        le=1,
        description=(
            "`kseg pseudo` keeps a pixel's label when the top probability reaches this (0-1); others are ignored"
        ),
    )
    share: float = Field(0.25, gt=0, lt=1, description="share of every training batch given to pseudo-labelled images")
    workdir: Path | None = Field(None, description="the pseudo-labelled run's work folder (unset: <workdir>-pseudo)")


ID_FIELDS = ("id", "file", "k", "name")  # what submission.id_format can name


class SubmissionConfig(Section):
    """The competition's submission file format."""

    sample: str | None = Field(
        "sample_submission.csv",
        description="the competition's sample (relative to `data.root`); `null`: every test image x class",
    )
    solution: str | None = Field(
        None,
        description=(
            "the host's truth in the submission's layout (relative to `data.root`): what `kseg score` "
            "scores against without `--truth` (`kseg synth --style` writes one)"
        ),
    )
    path: Path = Field(Path("submissions/submission.csv"), description="where `kseg submit` writes")
    predictions: Path | None = Field(None, description="label maps `kseg submit` reads (unset: <workdir>/predictions)")
    size: Literal["original"] | Size = Field("original", description="each test image's own size, or a fixed `[H, W]`")
    pixel_order: Literal["column", "row"] = Field(
        "column", description="`column` (Kaggle: top to bottom, then left to right) or `row`"
    )
    empty_token: Token = Field("", description="what an empty mask is written as (`-1` in some competitions)")
    layout: Literal["wide", "long"] = Field(
        "wide",
        description=(
            "`wide`: rows of id and mask; `long`: image, mask and class columns (see Other competition formats)"
        ),
    )
    # nonempty: rows of empty masks left out (a missing row is empty); instances: one row per connected
    # instance of each (image, class), one empty row for a pair without any
    rows: Literal["all", "nonempty", "instances"] = Field(
        "all",
        description=(
            "`nonempty`: rows of empty masks are left out (a missing row is an empty mask); `instances`: "
            "one row per 8-connected instance, an empty row for a pair without any"
        ),
    )
    classes: list[str] | None = Field(
        None,
        description=(
            "the classes that get rows, by name (in the wide layout with a sample, the sample's rows "
            "decide); the CV metric (best epochs, tune, report, blend) averages these classes only, as "
            "the leaderboard does (unset: all)"
        ),
    )
    id_format: str | None = Field(
        None,
        description=(
            "row id from the image (`{id}`, or `{file}`: its file name) and the class (`{k}` index, or "
            "`{name}`); the class may be left out when `submission.classes` names one class (unset: "
            "{id}_{k}` (long: `{id}`))"
        ),
    )
    class_format: str = Field("{k}", description="long layout: the class column's value, `{k}` (index) or `{name}`")
    # what best epochs, tune, blend, report and score use; instance_fbeta: F-beta over IoU thresholds 0.5-0.95
    metric: Literal["row_dice", "row_iou", "dataset_iou", "instance_fbeta"] = Field(
        "row_dice",
        description=(
            "the competition metric: `row_dice`, `row_iou`, `dataset_iou` or `instance_fbeta` (see "
            "Training); chooses best epochs, post-processing, blends and scores"
        ),
    )
    beta: float = Field(2.0, gt=0, description="`instance_fbeta`: the F-beta's beta (Airbus: F2)")
    check_overlap: bool = Field(
        True, description="reject a pixel claimed by two classes (never checked with `data.multilabel`)"
    )
    require_manifest: bool = Field(
        True,
        description=(
            "`kseg submit` reads only a predictions folder whose `inference.json` lists every test image "
            "and every file as written; `false` for label maps made elsewhere"
        ),
    )
    resize_predictions: bool = Field(
        False,
        description=(
            "resize a predicted label map of another size than its image (nearest); otherwise it is "
            "refused (`submission.size` resizes to a fixed size)"
        ),
    )

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
