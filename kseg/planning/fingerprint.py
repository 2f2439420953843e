"""The fingerprint of a download: what ``kseg init`` found in the files, before deciding anything.

Every finding keeps its evidence (``notes``, ``*_evidence``) and whether it is proven or a guess
(``*_sure``), so that the planning rules can explain and flag their choices. The whole fingerprint is
plain data (``to_json`` / ``from_json``): the rules are tested on fingerprints written by hand, without
files.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageSet:
    """One split's images.

    Attributes:
        role: ``train`` or ``test``.
        pattern: Glob layout: the files' pattern (``{tile}/images/{name}.jpg``); csv layout: the path
            template of an id (``images/{id}.png``).
        count: Number of images.
        ids_csv: CSV that lists the ids (csv layout), else ``None``.
        id_column: The id column of ``ids_csv``.
        fields: Pattern fields (``name`` first) and their number of distinct values.
        formats: File suffix -> count.
        modes: Pillow mode -> count (``RGB``, ``L``, ``I;16``, ...).
        sizes: ``HxW`` -> count, the most common first (at most 10).
        median_size: Median ``(height, width)``.
        min_side: Smallest side over the images.
        max_side: Largest side over the images.
        sizes_vary: Whether the images have more than one size.
        channels: Channels of the decoded images (1, 3 or 4).
        bit_depth: 8 or 16.
        mean: Per-channel mean of pixel values scaled to 0-1 (a sample of images), training images only.
        std: Per-channel standard deviation, likewise.
    """

    role: str
    pattern: str
    count: int
    ids_csv: str | None = None
    id_column: str | None = None
    fields: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    median_size: tuple[int, int] = (0, 0)
    min_side: int = 0
    max_side: int = 0
    sizes_vary: bool = False
    channels: int = 3
    bit_depth: int = 8
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class MaskFinding:
    """Training masks stored as image files.

    Attributes:
        pattern: Glob layout: the masks' pattern; csv layout: the path template of an id.
        test_pattern: Hidden test masks (local scoring), if the download has them.
        count: Number of training masks.
        kind: ``index`` (class indices), ``color`` (one colour per class), ``binary`` (0 and the largest
            value of the bit depth: read as black and white colours) or ``gray`` (grey levels other than
            0..K-1: read as grey colours).
        modes: Pillow mode -> count.
        values: What the masks hold: class index (``"3"``) or colour (``"#3C1098"``) -> ``[pixels, masks]``.
        classes: Class names, in class order.
        names_sure: Whether the names come from the download (a palette file) rather than invented.
        palette: Colour of each class (``#RRGGBB``): the colour read (colour kinds) or shown (index masks
            of palette images), else ``None``.
        ignore_colors: Colours read as ``ignore_index`` (a palette file's "unlabeled" entry).
        ignore_value: A value of index masks that marks unlabelled pixels (255), else ``None``.
        stray: Values or colours too rare to be classes (``value -> [pixels, masks]``): ignored.
        palette_file: The class list found in the download (``classes.json``, ``class_dict.csv``), if any.
        palette_agrees: Colours found in both the masks and the palette file.
        palette_only: The palette file's colours that no mask uses (``name -> colour``).
        masks_only: Mask colours the palette file does not list.
        absent: Class indices between 0 and the largest value that no mask holds.
    """

    pattern: str
    count: int
    kind: str
    test_pattern: str | None = None
    modes: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[int]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    names_sure: bool = False
    palette: list[str] | None = None
    ignore_colors: list[str] = field(default_factory=list)
    ignore_value: int | None = None
    stray: dict[str, list[int]] = field(default_factory=dict)
    palette_file: str | None = None
    palette_agrees: list[str] = field(default_factory=list)
    palette_only: dict[str, str] = field(default_factory=dict)
    masks_only: list[str] = field(default_factory=list)
    absent: list[int] = field(default_factory=list)


@dataclass
class TableFinding:
    """Training labels as a table of runs.

    Attributes:
        csv: The table, relative to the download.
        rows: Rows in the table.
        form: ``wide`` (the class in the id, ``0011165.jpg_Fish``) or ``long`` (a class column, or none).
        id_column: The column naming the image (wide: image and class).
        encoded_column: The column holding the runs.
        class_column: Long form: the column holding the class, if any.
        separator: Wide form: what separates image and class in the id.
        class_key: ``name`` or ``index``: how a class is written.
        written: The class cells as written, in class order (names, or numbers in ascending order).
        classes: ``data.classes``: the classes the cells name (plus a background where runs leave pixels
            without a class).
        index_base: ``index`` keys: the number written for ``classes[0]``.
        background: Where the background is not ``classes[0]``: its name (``rle.background``).
        keyed_by: ``file`` (``0011165.jpg``) or ``id`` (the image's id, its stem).
        empty: The token of an empty mask, besides a blank cell.
        order: ``column`` or ``row``: how pixels are numbered.
        order_sure: Whether the order is proven (decoded against mask files, or the shapes leave no doubt).
        order_evidence: How the order was decided, in words.
        first_index: The number of the first pixel, 0 or 1.
        first_sure: Whether that is proven.
        first_evidence: How, in words.
        multilabel: Whether runs of two classes cover the same pixel (overlapping classes).
        overlap_images: Images with such overlaps.
        instances: Whether one (image, class) has several rows (one row per object).
        max_rows: The most rows of one (image, class).
        images: Images the table names.
        empty_rows: Rows whose mask is empty.
        verified: Mask files exist too and the table was decoded against them.
        mismatch: Pixels that disagreed in that check (0 when the table and the masks agree exactly).
    """

    csv: str
    rows: int
    form: str
    id_column: str
    encoded_column: str
    class_column: str | None = None
    separator: str = "_"
    class_key: str = "name"
    written: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    index_base: int = 0
    background: str | None = None
    keyed_by: str = "file"
    empty: str = ""
    order: str = "column"
    order_sure: bool = False
    order_evidence: str = ""
    first_index: int = 1
    first_sure: bool = False
    first_evidence: str = ""
    multilabel: bool = False
    overlap_images: int = 0
    instances: bool = False
    max_rows: int = 1
    images: int = 0
    empty_rows: int = 0
    verified: bool = False
    mismatch: int = 0


@dataclass
class SampleFinding:
    """The sample submission.

    Attributes:
        csv: Its file, relative to the download.
        header: Its columns.
        rows: Its rows.
        layout: ``wide`` (id and mask) or ``long`` (image, mask and class columns).
        id_format: ``submission.id_format`` (``{id}_{k}``, ``{file}_{name}``, ``{file}``, ...).
        class_format: Long layout: ``{k}`` or ``{name}``.
        classes: The classes that get rows (names of ``data.classes``), ``None`` for all.
        rows_per_image: Rows of each test image (the most common count).
        rows_mode: ``all``, ``nonempty`` or ``instances`` (``submission.rows``).
        rows_evidence: Why, in words.
        empty_token: The token of an empty mask.
        images: Test images the sample names.
        size_hint: A hint that the submission's masks are smaller than the images, in words, else ``None``.
        solution: A host's solution file in the submission's layout (``Usage`` column), if the download has one.
    """

    csv: str
    header: list[str]
    rows: int
    layout: str
    id_format: str
    class_format: str = "{k}"
    classes: list[str] | None = None
    rows_per_image: int = 1
    rows_mode: str = "all"
    rows_evidence: str = ""
    empty_token: str = ""
    images: int = 0
    size_hint: str | None = None
    solution: str | None = None


@dataclass
class GroupCandidate:
    """A way to keep related images in one fold.

    Attributes:
        kind: ``field`` (a folder level of the pattern, such as Dubai's tiles) or ``stem`` (ids that share a
            prefix, such as ``<object>_<view>`` or ``<patient>_<slice>``).
        key: The pattern field (``split.group_by``) or the id regex (``split.group_pattern``).
        groups: Number of groups.
        largest: Images in the largest group.
        example: One group's name and size, in words.
    """

    kind: str
    key: str
    groups: int
    largest: int
    example: str = ""


@dataclass
class Structure:
    """What the labels say about the data as a whole.

    Attributes:
        class_pixels: Pixels of each class (``classes`` order; multilabel: each class's own).
        class_images: Training images holding each class.
        images: Training images counted.
        groups: Ways to keep related images together, the strongest first.
        duplicate_groups: Groups of near-identical training images (perceptual hashes, as ``kseg audit``).
        cross_duplicates: Groups that hold training and test images (the test set leaks).
        duplicates_checked: Whether images were hashed at all.
    """

    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    images: int = 0
    groups: list[GroupCandidate] = field(default_factory=list)
    duplicate_groups: int = 0
    cross_duplicates: int = 0
    duplicates_checked: bool = False


@dataclass
class Fingerprint:
    """Everything ``kseg init`` read from a download.

    Attributes:
        root: The download's folder (absolute).
        layout: ``csv`` (ids listed in CSV files) or ``glob`` (files found by pattern).
        train: The training images.
        test: The test images, if any.
        masks: Mask files, if the labels are images.
        table: A runs table, if the labels are (or are also) a table.
        sample: The sample submission, if any.
        structure: Class shares, groups and duplicates.
        other_files: Files read but not used (other CSVs, notes), relative to the download.
        notes: Observations that fit nowhere else.
    """

    root: str
    layout: str
    train: ImageSet
    test: ImageSet | None = None
    masks: MaskFinding | None = None
    table: TableFinding | None = None
    sample: SampleFinding | None = None
    structure: Structure = field(default_factory=Structure)
    other_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """The classes of the labels: the masks' when there are mask files, else the table's."""
        if self.masks is not None:
            return list(self.masks.classes)
        return list(self.table.classes) if self.table is not None else []

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return _build(cls, json.loads(text))


def _build(kind: Any, value: Any) -> Any:
    """A dataclass (or a type built of them) from ``dataclasses.asdict`` output."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(inner[0], value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: _build(hints[k], v) for k, v in value.items() if k in names})  # type: ignore[operator]
    if origin is list:
        (item,) = typing.get_args(kind)
        return [_build(item, v) for v in value]
    if origin is tuple:
        return tuple(value)
    return value
