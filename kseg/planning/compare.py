"""How a written config compares with a correct hand-written one: key by key over what a download
decides (the ``data`` and ``submission`` sections and the split groups), class names compared by position
(names the files do not give are flagged, not wrong)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from kseg.config import DataConfig, SplitConfig, SubmissionConfig

# plan keys (chosen for the run, not read from the files) and project choices
NOT_COMPARED = frozenset(
    ("data.image_size", "data.mean", "data.std", "data.normalize", "data.scale", "data.exclude")
    + ("submission.path", "submission.predictions")  # where outputs go, relative to each config's folder
)
CSV_KEYS = (
    "train_csv",
    "test_csv",
    "id_column",
    "image_template",
    "mask_template",
    "test_image_template",
    "test_mask_template",
)
GLOB_KEYS = ("image_pattern", "mask_pattern", "test_image_pattern", "id_template")
SPLIT_KEYS = ("split.group_by", "split.group_pattern")
CLASS_LISTS = ("submission.classes", "train.augment.copy_paste_classes")


@dataclass
class Comparison:
    """Keys that match, keys that differ where kseg init flagged them, and keys that differ unflagged."""

    right: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    details: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _leaves(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "params":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _keys(data: DataConfig, submission: SubmissionConfig, split: SplitConfig) -> dict[str, Any]:
    leaves = {**_leaves(data.model_dump(), "data."), **_leaves(submission.model_dump(), "submission.")}
    leaves.update({key: getattr(split, key.split(".")[1]) for key in SPLIT_KEYS})
    classes = data.classes
    for key in CLASS_LISTS:
        if key in leaves and leaves[key] is not None:
            leaves[key] = [classes.index(c) for c in leaves[key]]  # by position: names may be invented
    if data.rle.background is not None:
        leaves["data.rle.background"] = classes.index(data.rle.background)
    return {k: v for k, v in leaves.items() if k not in NOT_COMPARED}


class Sections(Protocol):
    """What a comparison reads of a config: its data, submission and split sections (a ``Config`` is one)."""

    @property
    def data(self) -> DataConfig: ...

    @property
    def submission(self) -> SubmissionConfig: ...

    @property
    def split(self) -> SplitConfig: ...


def compare_configs(written: Sections, reference: Sections, flagged: set[str]) -> Comparison:
    """Compare ``written`` (by ``kseg init``, which flagged the keys ``flagged``) with ``reference``."""
    mine = _keys(written.data, written.submission, written.split)
    theirs = _keys(reference.data, reference.submission, reference.split)
    if "rle" not in (
        written.data.mask_format,
        reference.data.mask_format,
    ):  # no runs table is read: its keys mean nothing
        mine = {k: v for k, v in mine.items() if not k.startswith("data.rle.")}
        theirs = {k: v for k, v in theirs.items() if not k.startswith("data.rle.")}
    if written.data.layout == reference.data.layout:  # the other layout's keys are read by nothing
        unused = {f"data.{k}" for k in (GLOB_KEYS if written.data.layout == "csv" else CSV_KEYS)}
        mine = {k: v for k, v in mine.items() if k not in unused}
        theirs = {k: v for k, v in theirs.items() if k not in unused}
    result = Comparison()
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if a == b:
            result.right.append(key)
            continue
        result.details[key] = (a, b)
        if key in flagged or (key == "data.classes" and len(a or []) == len(b or []) and "data.classes" in flagged):
            result.flagged.append(key)
        else:
            result.wrong.append(key)
    return result
