"""Typed experiment config: YAML file + ``--set dotted.key=value`` overrides -> validated ``Config``.

Relative paths in a config (``workdir``, ``data.root``, ``submission.path``, ``pseudo.workdir``) are
resolved against the folder of the config file, so ``kseg split -c comp/kseg.yaml`` and
``cd comp && kseg split`` mean the same thing. Data file templates are relative to ``data.root``.
The sections themselves are defined in ``kseg.schema`` and re-exported here.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kseg.errors import ConfigError
from kseg.io import atomic_write_text
from kseg.schema import (
    TTA_VIEWS,
    AuditConfig,
    AugmentConfig,
    Config,
    DataConfig,
    InferConfig,
    ModelConfig,
    PseudoConfig,
    RuntimeConfig,
    SplitConfig,
    SubmissionConfig,
    TileConfig,
    TrainConfig,
    is_weights_file,
    parse_color,
)

CONFIG_NAME = "kseg.yaml"

__all__ = [
    "CONFIG_NAME",
    "TTA_VIEWS",
    "AuditConfig",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "InferConfig",
    "ModelConfig",
    "PseudoConfig",
    "RuntimeConfig",
    "SplitConfig",
    "SubmissionConfig",
    "TileConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "find_config",
    "load_config",
    "parse_color",
    "save_resolved",
    "tile_options",
    "to_yaml",
]


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section; set it directly")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides to a raw config mapping.

    Values are parsed as YAML (``[64,64]``, ``null``, ``3``); text that is not valid YAML is kept as is.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(
                f"--set {item!r} is not of the form dotted.key=value; write e.g. --set data.image_size=[64,64]"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. {id}_{k}): the user meant the text itself
        _set_dotted(tree, key, value)
    return tree


# keys whose values are paths: typed after --set they are relative to the current folder, as every other
# path on a command line is; written in the file they are relative to the file's folder
PATH_KEYS = ("workdir", "data.root", "submission.path", "submission.predictions", "pseudo.workdir")


def anchor_override_paths(tree: dict, overrides: list[str], cwd: Path) -> dict:
    """Make the relative paths that ``--set`` gave (``PATH_KEYS``, a weights file) absolute against ``cwd``."""
    given = {item.partition("=")[0].strip() for item in overrides}
    for key in given & {*PATH_KEYS, "model.encoder_weights"}:
        *parents, leaf = key.split(".")
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if (
            not isinstance(value, str)
            or not value
            or value.startswith("pip:")
            or Path(value).expanduser().is_absolute()
        ):
            continue
        if key == "model.encoder_weights" and not is_weights_file(value):
            continue  # a name such as imagenet, not a file
        _set_dotted(tree, key, str(cwd / value))
    return tree


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _origin(dotted: str, source: str, overrides: list[str], message: str, labels: dict[str, str]) -> str:
    """Where a value at ``dotted`` came from: the ``--set`` that gave it (or the command option, as
    ``labels`` names it: ``{"pseudo.threshold=1.5": "--threshold 1.5"}``), else the config file. An error of a
    whole section (``data``: palette against classes) names the file with the ``--set`` items inside the
    section whose keys the message names (all of them when it names none)."""
    keys = {item: item.partition("=")[0].strip() for item in overrides}
    typed = {item: labels.get(item, f"--set {item}") for item in overrides}
    exact = [item for item, key in keys.items() if key == dotted or dotted.startswith(key + ".")]
    if exact:
        return typed[exact[-1]]
    inside = [item for item, key in keys.items() if key.startswith(dotted + ".")]
    named = [item for item in inside if re.search(rf"\b{re.escape(keys[item].rsplit('.', 1)[-1])}\b", message)]
    given = named or inside
    return f"{source} with {', '.join(typed[item] for item in given)}" if given else source


def _mapping_cause(dotted: str, overrides: list[str]) -> str:
    """Why YAML made a mapping of a text value: an unquoted ``{...}`` or a ``word:`` (``pip:``)."""
    raw = next((v for k, _, v in (o.partition("=") for o in reversed(overrides)) if k.strip() == dotted), None)
    if raw is None:
        return " (an unquoted {...} or a 'word:' is read so)"
    if raw.strip().startswith("{"):
        return " (an unquoted {...}, such as {id}_{k})"
    return f" ('{raw.strip()}' ends in a colon or holds ': ')"


def _explain(error: Any, source: str, overrides: list[str], labels: dict[str, str] | None = None) -> str:
    loc = tuple(str(p) for p in error["loc"])
    dotted = ".".join(loc)
    origin = _origin(dotted, source, overrides, error["msg"], labels or {})
    fix = "give it another value" if origin in (labels or {}).values() else "fix it in the file or with --set"
    if error["type"] == "extra_forbidden":
        parent = _section_model(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"did you mean '{'.'.join(loc[:-1] + (close[0],))}'?" if close else "remove it"
        where = ".".join(loc[:-1]) or "the top level"
        return f"unknown config key '{dotted}' in {origin} ({hint}); valid keys in {where}: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"config key '{dotted}' is missing in {origin}; add it"
    message = error["msg"].removeprefix("Value error, ")
    if loc:
        shown = error.get("input")
        got = f" (got {shown!r})" if not isinstance(shown, dict) else ""
        if error["type"] == "string_type" and isinstance(shown, dict):
            got = f" (YAML read it as a mapping{_mapping_cause(dotted, overrides)}: quote the value)"
        return f"config key '{dotted}' in {origin}: {message}{got}; {fix}"
    return f"config {origin}: {message}"


def _resolve(path: Path, base: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def build_config(
    tree: dict,
    base_dir: Path,
    source: str = "config",
    overrides: list[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Config:
    """Validate a raw mapping into a ``Config`` whose paths are absolute.

    Args:
        tree: The parsed YAML with overrides already applied.
        base_dir: Folder that relative paths are resolved against (the config file's folder).
        source: How to name the config in error messages.
        overrides: The ``--set`` items, so errors can point at them.
    """
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        first = _explain(errors[0], source, overrides or [], labels)
        more = f" ({len(errors) - 1} more problem(s) after this one)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
    base_dir = Path(base_dir).resolve()
    cfg.workdir = _resolve(cfg.workdir, base_dir)
    cfg.data.root = _resolve(cfg.data.root, base_dir)
    cfg.submission.path = _resolve(cfg.submission.path, base_dir)
    if cfg.pseudo.workdir is not None:
        cfg.pseudo.workdir = _resolve(cfg.pseudo.workdir, base_dir)
    weights = cfg.model.encoder_weights
    if weights and is_weights_file(weights) and not weights.startswith("pip:"):
        cfg.model.encoder_weights = str(_resolve(Path(weights), base_dir))
    if cfg.submission.predictions is not None:
        cfg.submission.predictions = _resolve(cfg.submission.predictions, base_dir)
    return cfg


def tile_options(path: Path | None, overrides: list[str] | None = None) -> tuple[TileConfig, int]:
    """The ``tile`` section (and ``data.ignore_index``) of a config; without ``-c`` and without a
    ``kseg.yaml`` here, the defaults with ``--set tile.*`` overrides (tiling needs no competition yet)."""
    overrides = list(overrides or [])
    if path is not None or (Path.cwd() / CONFIG_NAME).is_file():
        cfg = load_config(path, overrides)
        return cfg.tile, cfg.data.ignore_index
    tree = apply_overrides({}, overrides)
    unknown = sorted(set(tree) - {"tile"})
    if unknown:
        raise ConfigError(f"without a config only tile.* keys can be --set, not {unknown[0]!r}; pass -c FILE")
    try:
        return TileConfig.model_validate(tree.get("tile") or {}), 255
    except ValidationError as exc:
        error: dict[str, Any] = {**exc.errors()[0]}
        error["loc"] = ("tile", *tuple(error["loc"]))  # name the key as it is written: tile.size
        raise ConfigError(_explain(error, "--set", overrides).replace("config --set", "--set")) from None


def find_config(path: Path | None) -> Path:
    """The config to use: ``path`` if given, else ``./kseg.yaml``."""
    if path is not None:
        if Path(path).is_dir():
            raise ConfigError(f"-c {path} is a folder; give the config file itself, e.g. -c {Path(path) / CONFIG_NAME}")
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist; check the path given to -c")
        return Path(path)
    default = Path.cwd() / CONFIG_NAME
    if not default.is_file():
        raise ConfigError(
            f"no config given and no {CONFIG_NAME} in {Path.cwd()}; pass -c FILE, or run "
            "'kseg synth DIR' to get an example competition with its config"
        )
    return default


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, labels: dict[str, str] | None = None
) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate, and resolve its paths.

    Args:
        path: The YAML file; ``None`` means ``kseg.yaml`` in the current folder.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML.
        labels: How a command option that stands for a key was typed, per override item
            (``{"pseudo.threshold=1.5": "--threshold 1.5"}``), so that an error names the option.
    """
    overrides = list(overrides or [])
    file = find_config(path)
    try:
        tree = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {file} is not valid YAML{where}; fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {file} cannot be read ({exc}); check the file") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"config {file} must be a mapping of keys (workdir:, data:, ...), not a {type(tree).__name__}"
        )
    anchor_override_paths(apply_overrides(tree, overrides), overrides, Path.cwd())
    return build_config(tree, file.parent, source=str(file), overrides=overrides, labels=labels)


