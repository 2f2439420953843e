"""Where a download keeps its training and test images and their masks: its CSV files by role (sample
submission, host's solution, runs tables, id lists), and the layout: ids listed in a CSV (``csv``) or files
found by pattern (``glob``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from kseg.errors import InitError
from kseg.planning.files import (
    FileSet,
    Listing,
    derive_pattern,
    is_mask_path,
    is_test_path,
    mask_affixes,
    pair_masks,
)
from kseg.planning.tables import encoded_column, read_csv


@dataclass
class Csvs:
    """The download's CSV files by role."""

    tables: dict[str, pd.DataFrame]
    encoded: dict[str, str | None]
    samples: list[str] = field(default_factory=list)
    solutions: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)


def classify_csvs(root: Path, listing: Listing) -> Csvs:
    tables = {rel: read_csv(root / rel) for rel in listing.csvs}
    csvs = Csvs(tables, {rel: encoded_column(t) for rel, t in tables.items()})
    for rel, table in tables.items():
        name = PurePosixPath(rel).stem.lower()
        enc = csvs.encoded[rel]
        if enc and "usage" in (c.lower() for c in table.columns):
            csvs.solutions.append(rel)
        elif enc and "submission" in name:
            csvs.samples.append(rel)
        elif enc and (table[enc].str.strip() != "").any():
            csvs.runs.append(rel)
        else:
            csvs.plain.append(rel)
    csvs.samples.sort(key=lambda r: ("sample" not in r.lower(), r.count("/"), r))
    return csvs


@dataclass
class Layout:
    """Where the images and masks are: the layout, each split's files and their patterns."""

    layout: str
    train: FileSet
    test: FileSet | None
    train_ids: list[str]
    test_ids: list[str]
    train_csv: tuple[str, str] | None = None
    test_csv: tuple[str, str] | None = None
    masks: FileSet | None = None
    test_masks: FileSet | None = None


def _id_lists(csvs: Csvs, images: list[str]) -> dict[str, tuple[str, str, list[str]]]:
    """CSV files whose column lists image stems: ``role -> (csv, column, files)``."""
    by_stem: dict[str, list[str]] = {}
    for rel in images:
        by_stem.setdefault(PurePosixPath(rel).stem, []).append(rel)
    found: dict[str, tuple[str, str, list[str]]] = {}
    for rel in csvs.plain:
        table = csvs.tables[rel]
        for column in table.columns:
            values = table[column].tolist()
            if not values or len(set(values)) != len(values) or not all(v in by_stem for v in values):
                continue
            files = [by_stem[v][0] for v in values]
            role = "test" if "test" in PurePosixPath(rel).stem.lower() else "train"
            found.setdefault(role, (rel, column, files))
            break
    return found


def _csv_template(files: list[str], ids: list[str], what: str) -> FileSet:
    folders = {str(PurePosixPath(f).parent) for f in files}
    exts = {PurePosixPath(f).suffix for f in files}
    if len(folders) != 1 or len(exts) != 1:
        raise InitError(
            f"the {what} images listed in the CSV lie in {len(folders)} folders with {len(exts)} suffixes; kseg init "
            "needs them in one folder (or write data.image_template by hand)"
        )
    folder = folders.pop()
    pattern = ("" if folder == "." else folder + "/") + "{id}" + exts.pop()
    return FileSet(pattern, files, {"name": ids})


def find_layout(listing: Listing, csvs: Csvs) -> Layout:
    images = [f for f in listing.images if not is_mask_path(f)]
    masks = [f for f in listing.images if is_mask_path(f)]
    lists = _id_lists(csvs, images)
    if "train" in lists:
        rel, column, files = lists["train"]
        ids = csvs.tables[rel][column].tolist()
        layout = Layout("csv", _csv_template(files, ids, "training"), None, ids, [], train_csv=(rel, column))
        if "test" in lists:
            trel, tcolumn, tfiles = lists["test"]
            layout.test_ids = csvs.tables[trel][tcolumn].tolist()
            layout.test = _csv_template(tfiles, layout.test_ids, "test")
            layout.test_csv = (trel, tcolumn)
        layout.masks = _csv_masks(masks, layout.train_ids)
        layout.test_masks = _csv_masks(masks, layout.test_ids) if layout.test_ids else None
        return layout
    train = [f for f in images if not is_test_path(f)]
    test = [f for f in images if is_test_path(f)]
    if not train:
        raise InitError(
            f"{listing.root} holds test images only ({len(test)}); kseg init needs the training images too (a folder "
            "whose name does not say test)"
        )
    train_set = derive_pattern(train)
    test_set = derive_pattern(test) if test else None
    layout = Layout("glob", train_set, test_set, train_set.ids, test_set.ids if test_set else [])
    layout.masks = pair_masks([m for m in masks if not is_test_path(m)], train_set)
    if test_set is not None:
        layout.test_masks = pair_masks([m for m in masks if is_test_path(m)], test_set)
    return layout


def _csv_masks(masks: list[str], ids: list[str]) -> FileSet | None:
    """The mask folder (one suffix) whose files pair with ``ids``, as a template ``masks/{id}.png``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for rel in masks:
        path = PurePosixPath(rel)
        groups.setdefault((str(path.parent), path.suffix), []).append(rel)
    wanted = set(ids)
    for (folder, ext), files in sorted(groups.items()):
        stems = [PurePosixPath(f).stem for f in files]
        affixes = mask_affixes(stems, wanted)
        if affixes is None:
            continue
        prefix, suffix = affixes
        by_id = {s[len(prefix) : len(s) - len(suffix)]: f for s, f in zip(stems, files, strict=True)}
        if sum(i in by_id for i in ids) >= 0.9 * len(ids):
            pattern = ("" if folder == "." else folder + "/") + prefix + "{id}" + suffix + ext
            return FileSet(pattern, [by_id[i] for i in ids if i in by_id], {"name": [i for i in ids if i in by_id]})
    return None
