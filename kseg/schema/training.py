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

    arch: str = Field(
        "Unet",
        description=(
            "any smp architecture (`DeepLabV3Plus`, `FPN`, `Segformer`, ...) and encoder (`tu-<timm name>` too)"
        ),
    )
    encoder_name: str = Field(
        "resnet50",
        description=(
            "any smp architecture (`DeepLabV3Plus`, `FPN`, `Segformer`, ...) and encoder (`tu-<timm name>` too)"
        ),
    )
    encoder_weights: str | None = Field(
        "imagenet",
        description=(
            "a hub weights name, `null`, a local `.pth`/`.bin`/`.safetensors` file (encoder or whole "
            "model), or `pip:<package>` (an installed weights package, see `kseg weights`)"
        ),
    )
    in_channels: int = Field(3, ge=1, description="input bands; more than 3 reads images stored as `.npy` arrays")
    params: dict[str, Any] = Field(default_factory=dict, description="extra arguments for the smp architecture")
    presence_head: bool = Field(
        False,
        description=(
            "add smp's classification head (`aux_params`): a per-class probability that the class is in the "
            "image, trained with `train.presence_weight` and searched as a gate by `kseg tune`"
        ),
    )
    presence_pooling: Literal["avg", "max"] = Field(
        "avg", description="how the presence head pools the deepest encoder features (smp's `aux_params.pooling`)"
    )


class AugmentConfig(Section):
    """Training augmentations: the probability of each (0 turns it off)."""

    hflip: float = Field(0.5, ge=0, le=1, description="augmentation probabilities")
    vflip: float = Field(0.5, ge=0, le=1, description="augmentation probabilities")
    rotate90: float = Field(0.5, ge=0, le=1, description="augmentation probabilities")
    shift_scale_rotate: float = Field(0.0, ge=0, le=1, description="augmentation probabilities")
    brightness_contrast: float = Field(0.3, ge=0, le=1, description="augmentation probabilities")
    color_jitter: float = Field(0.0, ge=0, le=1, description="augmentation probabilities")
    coarse_dropout: float = Field(0.0, ge=0, le=1, description="augmentation probabilities")
    cutmix: float = Field(0.0, ge=0, le=1, description="batch-level augmentation probabilities per sample")
    copy_paste: float = Field(0.0, ge=0, le=1, description="batch-level augmentation probabilities per sample")
    copy_paste_classes: list[str] | None = Field(
        None, description="class names whose pixels copy-paste moves (unset: below-median classes)"
    )


class TrainConfig(Section):
    """One fold's training loop."""

    epochs: int = Field(30, ge=1, description="training (batch size per process)")
    batch_size: int = Field(8, ge=1, description="training (batch size per process)")
    repeat: int = Field(
        1, ge=1, description="passes over each training image per epoch (each with its own random crop)"
    )
    crop: Literal["resize", "random_crop"] = Field(
        "resize", description="`resize` to `data.image_size`, or `random_crop` of it"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: dict[str, float] = Field(
        default_factory=lambda: {"ce": 1.0, "dice": 1.0},
        description=(
            "weighted sum of `ce`, `dice`, `focal`, `lovasz` (with `data.multilabel` their sigmoid forms:"
            " `ce`, alias `bce`, is per-class binary cross-entropy)"
        ),
    )
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = Field("none", description="cross-entropy options")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy options")
    presence_weight: float = Field(
        0.5, ge=0, description="weight of the presence head's loss (BCE on 'class in the crop'; model.presence_head)"
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="optimiser")
    lr: float = Field(3e-4, gt=0, description="optimiser")
    weight_decay: float = Field(1e-4, ge=0, description="optimiser")
    momentum: float = Field(0.9, ge=0, lt=1, description="optimiser")
    scheduler: Literal["cosine", "onecycle", "plateau", "none"] = Field(
        "cosine", description="`cosine`, `onecycle`, `plateau`, `none`"
    )
    warmup_epochs: float = Field(1.0, ge=0, description="`cosine`, `onecycle`, `plateau`, `none`")
    accumulate: int = Field(1, ge=1, description="gradient accumulation, clipping (max norm)")
    clip_grad: float | None = Field(None, gt=0, description="gradient accumulation, clipping (max norm)")
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay of a moving average of the weights (e.g. `0.98`); the average is validated and saved",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping after that many epochs without a better validation score (`submission.metric`)",
    )
    average: int | None = Field(
        None,
        ge=2,
        description=(
            "checkpoint averaging: after training, average the weights of this many epochs (the best by "
            "validation score, or the `last`), re-estimate batch norm on training images, validate; kept "
            "as `best.pt` only when it beats every epoch"
        ),
    )
    average_rule: Literal["best", "last"] = Field(
        "best",
        description=(
            "checkpoint averaging: after training, average the weights of this many epochs (the best by "
            "validation score, or the `last`), re-estimate batch norm on training images, validate; kept "
            "as `best.pt` only when it beats every epoch"
        ),
    )
    time_limit: float | None = Field(
        None,
        gt=0,
        description=(
            "seconds for the whole `kseg train` command: training stops at the first epoch end past it "
            "(exit 0, resumable with `--resume`)"
        ),
    )
    sampling: Literal["uniform", "rare"] = Field(
        "uniform", description="`rare`: oversample images that contain rare classes"
    )
    cache: bool = Field(
        False, description="keep decoded training images in memory (small data sets; use with `runtime.num_workers: 0`)"
    )
    seed: int = Field(42, description="seeds the initial weights, shuffling and augmentations")
    save_oof: bool = Field(True, description="keep the out-of-fold probabilities")
    log: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="trackers: `tensorboard`, `wandb`"
    )
    wandb_project: str = Field("kseg", description="W&B project; `online`, `offline` or `disabled`")
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="W&B project; `online`, `offline` or `disabled`"
    )

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

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "`auto` (the GPU when one is visible, else the CPU), `cpu` or `cuda` (an error without a "
            "GPU); training, validation and inference alike"
        ),
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto",
        description="AMP (`auto`, `bf16`, `fp16`, `off`) and `torch.compile` on CUDA only; channels_last everywhere",
    )
    channels_last: bool = Field(
        True,
        description="AMP (`auto`, `bf16`, `fp16`, `off`) and `torch.compile` on CUDA only; channels_last everywhere",
    )
    compile: bool = Field(
        False,
        description="AMP (`auto`, `bf16`, `fp16`, `off`) and `torch.compile` on CUDA only; channels_last everywhere",
    )
    num_workers: int | None = Field(
        None, ge=0, description="data loader processes and pinned memory (unset: cores (max 8; inference at most 4))"
    )
    pin_memory: bool | None = Field(None, description="data loader processes and pinned memory (unset: on with CUDA)")

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
