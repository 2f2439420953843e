"""What mask files hold: per-file value histograms (a worker), their summary as a mask kind, classes and
palette, and class lists shipped beside the masks (``classes.json``, ``class_dict.csv``)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from kseg.errors import InitError
from kseg.planning.fingerprint import MaskFinding

MAX_VALUES = 512  # distinct values kept per mask; more means the file is no label map (a photo, a JPEG)
STRAY_SHARE = 1e-4  # a colour with a smaller share of all mask pixels, listed in no class file, is noise
IGNORE_NAMES = ("unlabeled", "unlabelled", "ignore", "ignored", "void", "unknown", "undefined", "dontcare")
MAX_CLASSES = 254


def mask_stats(item: tuple[str]) -> dict[str, Any]:
    """Worker: one mask file's (``(path,)``) mode, size and histogram.

    Returns:
        ``{"mode", "height", "width", "values": [[value, pixels], ...]}`` for single-channel masks (and
        RGB masks whose three channels are equal), ``"colors": [[packed RGB, pixels], ...]`` for colour and
        palette masks (palette masks keep both), ``"many": True`` when the file holds more than
        ``MAX_VALUES`` distinct values, or ``{"error": text}``.
    """
    (path,) = item
    try:
        with Image.open(path) as image:
            image.load()
            mode, (width, height) = image.mode, image.size
            palette = image.getpalette() if mode == "P" else None
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return {"error": f"{path} cannot be read ({exc})"}
    out: dict[str, Any] = {"mode": mode, "height": height, "width": width}
    if array.ndim == 3:
        rgb = array[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            array = rgb[..., 0]
        else:
            packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
            return {**out, **_histogram(packed, "colors")}
    out.update(_histogram(array.astype(np.int64), "values"))
    if palette is not None:
        table = np.asarray(palette + [0] * (768 - len(palette)), dtype=np.uint32).reshape(-1, 3)
        packed_palette = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
        out["colors"] = [[int(packed_palette[v]), c] for v, c in out["values"] if 0 <= v < 256]
    return out


def _histogram(array: np.ndarray, key: str) -> dict[str, Any]:
    values, counts = np.unique(array.ravel(), return_counts=True)
    many = len(values) > MAX_VALUES
    if many:
        top = np.argsort(-counts)[:MAX_VALUES]
        values, counts = values[top], counts[top]
    return {key: [[int(v), int(c)] for v, c in zip(values, counts, strict=True)], "many": many}


def hex_of(packed: int) -> str:
    return f"#{int(packed):06X}"


# ------------------------------------------------------------------------------ class lists in the download

_HEXCOLOR = re.compile(r"^#?([0-9A-Fa-f]{6})$")
_PALETTE_FILE = re.compile(r"(class|label|categor|palette|colou?r)", re.IGNORECASE)


def palette_candidates(files: list[str]) -> list[str]:
    """Files that may list the classes (``classes.json``, ``class_dict.csv``, ``labelmap.txt``), nearest the
    root first."""
    found = [
        f for f in files if _PALETTE_FILE.search(Path(f).stem) and Path(f).suffix.lower() in (".json", ".csv", ".txt")
    ]
    return sorted(found, key=lambda f: (f.count("/"), f))


def _color(value: Any) -> str | None:
    if isinstance(value, str) and _HEXCOLOR.match(value.strip()):
        return "#" + _HEXCOLOR.match(value.strip()).group(1).upper()  # type: ignore[union-attr]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return "#{:02X}{:02X}{:02X}".format(*value)
    return None


def _json_entries(tree: Any) -> list[tuple[str, str | None]]:
    """(name, colour) pairs of a JSON class list: objects with a name and a colour key, or name -> colour."""
    out: list[tuple[str, str | None]] = []
    if isinstance(tree, dict):
        name = next(
            (tree[k] for k in ("title", "name", "class", "label", "class_name") if isinstance(tree.get(k), str)), None
        )
        colour = next((_color(tree[k]) for k in ("color", "colour", "rgb", "hex") if k in tree), None)
        if name is not None and ("color" in tree or "colour" in tree or "rgb" in tree or "hex" in tree or "id" in tree):
            return [(name, colour)]
        if tree and all(isinstance(k, str) and _color(v) for k, v in tree.items()):
            return [(k, _color(v)) for k, v in tree.items()]
        for value in tree.values():
            out += _json_entries(value)
    elif isinstance(tree, list):
        if tree and all(isinstance(v, str) for v in tree):
            return [(v, None) for v in tree]
        for value in tree:
            out += _json_entries(value)
    return out


def read_palette_file(root: Path, rel: str) -> list[tuple[str, str | None]]:
    """The classes a file lists, as ``(name, "#RRGGBB" or None)``, in the file's order; ``[]`` if it lists
    none in a form kseg knows (JSON objects with a name and a colour, a CSV with name and r, g, b columns,
    text lines ``name r g b`` or ``r g b name``, or one name per line)."""
    path = root / rel
    try:
        if path.suffix.lower() == ".json":
            return _json_entries(json.loads(path.read_text(encoding="utf-8")))
        if path.suffix.lower() == ".csv":
            return _csv_entries(pd.read_csv(path, dtype=str, keep_default_na=False))
        return _text_entries(path.read_text(encoding="utf-8").splitlines())
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return []


def _csv_entries(table: pd.DataFrame) -> list[tuple[str, str | None]]:
    lower = {c.lower().strip(): c for c in table.columns}
    name = next((lower[k] for k in ("name", "class", "class_name", "label", "title") if k in lower), None)
    if name is None:
        return []
    if all(k in lower for k in ("r", "g", "b")):
        return [
            (str(row[name]), _color([int(row[lower[k]]) for k in "rgb"]))
            for _, row in table.iterrows()
            if all(str(row[lower[k]]).strip().isdigit() for k in "rgb")
        ]
    colour = next((lower[k] for k in ("color", "colour", "hex") if k in lower), None)
    return [(str(row[name]), _color(row[colour]) if colour else None) for _, row in table.iterrows()]


def _text_entries(lines: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        numbers = [int(x) for x in re.findall(r"\d+", line)]
        words = re.sub(r"[\d,:;]+", " ", line).split()
        if len(numbers) >= 3 and words:
            out.append((" ".join(words), _color(numbers[:3])))
        elif words and not numbers:
            out.append((" ".join(words), None))
    return out


# ------------------------------------------------------------------------------------------ the summary


def summarise_masks(
    records: list[dict[str, Any]],
    files: list[str],
    pattern: str,
    listed: list[tuple[str, str | None]],
    listed_file: str | None,
    names: list[tuple[str, str | None]] | None = None,
) -> MaskFinding:
    """The mask kind, classes and palette of a set of masks.

    Args:
        records: ``mask_stats`` of each mask.
        files: The masks, relative to the download (named in errors).
        pattern: Their pattern.
        listed: The classes of a class file in the download, ``(name, colour)``.
        listed_file: That file.
        names: ``kseg init --classes``: names, each with its colour or ``None``.

    Raises:
        InitError: Masks that cannot be read, that hold no label map, or whose colours match neither the
            class file nor ``--classes``.
    """
    for record, rel in zip(records, files, strict=True):
        if "error" in record:
            raise InitError(
                f"mask {rel} cannot be read ({record['error']}); re-download it or remove it from the folder"
            )
        if record["many"]:
            raise InitError(
                f"mask {rel} holds more than {MAX_VALUES} different values, so it is no label map (a photo, or masks "
                "saved as JPEG); point kseg init at the label masks, or save them as PNG"
            )
    modes = Counter(r["mode"] for r in records)
    coloured = [r for r in records if "colors" in r and ("values" not in r or r["mode"] == "P")]
    rgb = any("values" not in r for r in records)
    palettes_agree = _palettes_agree(coloured)
    finding = MaskFinding(pattern=pattern, count=len(records), kind="index", modes=dict(modes))
    finding.palette_file = listed_file
    if rgb or (coloured and not palettes_agree):
        _colour_masks(finding, records, files, listed, names)
    else:
        _gray_masks(finding, records, files, listed, names, palette_masks=len(coloured) == len(records))
    return finding


def _palettes_agree(records: list[dict[str, Any]]) -> bool:
    seen: dict[int, int] = {}
    for record in records:
        for (value, _), (colour, _) in zip(record.get("values", []), record["colors"], strict=False):
            if seen.setdefault(value, colour) != colour:
                return False
    return True


def _tally(records: list[dict[str, Any]], key: str) -> dict[int, list[int]]:
    """``value -> [pixels, masks]`` over the masks (``key``: ``values`` or ``colors``)."""
    totals: dict[int, list[int]] = {}
    for record in records:
        pairs = record.get(key, [])
        if key == "colors" and "values" in record and record["mode"] != "P":  # grey masks have no colours
            pairs = [[(v << 16) | (v << 8) | v, c] for v, c in record["values"]]
        for value, count in pairs:
            entry = totals.setdefault(int(value), [0, 0])
            entry[0] += int(count)
            entry[1] += 1
    return totals


def _colour_masks(
    finding: MaskFinding,
    records: list[dict[str, Any]],
    files: list[str],
    listed: list[tuple[str, str | None]],
    names: list[tuple[str, str | None]] | None,
) -> None:
    finding.kind = "color"
    totals = _tally(records, "colors")
    total = sum(px for px, _ in totals.values()) or 1
    listed_colours = {c: n for n, c in listed if c}
    given = {c: n for n, c in names or [] if c}
    finding.values = {hex_of(v): pm for v, pm in sorted(totals.items(), key=lambda kv: -kv[1][0])}
    found = list(finding.values)
    if listed_colours and not set(found) & set(listed_colours) and not given:
        raise InitError(
            f"the masks' colours ({', '.join(found[:6])}) match none of the colours of {finding.palette_file}; "
            "name the classes with --classes name=#RRGGBB,... or fix the class file"
        )
    finding.stray = {
        c: pm
        for c, pm in finding.values.items()
        if pm[0] / total < STRAY_SHARE and c not in listed_colours and c not in given
    }
    kept = [c for c in found if c not in finding.stray]
    if len(kept) > MAX_CLASSES + 1:
        raise InitError(
            f"the masks ({finding.pattern}) hold {len(kept)} colours, more than a class map can; masks saved as "
            "JPEG or resized smoothly lose their colours: use the original PNG masks"
        )
    finding.palette_agrees = [c for c in kept if c in listed_colours]
    finding.palette_only = {n: c for n, c in listed if c and c not in finding.values}
    finding.masks_only = [c for c in kept if c not in listed_colours]
    ignore = [c for c in kept if listed_colours.get(c, "").lower().strip() in IGNORE_NAMES and c not in given]
    finding.ignore_colors = ignore
    if given:
        unnamed = [c for c in kept if c not in given and c not in ignore]
        if unnamed:
            raise InitError(
                f"mask colour {unnamed[0]} ({finding.values[unnamed[0]][1]} masks) is not in --classes; add it as "
                "name=#RRGGBB (or name it in the class file as unlabeled to ignore it)"
            )
        order = [(n, c) for n, c in names or [] if c]
        finding.classes, finding.palette, finding.names_sure = [n for n, _ in order], [c for _, c in order], True
        return
    classes = [c for c in kept if c not in ignore]
    finding.palette = [c for c in listed_colours if c in classes] + [c for c in classes if c not in listed_colours]
    finding.classes = [listed_colours.get(c) or f"color_{c[1:]}" for c in finding.palette]
    finding.names_sure = all(c in listed_colours for c in finding.palette)
    _rename(finding, names)


def given_names(names: list[tuple[str, str | None]], classes: list[str], what: str) -> list[str]:
    """The names of ``kseg init --classes`` for ``classes`` (``what`` holds them), one per class.

    Raises:
        InitError: If the count differs.
    """
    if len(names) != len(classes):
        raise InitError(
            f"--classes names {len(names)} classes but {what} {len(classes)} ({', '.join(classes)}); give one name "
            "per class, in that order"
        )
    return [n for n, _ in names]


def _rename(finding: MaskFinding, names: list[tuple[str, str | None]] | None) -> None:
    if names:
        finding.classes, finding.names_sure = given_names(names, finding.classes, "the masks hold"), True


def _gray_masks(
    finding: MaskFinding,
    records: list[dict[str, Any]],
    files: list[str],
    listed: list[tuple[str, str | None]],
    names: list[tuple[str, str | None]] | None,
    palette_masks: bool,
) -> None:
    totals = _tally(records, "values")
    values = sorted(totals)
    if len(values) < 2:
        raise InitError(
            f"every mask ({finding.pattern}) holds only the value {values[0] if values else 'none'}, so there is "
            "nothing to learn; check that these are the label masks"
        )
    top = 65535 if max(values) > 255 else 255
    finding.values = {str(v): totals[v] for v in values}
    if values in ([0, 255], [0, 65535]):
        finding.kind = "binary"  # 0 and white: read as black and white colours
        finding.values = {"#000000": totals[0], "#FFFFFF": totals[values[1]]}
        finding.palette = ["#000000", "#FFFFFF"]
        finding.classes = ["background", "foreground"]
        _name_from_list(finding, listed)
        _rename(finding, names)
        return
    labels = [v for v in values if v != 255]
    if labels and max(labels) < MAX_CLASSES and max(labels) + 1 <= 2 * len(labels) + 2:
        finding.kind = "index"
        n = max(labels) + 1
        finding.ignore_value = 255 if 255 in totals else None
        finding.absent = [k for k in range(n) if k not in totals]
        finding.classes = [f"class_{k}" for k in range(n)]
        if palette_masks:  # palette images whose palettes agree: their colours show the classes
            by_value = {v: c for r in records for (v, _), (c, _) in zip(r["values"], r["colors"], strict=False)}
            finding.palette = [hex_of(by_value.get(k, 0)) for k in range(n)]
        _name_from_list(finding, listed)
        _rename(finding, names)
        return
    if top > 255:
        raise InitError(
            f"the 16-bit masks ({finding.pattern}) hold values {', '.join(map(str, values[:6]))}, which are neither "
            "class indices nor black and white; convert them to class indices 0..K-1"
        )
    finding.kind = "gray"  # grey levels that stand for classes: read as grey colours
    finding.values = {hex_of((v << 16) | (v << 8) | v): totals[v] for v in values}
    finding.palette = list(finding.values)
    finding.classes = [f"gray_{v}" for v in values]
    _rename(finding, names)


def _name_from_list(finding: MaskFinding, listed: list[tuple[str, str | None]]) -> None:
    """Index masks take the names of a class list of as many entries, in its order."""
    if listed and len(listed) == len(finding.classes):
        finding.classes = [n for n, _ in listed]
        finding.names_sure = True
