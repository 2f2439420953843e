"""Where a download keeps its images, masks and tables: file listing, roles and patterns.

A folder's role comes from its words (``train_masks`` is a mask folder of the training set, ``test_v2``
holds test images); its files' pattern from what varies between them (``Tile 1/images/a.jpg`` and
``Tile 2/images/b.jpg`` give ``{tile}/images/{name}.jpg``). Masks are paired with images by name, allowing a
fixed prefix or suffix (``<name>_mask.gif``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kseg.data.listing import safe_id
from kseg.errors import InitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MASK_WORDS = frozenset(
    "mask masks label labels gt groundtruth annotation annotations seg segmentation truth target targets".split()
)
TEST_WORDS = frozenset(("test", "testing"))
SKIP_DIRS = frozenset(("work", "runs", "submissions", "__pycache__", "node_modules"))
RESERVED_FIELDS = frozenset(("name", "id", "file", "k", "image", "mask"))
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class Listing:
    """The files of a download, relative to its root (POSIX paths), by kind."""

    root: Path
    images: list[str] = field(default_factory=list)
    csvs: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def list_download(root: Path, skip: tuple[str, ...] = ()) -> Listing:
    """Every image, CSV and other small file under ``root`` (hidden folders and kseg's own outputs left out).

    Raises:
        InitError: If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InitError(f"{root} is not a folder; give kseg init the folder of the unpacked download")
    listing = Listing(root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and d not in skip)
        rel_folder = Path(folder).relative_to(root)
        for name in sorted(files):
            if name.startswith("."):
                continue
            rel = (rel_folder / name).as_posix()
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                listing.images.append(rel)
            elif suffix == ".csv":
                listing.csvs.append(rel)
            elif suffix in (".json", ".txt", ".md"):
                listing.others.append(rel)
    return listing


def path_words(rel: str) -> set[str]:
    """Lower-case words of a file's folders and stem (``train_masks/a_mask.gif`` -> train, masks, a, mask)."""
    path = PurePosixPath(rel)
    parts = [*path.parts[:-1], path.stem]
    return {w.lower() for part in parts for w in _WORD.findall(part)}


def folder_words(rel: str) -> set[str]:
    return {w.lower() for part in PurePosixPath(rel).parts[:-1] for w in _WORD.findall(part)}


def is_mask_path(rel: str) -> bool:
    """A mask by its folder (``masks/``, ``train_labels/``) or its stem's last word (``a_mask.png``)."""
    stem_words = _WORD.findall(PurePosixPath(rel).stem)
    return bool(folder_words(rel) & MASK_WORDS) or bool(stem_words and stem_words[-1].lower() in MASK_WORDS)


def is_test_path(rel: str) -> bool:
    return bool(folder_words(rel) & TEST_WORDS)


@dataclass
class FileSet:
    """Files that one pattern describes.

    Attributes:
        pattern: The glob pattern (``{tile}/images/{name}.jpg``).
        files: The files, relative to the root.
        fields: Field -> the value of each file, in pattern order (folder fields first, ``name`` last).
        left_out: Files of the same role the pattern does not describe (another depth).
    """

    pattern: str
    files: list[str]
    fields: dict[str, list[str]]
    left_out: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.fields["name"]

    @property
    def ids(self) -> list[str]:
        """The image ids kseg's glob layout gives these files (fields joined by ``_``)."""
        joined = ["_".join(values) for values in zip(*self.fields.values(), strict=True)]
        return [safe_id(text) for text in joined]

    def key_of(self, i: int) -> tuple[str, ...]:
        """The pairing key of file ``i``: its folder fields and name."""
        return tuple(values[i] for values in self.fields.values())


def field_name(values: list[str], taken: set[str]) -> str:
    """A field's name from its values: their shared leading word (``Tile 1``, ``Tile 2`` -> ``tile``),
    else ``folder``."""
    heads = {match.group(0).lower() if (match := _WORD.match(v)) else "" for v in values}
    name = heads.pop() if len(heads) == 1 else ""
    if not name.isidentifier() or name in RESERVED_FIELDS or name in taken:
        name = "folder"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}{n}", n + 1
    return name


