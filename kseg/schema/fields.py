"""Field types shared by the config sections: colours, palette entries, sizes, tokens, weights names."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
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
