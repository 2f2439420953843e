"""The README's config reference names every config key, so a new key cannot ship undocumented."""

import re
from pathlib import Path

from kseg.config import Config

README = Path(__file__).parents[1] / "README.md"


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        if hasattr(field.annotation, "model_fields"):
            yield from _keys(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_config_key_is_in_the_readme():
    text = README.read_text()
    undocumented = []
    for key in _keys(Config):
        section, _, leaf = key.rpartition(".")
        grouped = re.search(re.escape(section) + r"\.\{[^}]*\b" + re.escape(leaf) + r"\b", text) if section else None
        if f"`{key}`" not in text and not grouped:
            undocumented.append(key)
    assert not undocumented, f"config keys missing from README.md's config reference: {undocumented}"
