"""The config reference (``docs/config.md``), written from the schema itself: every key, its default and
its field description, one table per section, so the page cannot drift from the code
(``python scripts/config_reference.py`` writes it; ``--check`` fails when it is not current)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

INTRO = """# Config reference

One YAML per experiment; unknown keys are errors. Relative paths (`workdir`, `data.root`,
`submission.path`) are resolved against the config file's folder (against the current folder when given
with `--set`); file templates against `data.root`. The resolved config is saved as `<workdir>/config.yaml`
by every command that writes to the work folder. The `runtime` section (device, precision, memory layout,
loader workers) is shared by training, validation and inference; configs written for kseg 0.1 that set
these under `train.` keep working (`train.device` is read as `runtime.device`, and so on; giving both with
different values is an error).

Any key can be given on the command line: `--set train.epochs=12 --set data.image_size=[256,256]`
(values are read as YAML).

This page is generated from the schema (`kseg/schema/`): a key's meaning is its field's description.
"""


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _table(model: type[BaseModel], prefix: str) -> tuple[list[str], list[tuple[str, type[BaseModel]]]]:
    """The rows of one section (fields with one description in a row share it) and its nested sections."""
    rows: list[tuple[list[str], list[str], str]] = []
    nested = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}", annotation))
            continue
        text = (field.description or "").strip()
        if not text:
            raise ValueError(f"config key {prefix}{name} has no description; give its Field a description")
        if rows and rows[-1][2] == text:
            rows[-1][0].append(f"`{prefix}{name}`")
            rows[-1][1].append(_default(field))
        else:
            rows.append(([f"`{prefix}{name}`"], [_default(field)], text))
    lines = [f"| {', '.join(keys)} | {', '.join(defaults)} | {text} |" for keys, defaults, text in rows]
    return lines, nested


def reference_markdown(config: type[BaseModel]) -> str:
    """The whole page for ``config`` (``kseg.config.Config``): the top-level keys, then one table per
    section and subsection, in the schema's order."""
    out = [INTRO]
    top, sections = _table(config, "")
    if top:
        out += ["## Top level\n", "| key | default | meaning |", "| --- | --- | --- |", *top, ""]
    todo = list(sections)
    while todo:
        name, model = todo.pop(0)
        lines, nested = _table(model, f"{name}.")
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## `{name}`\n", *([doc, ""] if doc else [])]
        if lines:
            out += ["| key | default | meaning |", "| --- | --- | --- |", *lines, ""]
        todo = nested + todo
    return "\n".join(out).rstrip() + "\n"