def to_yaml(cfg: Config) -> str:
    """The config as YAML, every default spelled out."""
    tree = cfg.model_dump(mode="json")
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None, allow_unicode=True)


def save_resolved(cfg: Config, path: Path) -> Path:
    """Write the resolved config (absolute paths, all defaults) next to the run's outputs."""
    atomic_write_text(path, to_yaml(cfg))
    return path


MODEL_KEYS = ("arch", "encoder_name", "in_channels", "presence_head")  # what a checkpoint's weights must agree with
_MODEL_KEY_DEFAULTS = {"presence_head": False}  # keys added later: checkpoints from before read as the default


def checkpoint_mismatch_of(
    checkpoint: dict[str, Any], model: dict[str, Any], classes: list[str], multilabel: bool
) -> str | None:
    """``checkpoint_mismatch`` against explicit values: ``model`` holds ``MODEL_KEYS``."""
    config = checkpoint.get("config") or {}
    saved = config.get("model") or {}
    for key in MODEL_KEYS:
        trained = saved.get(key, _MODEL_KEY_DEFAULTS.get(key))
        if trained != model[key]:
            return f"was trained with model.{key}={trained!r} but the config says {model[key]!r}"
    if checkpoint.get("classes") != list(classes):
        return f"was trained on classes {checkpoint.get('classes')}, not {list(classes)}"
    trained = bool((config.get("data") or {}).get("multilabel", False))
    if trained != multilabel:
        kinds = {True: "multilabel (a sigmoid per class)", False: "softmax (one class per pixel)"}
        return f"was trained {kinds[trained]} but the config says data.multilabel: {str(multilabel).lower()}"
    return None
