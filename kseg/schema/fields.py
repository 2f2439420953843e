"""Field types shared by the config sections: colours, palette entries, sizes, tokens, weights names."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    field_validator,
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


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits ``True``/``False`` as themselves (not as the numbers 1 and 0)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_takes_bool(arg) for arg in typing.get_args(annotation))


def _takes_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    return any(_takes_number(arg) for arg in typing.get_args(annotation) if not isinstance(arg, str))


class Section(BaseModel):
    # non-finite numbers (.inf, .nan) are refused everywhere: no setting means them
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads ``true`` as a boolean, which pydantic would take as the number 1 (``train.epochs: true``)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _takes_number(annotation) and not _takes_bool(annotation):
                raise ValueError(f"{value!r} is a yes/no value where a number is meant; give a number")
        return value