def derive_pattern(files: list[str], prefix: str = "", suffix: str = "") -> FileSet:
    """The pattern of ``files`` (one role): folder levels that vary become fields named by their values,
    the stem (less ``prefix`` and ``suffix``) is ``{name}``, a shared file suffix is literal.

    Files at another depth than the most common one are left out (listed in ``left_out``).
    """
    depths = Counter(len(PurePosixPath(f).parts) for f in files)
    depth = depths.most_common(1)[0][0]
    kept = [f for f in files if len(PurePosixPath(f).parts) == depth]
    left_out = [f for f in files if len(PurePosixPath(f).parts) != depth]
    parts = [PurePosixPath(f).parts for f in kept]
    pieces: list[str] = []
    fields: dict[str, list[str]] = {}
    for level in range(depth - 1):
        values = [p[level] for p in parts]
        if len(set(values)) == 1:
            pieces.append(_literal(values[0]))
        else:
            name = field_name(values, set(fields))
            fields[name] = values
            pieces.append("{" + name + "}")
    stems = [PurePosixPath(p[-1]).stem for p in parts]
    exts = {PurePosixPath(p[-1]).suffix for p in parts}
    ext = exts.pop() if len(exts) == 1 else ".*"
    fields["name"] = [s[len(prefix) : len(s) - len(suffix)] for s in stems]
    pieces.append(_literal(prefix) + "{name}" + _literal(suffix) + _literal(ext))
    return FileSet("/".join(pieces), kept, fields, left_out)


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def mask_affixes(mask_stems: list[str], image_names: set[str]) -> tuple[str, str] | None:
    """The prefix and suffix that turn mask stems into image names (``a_mask`` -> ``a``: ``("", "_mask")``),
    chosen on the first stem and kept if it pairs at least nine masks in ten; ``None`` if none does."""
    if not mask_stems:
        return None
    first = mask_stems[0]
    candidates = sorted(
        {
            (first[:i], first[j:])
            for i in range(len(first))
            for j in range(i + 1, len(first) + 1)
            if first[i:j] in image_names
        },
        key=lambda pa: len(pa[0]) + len(pa[1]),
    )
    for prefix, suffix in candidates:
        paired = sum(
            1
            for s in mask_stems
            if s.startswith(prefix) and s.endswith(suffix) and s[len(prefix) : len(s) - len(suffix)] in image_names
        )
        if paired >= 0.9 * len(mask_stems):
            return prefix, suffix
    return None


def pair_masks(masks: list[str], images: FileSet) -> FileSet | None:
    """The pattern of the masks that pair with ``images`` by name (and folder fields), or ``None``."""
    stems = [PurePosixPath(m).stem for m in masks]
    affixes = mask_affixes(stems, set(images.names))
    if affixes is None:
        return None
    found = derive_pattern(masks, *affixes)
    image_keys = {images.key_of(i) for i in range(len(images.files))}
    mask_fields = [k for k in found.fields if k != "name"]
    image_fields = [k for k in images.fields if k != "name"]
    if len(mask_fields) != len(image_fields):
        return None
    if mask_fields != image_fields:  # same values under other names: take the images' names
        renamed = dict(zip([*mask_fields, "name"], [*image_fields, "name"], strict=True))
        pattern = found.pattern
        for old, new in renamed.items():
            pattern = pattern.replace("{" + old + "}", "{" + new + "}")
        found = FileSet(pattern, found.files, {renamed[k]: v for k, v in found.fields.items()}, found.left_out)
    paired = sum(found.key_of(i) in image_keys for i in range(len(found.files)))
    return found if paired >= 0.9 * len(found.files) else None
