"""The documentation: the config reference page is generated from the schema and current, every key has
a description, and the README stays a front page (install, test, quickstart, workflow, links)."""

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from kseg.config import Config
from kseg.schema.reference import reference_markdown

ROOT = Path(__file__).parents[1]


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        if hasattr(field.annotation, "model_fields"):
            yield from _keys(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_the_config_reference_page_is_what_the_schema_gives():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == reference_markdown(Config), "docs/config.md is not current: python scripts/config_reference.py"
    for key in _keys(Config):
        assert f"`{key}`" in page, f"config key {key} missing from docs/config.md"


def test_a_key_without_a_description_stops_the_generator():
    class Section(BaseModel):
        size: int = 3

    class Top(BaseModel):
        part: Section = Section()

    with pytest.raises(ValueError, match="config key part.size has no description"):
        reference_markdown(Top)


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 300
    assert text.index("pip install") < text.index("python -m pytest") < text.index("kseg demo")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links if not link.startswith("http")), links
