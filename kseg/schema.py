"""The config's schema: one pydantic model per YAML section (``extra="forbid"``), and ``Config``.

Loading, ``--set`` overrides and path resolution live in ``kseg.config``, which re-exports these names.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

TTA_VIEWS = ("none", "hflip", "vflip", "flip", "rot90", "d4")

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_color(value: Any) -> str:
    """Normalise a colour given as ``"#RRGGBB"``, ``"RRGGBB"`` or ``[r, g, b]`` to ``"#RRGGBB"``."""
    if isinstance(value, str):
        match = _HEX.match(value.strip())
        if match:
            return "#" + match.group(1).upper()
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return "#{:02X}{:02X}{:02X}".format(*value)
    raise ValueError(f"{value!r} is not a colour; write it as '#RRGGBB' or [r, g, b] with 0-255 values")


def _palette_entry(value: Any) -> list[str]:
    # One class may own several colours (e.g. two shades that mean the same thing).
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], int):
        return [parse_color(v) for v in value]
    return [parse_color(value)]


def _size(value: Any) -> Any:
    if isinstance(value, int):
        return (value, value)
    return value


Color = Annotated[str, BeforeValidator(parse_color)]
PaletteEntry = Annotated[list[str], BeforeValidator(_palette_entry)]
Size = Annotated[tuple[int, int], BeforeValidator(_size)]
# YAML reads `empty_token: -1` as a number; the token is text in the file.
Token = Annotated[
    str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
]


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def is_weights_file(value: str | None) -> bool:
    """Whether ``model.encoder_weights`` names a local file or a weights package (``pip:<name>``), not a
    hub weights name such as ``imagenet``."""
    if value is None:
        return False
    return value.lower().endswith(WEIGHT_SUFFIXES) or "/" in value or "\\" in value or value.startswith("pip:")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    class_column: str | None = None  # long form: the row's class
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
        return self

    def _check_rle(self) -> None:
        rle = self.rle
        if rle.form == "long" and not rle.class_column:
            raise ValueError("rle.form 'long' needs rle.class_column, the column that holds each row's class")
        if rle.background is not None and rle.background not in self.classes:
            raise ValueError(f"rle.background {rle.background!r} is not one of classes {self.classes}")
        if rle.class_key == "index" and rle.index_base < 0:
            raise ValueError("rle.index_base must be 0 or more")


class ModelConfig(Section):
    """The segmentation-models-pytorch model."""

    arch: str = "Unet"
    encoder_name: str = "resnet50"
    encoder_weights: str | None = "imagenet"
    in_channels: int = Field(3, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the smp architecture as is


class AugmentConfig(Section):
    """Training augmentations: the probability of each (0 turns it off)."""

    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.5, ge=0, le=1)
    shift_scale_rotate: float = Field(0.0, ge=0, le=1)
    brightness_contrast: float = Field(0.3, ge=0, le=1)
    color_jitter: float = Field(0.0, ge=0, le=1)  # brightness, contrast, saturation and hue together
    coarse_dropout: float = Field(0.0, ge=0, le=1)
    cutmix: float = Field(0.0, ge=0, le=1)  # per sample: paste a box of another sample of the batch
    copy_paste: float = Field(0.0, ge=0, le=1)  # per sample: paste one rare class's pixels of another sample
    copy_paste_classes: list[str] | None = None  # default: classes below the median pixel share


class TrainConfig(Section):
    """One fold's training loop."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    repeat: int = Field(1, ge=1)  # each training image this many times per epoch (different crops)
    crop: Literal["resize", "random_crop"] = "resize"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "dice": 1.0})
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "onecycle", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    accumulate: int = Field(1, ge=1)
    clip_grad: float | None = Field(None, gt=0)
    ema: float | None = Field(None, gt=0, lt=1)  # decay of an exponential moving average of the weights
    patience: int | None = Field(None, ge=1)
    average: int | None = Field(None, ge=2)  # after training, average the weights of this many epochs
    average_rule: Literal["best", "last"] = "best"  # which epochs: the best by validation Dice, or the last
    time_limit: float | None = Field(None, gt=0)  # seconds: stop at the first epoch end past it (resumable)
    sampling: Literal["uniform", "rare"] = "uniform"
    cache: bool = False  # keep decoded (rescaled) training images in memory: small data sets, num_workers 0
    seed: int = 42
    save_oof: bool = True
    log: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)  # experiment trackers, none by default
    wandb_project: str = "kseg"
    wandb_mode: Literal["online", "offline", "disabled"] = "online"

    @model_validator(mode="after")
    def _average_within_epochs(self) -> TrainConfig:
        if self.average is not None and self.average > self.epochs:
            raise ValueError(
                f"average {self.average} asks for more epochs than train.epochs {self.epochs}; "
                f"use at most {self.epochs}"
            )
        return self

    @field_validator("loss")
    @classmethod
    def _loss_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or all(w == 0 for w in value.values()):
            raise ValueError("needs at least one loss with a non-zero weight, e.g. {ce: 1.0, dice: 1.0}")
        return value


