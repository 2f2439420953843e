"""The config's schema: one pydantic model per YAML section (``extra="forbid"``), and ``Config``; the
sections live in ``fields`` (shared field types), ``data``, ``training`` and ``stages``.

Loading, ``--set`` overrides and path resolution live in ``kseg.config``, which re-exports these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from kseg.schema.data import MAX_MULTILABEL, DataConfig, RleLabelsConfig
from kseg.schema.fields import (
    TTA_VIEWS,
    WEIGHT_SUFFIXES,
    Color,
    PaletteEntry,
    Section,
    Size,
    Token,
    is_weights_file,
    parse_color,
)
from kseg.schema.stages import (
    ID_FIELDS,
    AuditConfig,
    InferConfig,
    PseudoConfig,
    SplitConfig,
    SubmissionConfig,
    TileConfig,
)
from kseg.schema.training import (
    RUNTIME_KEYS,
    AugmentConfig,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
    migrate_runtime_keys,
)


class Config(Section):
    """A whole experiment: one YAML file."""

    workdir: Path = Field(Path("work"), description="run outputs: folds, statistics, checkpoints, predictions")
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

    @model_validator(mode="after")
    def _multilabel_options(self) -> Config:
        if not self.data.multilabel:
            return self
        refused = {
            "train.augment.copy_paste": (self.train.augment.copy_paste > 0, "0 (it pastes one class per pixel)"),
            "train.label_smoothing": (self.train.label_smoothing > 0, "0 (multiclass cross-entropy only)"),
            "infer.merge": (self.infer.merge == "gmean", "mean (gmean renormalises a softmax)"),
        }
        for key, (bad, fix) in refused.items():
            if bad:
                raise ValueError(f"{key} does not work with data.multilabel: true; set it to {fix}")
        return self

    @property
    def multilabel(self) -> bool:
        return self.data.multilabel

    @property
    def overlap_check(self) -> bool:
        """Whether submissions are checked for pixels with two classes: never when classes may overlap."""
        return self.submission.check_overlap and not self.data.multilabel

    @property
    def scored_classes(self) -> list[int]:
        """Indices of the classes the metric averages, in CV as on the leaderboard: those of
        ``submission.classes`` (the ones with submission rows), else all."""
        names = self.submission.classes or self.data.classes
        return [self.data.classes.index(name) for name in names]

    @property
    def n_classes(self) -> int:
        return len(self.data.classes)

    @property
    def sample_path(self) -> Path | None:
        if self.submission.sample is None:
            return None
        return self.data.root / self.submission.sample


__all__ = [
    "AuditConfig",
    "AugmentConfig",
    "Color",
    "Config",
    "DataConfig",
    "ID_FIELDS",
    "InferConfig",
    "MAX_MULTILABEL",
    "ModelConfig",
    "PaletteEntry",
    "PseudoConfig",
    "RUNTIME_KEYS",
    "RleLabelsConfig",
    "RuntimeConfig",
    "Section",
    "Size",
    "SplitConfig",
    "SubmissionConfig",
    "TTA_VIEWS",
    "TileConfig",
    "Token",
    "TrainConfig",
    "WEIGHT_SUFFIXES",
    "is_weights_file",
    "migrate_runtime_keys",
    "parse_color",
]
