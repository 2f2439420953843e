"""What a valid submission of this competition looks like, from its sample submission and test set, and
the file's bytes (header, then ``id,rle`` per row).

Each id names a test image and a class through ``submission.id_format`` (``{id}_{k}`` by default: image
id, underscore, class index; ``{file}`` is the image's file name and ``{name}`` the class name, as in
``0011165.jpg_Fish``). Masks are run-length encoded at each test image's original size (or
``submission.size``) with the conventions of ``kseg.rle``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kseg.config import Config
from kseg.data import ID, image_size, list_samples
from kseg.errors import SubmissionError
from kseg.rle import Order


@dataclass
class SubmissionFormat:
    """What a valid submission of this competition looks like.

    Attributes:
        header: Column names, as in the sample.
        ids: Row ids in the sample's order.
        image_ids: Test image ids.
        image_paths: Test image files.
        row_image: Index into ``image_ids`` of each row. Shape ``(R,)``.
        row_class: Class index of each row. Shape ``(R,)``.
        shapes: Required ``(H, W)`` of each test image's masks. Shape ``(n_images, 2)``.
        order: Pixel order of the RLE.
        empty: Token written for an empty mask.
        classes: Class names.
    """

    header: list[str]
    ids: list[str]
    image_ids: list[str]
    image_paths: list[str]
    row_image: np.ndarray
    row_class: np.ndarray
    shapes: np.ndarray
    order: Order
    empty: str
    classes: list[str]
    source: str = "the sample submission"

    def row_index(self) -> dict[str, int]:
        return {row_id: i for i, row_id in enumerate(self.ids)}


def load_format(cfg: Config, test: pd.DataFrame | None = None) -> SubmissionFormat:
    """The submission format of ``cfg``'s competition, from its sample submission and test set."""
    test = list_samples(cfg.data, "test") if test is None else test
    image_ids = test[ID].tolist()
    sub = cfg.submission
    expected: dict[str, tuple[int, int]] = {}
    classes = list(cfg.data.classes)
    for i, (image_id, image) in enumerate(zip(image_ids, test["image"], strict=True)):
        file = Path(image).name
        for k in range(cfg.n_classes):
            expected[sub.id_format.format(id=image_id, file=file, k=k, name=classes[k])] = (i, k)
    if len(expected) != len(image_ids) * cfg.n_classes:
        raise SubmissionError(
            f"submission.id_format {sub.id_format!r} gives the same id to two (image, class) pairs; "
            "make it unambiguous, e.g. '{id}_{k}'"
        )
    sample_path = cfg.sample_path
    if sample_path is not None:
        if not sample_path.is_file():
            raise SubmissionError(
                f"sample submission {sample_path} does not exist; set submission.sample (relative to data.root), "
                "or null to write every test image and class"
            )
        sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False, na_filter=False)
        header = list(sample.columns)
        if len(header) < 2:
            raise SubmissionError(
                f"{sample_path} has {len(header)} column(s); a sample submission has an id and a mask column"
            )
        ids = sample[header[0]].tolist()
        dup = sample[header[0]][sample[header[0]].duplicated()]
        if len(dup):
            raise SubmissionError(f"{sample_path} lists id {dup.iloc[0]!r} twice; fix the sample file")
        unknown = [x for x in ids if x not in expected]
        if unknown:
            raise SubmissionError(
                f"{sample_path} id {unknown[0]!r} ({len(unknown)} such) is no test image and class under "
                f"submission.id_format {sub.id_format!r} and {len(image_ids)} test images of data.test_csv; "
                "fix submission.id_format or the test set"
            )
        source = str(sample_path)
    else:
        header = [ID, "EncodedPixels"]
        ids = list(expected)
        source = "submission.id_format"
    pairs = np.array([expected[x] for x in ids], dtype=np.int64).reshape(-1, 2)
    if sub.size == "original":
        with ThreadPoolExecutor(8) as pool:
            shapes = np.array(list(pool.map(lambda p: image_size(Path(p)), test["image"])), dtype=np.int64)
    else:
        shapes = np.tile(np.array(sub.size, dtype=np.int64), (len(image_ids), 1))
    return SubmissionFormat(
        header=header,
        ids=ids,
        image_ids=image_ids,
        image_paths=test["image"].tolist(),
        row_image=pairs[:, 0],
        row_class=pairs[:, 1],
        shapes=shapes.reshape(-1, 2),
        order=sub.pixel_order,
        empty=sub.empty_token,
        classes=list(cfg.data.classes),
        source=source,
    )


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_csv(header: list[str], ids: list[str], masks: list[bytes], empty: str = "") -> bytes:
    """The submission file's bytes: header, then ``id,rle`` per row (``empty`` for an empty mask)."""
    empty_b = empty.encode("ascii")
    parts = [(",".join(_csv_field(h) for h in header) + "\n").encode()]
    for row_id, mask in zip(ids, masks, strict=True):
        parts.append(_csv_field(row_id).encode() + b"," + (mask or empty_b) + b"\n")
    return b"".join(parts)