class RuntimeConfig(Section):
    """Where and how tensors run, shared by training, validation and inference."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when one is visible, else the CPU
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # mixed precision, CUDA only
    channels_last: bool = True
    compile: bool = False  # torch.compile the training model, CUDA only
    num_workers: int | None = Field(None, ge=0)  # data loader processes (default: CPU count, at most 8)
    pin_memory: bool | None = None  # default: on with CUDA

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value: Any) -> Any:
        return (
            "off" if value is False else value
        )  # YAML 1.1 reads a bare `off` (amp: off, --set runtime.amp=off) as false


# keys that moved from train.* to runtime.*: older configs keep working
RUNTIME_KEYS = ("device", "amp", "channels_last", "compile", "num_workers", "pin_memory")


def migrate_runtime_keys(tree: Any) -> Any:
    """Move ``train.<key>`` of older configs to ``runtime.<key>``; both given differently is an error."""
    if not isinstance(tree, dict) or not isinstance(tree.get("train"), dict):
        return tree
    train = dict(tree["train"])
    moved = {key: train.pop(key) for key in RUNTIME_KEYS if key in train}
    if not moved:
        return tree
    runtime = tree.get("runtime")
    runtime = dict(runtime) if isinstance(runtime, dict) else {}
    for key, value in moved.items():
        if key in runtime and runtime[key] != value:
            raise ValueError(
                f"train.{key} ({value!r}) and runtime.{key} ({runtime[key]!r}) disagree; train.{key} is the "
                f"old name of runtime.{key}: keep only runtime.{key}"
            )
        runtime[key] = value
    return {**tree, "train": train, "runtime": runtime}


class SplitConfig(Section):
    """K-fold split of the training images."""

    n_folds: int = Field(5, ge=2)
    seed: int = 42
    group_by: str | None = None
    area_bins: int = Field(3, ge=0, le=10)
    workers: int | None = Field(None, ge=1)
    verify_images: bool = False
    duplicates: bool = False  # keep each duplicate group of 'kseg audit' in one fold


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
    rows: Literal["all", "nonempty"] = "all"  # nonempty: rows of empty masks left out (a missing row is empty)
    classes: list[str] | None = None  # the classes that get rows (default: all; in the wide layout the sample's)
    id_format: str | None = None  # wide: the row id ('{id}_{k}'); long: the image column ('{id}')
    class_format: str = "{k}"  # long: the class column ('{k}' index or '{name}')
    metric: Literal["row_dice", "row_iou", "dataset_iou"] = "row_dice"  # what best epochs, tune, blend, score use
    check_overlap: bool = True
    require_manifest: bool = True  # submit only predictions kseg infer wrote whole (false: label maps made elsewhere)
    resize_predictions: bool = False  # resize label maps of another size (nearest) instead of refusing them

    @model_validator(mode="after")
    def _id_fields(self) -> SubmissionConfig:
        if self.id_format is None:
            self.id_format = "{id}_{k}" if self.layout == "wide" else "{id}"
        image, klass = _format_fields(self.id_format, "submission.id_format")
        if self.layout == "wide" and (not image or not klass):
            raise ValueError(
                f"submission.id_format {self.id_format!r} must contain both an image field ({{id}} or {{file}}) "
                "and a class field ({k} or {name}), e.g. '{id}_{k}' or '{file}_{name}'"
            )
        if self.layout == "long" and (not image or klass):
            raise ValueError(
                f"submission.id_format {self.id_format!r} names the image column of the long layout: an image "
                "field ({id} or {file}) and no class field (the class has its own column: class_format)"
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


class Config(Section):
    """A whole experiment: one YAML file."""

    workdir: Path = Path("work")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    tile: TileConfig = Field(default_factory=TileConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_runtime_keys(cls, tree: Any) -> Any:
        return migrate_runtime_keys(tree)

    @model_validator(mode="after")
    def _channels(self) -> Config:
        if len(self.data.mean) != self.model.in_channels:
            raise ValueError(
                f"model.in_channels is {self.model.in_channels} but data.mean / data.std give "
                f"{len(self.data.mean)} channel(s); give one mean and std per input channel"
            )
        return self

    @model_validator(mode="after")
    def _submitted_classes(self) -> Config:
        unknown = [c for c in self.submission.classes or [] if c not in self.data.classes]
        if unknown:
            raise ValueError(
                f"submission.classes names {unknown[0]!r}, which is not in data.classes "
                f"({', '.join(self.data.classes)}); list the classes that get submission rows by those names"
            )
        return self

    @property
    def n_classes(self) -> int:
        return len(self.data.classes)

    @property
    def sample_path(self) -> Path | None:
        if self.submission.sample is None:
            return None
        return self.data.root / self.submission.sample
