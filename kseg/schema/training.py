"""The ``model``, ``train`` and ``runtime`` sections (and the migration of old runtime keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kseg.schema.fields import Section


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
