"""``take_fingerprint``: one pass over a download's files (parallel, cached) that finds its images, labels,
sample submission and structure, each finding with its evidence."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from kseg.common import Progress
from kseg.errors import InitError
from kseg.io import atomic_write_text
from kseg.parallel import parallel_map
from kseg.planning import order as pixel_order
from kseg.planning.files import FileSet, Listing, is_mask_path, list_download
from kseg.planning.fingerprint import Fingerprint, ImageSet, MaskFinding, Structure, TableFinding
from kseg.planning.layout import Csvs, Layout, classify_csvs, find_layout
from kseg.planning.masks import given_names, mask_stats, palette_candidates, read_palette_file, summarise_masks
from kseg.planning.structure import field_groups, mask_class_counts, stem_groups, table_class_counts
from kseg.planning.tables import ImageNames, Runs, read_runs_table, read_sample

CACHE_VERSION = 1
HASH = ("phash", 8, 10)  # kseg audit's defaults: method, hash size, bits apart that still count as copies
THUMB = 64  # side of the thumbnail that gives the intensity statistics


def image_stats(item: tuple[str, bool]) -> dict[str, Any]:
    """Worker: an image's header (size, mode, format), and, when asked, its perceptual hash and the
    per-channel mean and mean square of a thumbnail (0-1 values)."""
    path, decode = item
    try:
        with Image.open(path) as image:
            out: dict[str, Any] = {"mode": image.mode, "height": image.height, "width": image.width}
            out["format"] = image.format or Path(path).suffix.lstrip(".").upper()
            if not decode:
                return out
            image.load()
            rgb = _as_rgb(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return {"error": f"{path} cannot be read ({exc})"}
    import imagehash

    method, size, _ = HASH
    out["hash"] = np.packbits(getattr(imagehash, method)(rgb, hash_size=size).hash.ravel()).tobytes().hex()
    thumb = np.asarray(rgb.resize((THUMB, THUMB)), dtype=np.float64) / 255.0
    out["mean"] = thumb.reshape(-1, 3).mean(0).tolist()
    out["square"] = (thumb.reshape(-1, 3) ** 2).mean(0).tolist()
    return out


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit: scaled to 8 bits as kseg reads it
        array = np.asarray(image, dtype=np.uint32)
        return Image.fromarray(((array + 128) // 257).clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _cached_map(worker, items: list[tuple], cache: dict, kind: str, root: Path, workers: int | None, progress) -> list:
    """``worker`` over files, re-using cached records of files whose size and modification time are unchanged."""
    results: list[Any] = [None] * len(items)
    todo: list[tuple[int, str, os.stat_result]] = []
    for i, item in enumerate(items):
        key, st = f"{kind}:{Path(item[0]).relative_to(root).as_posix()}", os.stat(item[0])
        entry = cache.get(key)
        if entry and entry["mtime"] == st.st_mtime_ns and entry["size"] == st.st_size:
            results[i] = entry["record"]
        else:
            todo.append((i, key, st))
    fresh = parallel_map(worker, [items[i] for i, _, _ in todo], workers, progress)
    for (i, key, st), record in zip(todo, fresh, strict=True):
        results[i] = record
        cache[key] = {"mtime": st.st_mtime_ns, "size": st.st_size, "record": record}
    return results


def _image_set(role: str, files: FileSet, records: list[dict[str, Any]], layout: Layout) -> ImageSet:
    ok = [r for r in records if "error" not in r]
    sizes = Counter(f"{r['height']}x{r['width']}" for r in ok)
    heights = np.array([r["height"] for r in ok] or [0])
    widths = np.array([r["width"] for r in ok] or [0])
    modes = Counter(r["mode"] for r in ok)
    ids_csv = layout.train_csv if role == "train" else layout.test_csv
    result = ImageSet(
        role=role,
        pattern=files.pattern,
        count=len(files.files),
        ids_csv=ids_csv[0] if ids_csv else None,
        id_column=ids_csv[1] if ids_csv else None,
        fields={k: len(set(v)) for k, v in files.fields.items()},
        formats=dict(Counter(PurePosixPath(f).suffix.lower() for f in files.files)),
        modes=dict(modes),
        sizes=dict(sizes.most_common(10)),
        median_size=(int(np.median(heights)), int(np.median(widths))),
        min_side=int(min(heights.min(), widths.min())),
        max_side=int(max(heights.max(), widths.max())),
        sizes_vary=len(sizes) > 1,
        channels=4 if modes.get("RGBA") or modes.get("CMYK") else (3 if set(modes) - {"L", "I", "I;16", "1"} else 1),
        bit_depth=16 if any(m.startswith("I") for m in modes) else 8,
    )
    stats = [r for r in ok if "mean" in r]
    if stats:
        mean = np.mean([r["mean"] for r in stats], axis=0)
        square = np.mean([r["square"] for r in stats], axis=0)
        result.mean = [round(float(v), 4) for v in mean]
        result.std = [round(float(v), 4) for v in np.sqrt(np.maximum(square - mean**2, 1e-12))]
    return result


def _names(files: FileSet | None, ids: list[str], records: list[dict[str, Any]]) -> ImageNames:
    if files is None:
        return ImageNames({})
    names = ImageNames({PurePosixPath(f).name: i for f, i in zip(files.files, ids, strict=True)})
    names.sizes = {i: (r["height"], r["width"]) for i, r in zip(ids, records, strict=True) if "error" not in r}
    return names


def _unreadable(files: list[str], records: list[dict[str, Any]], what: str) -> None:
    bad = [f for f, r in zip(files, records, strict=True) if "error" in r]
    if bad:
        raise InitError(
            f"{what} {bad[0]} cannot be read ({len(bad)} such file(s)); re-download it or move it out of the folder"
        )


def take_fingerprint(
    root: Path,
    *,
    names: list[tuple[str, str | None]] | None = None,
    workers: int | None = None,
    cache: Path | None = None,
    duplicates: bool = True,
    on_progress: Progress | None = None,
) -> Fingerprint:
    """Read a download's files and describe them.

    Args:
        root: The unpacked download.
        names: Class names (``kseg init --classes``), each with its colour or ``None``.
        workers: Processes that read files (default: the CPU count).
        cache: A JSON file of per-file records from an earlier run (re-used where a file is unchanged).
        duplicates: Hash every image to find copies (as ``kseg audit``); off reads headers only.
        on_progress: Optional ``callback(done, total)`` over the files read.

    Raises:
        InitError: If the folder holds no competition, or its files contradict each other.
    """
    root = Path(root).resolve()
    listing = list_download(root)
    if not [f for f in listing.images if not is_mask_path(f)]:
        raise InitError(
            f"{root} holds no image files (.jpg, .png, .tif, ...); point kseg init at the unpacked competition download"
        )
    csvs = classify_csvs(root, listing)
    layout = find_layout(listing, csvs)
    store = _load_cache(cache)
    test_files = layout.test.files if layout.test else []
    mask_files = layout.masks.files if layout.masks else []
    items = [(str(root / f), duplicates) for f in [*layout.train.files, *test_files]]
    total = len(items) + len(mask_files)

    def progress(offset: int) -> Progress | None:  # one bar over images, then masks
        if on_progress is None:
            return None
        return lambda d, _t: on_progress(offset + d, total)

    records = _cached_map(image_stats, items, store, "image", root, workers, progress(0))
    masks = [(str(root / f),) for f in mask_files]
    mask_records = _cached_map(mask_stats, masks, store, "mask", root, workers, progress(len(items)))
    _save_cache(cache, store)
    train_records, test_records = records[: len(layout.train.files)], records[len(layout.train.files) :]
    _unreadable(layout.train.files, train_records, "image")
    _unreadable(test_files, test_records, "image")
    fp = Fingerprint(
        root=str(root),
        layout=layout.layout,
        train=_image_set("train", layout.train, train_records, layout),
        test=_image_set("test", layout.test, test_records, layout) if layout.test else None,
    )
    train_names = _names(layout.train, layout.train_ids, train_records)
    test_names = _names(layout.test, layout.test_ids, test_records)
    runs = _labels(fp, root, listing, csvs, layout, mask_records, train_names, names)
    if fp.masks is None and fp.table is None:
        raise InitError(
            f"{root} holds {len(layout.train.files)} training images but no labels kseg can read: no mask folder whose "
            "files pair with the images by name, and no table of runs naming them"
        )
    _sample(fp, csvs, test_names)
    _structure(fp, layout, mask_records, runs, train_names, [train_records, test_records])
    used = {fp.table.csv if fp.table else None, fp.sample.csv if fp.sample else None}
    used |= {fp.sample.solution if fp.sample else None, fp.train.ids_csv, fp.test.ids_csv if fp.test else None}
    fp.other_files = [c for c in listing.csvs if c not in used]
    fp.notes += [f"{len(layout.train.left_out)} training image(s) at another folder depth left out"] * bool(
        layout.train.left_out
    )
    return fp


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if data.get("version") == CACHE_VERSION else {}


def _save_cache(path: Path | None, store: dict) -> None:
    if path is not None:
        try:
            atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "files": store}))
        except OSError:  # a read-only place: the next run reads the files again
            pass


def _labels(
    fp: Fingerprint,
    root: Path,
    listing: Listing,
    csvs: Csvs,
    layout: Layout,
    mask_records: list[dict[str, Any]],
    train_names: ImageNames,
    names: list[tuple[str, str | None]] | None,
) -> Runs | None:
    """Mask files and a runs table: what each holds; where both exist, the table read against the masks.
    Returns the table's parsed runs."""
    if layout.masks is not None:
        listed, listed_file = [], None
        for rel in palette_candidates(listing.others + csvs.plain):
            listed = read_palette_file(root, rel)
            if listed:
                listed_file = rel
                break
        fp.masks = summarise_masks(mask_records, layout.masks.files, layout.masks.pattern, listed, listed_file, names)
        fp.masks.test_pattern = layout.test_masks.pattern if layout.test_masks else None
    for rel in csvs.runs:
        found = read_runs_table(rel, csvs.tables[rel], csvs.encoded[rel] or "", train_names)
        if found is None:
            continue
        fp.table, runs = found
        if fp.masks is not None and layout.masks is not None:
            foreground = _foreground(root, layout.masks, layout.layout, fp.masks)
            pixel_order.against_masks(fp.table, runs, train_names, foreground, fp.masks.pattern)
        else:
            pixel_order.from_shapes(fp.table, runs, train_names, _gray(root, layout))
            _rename_table(fp.table, names)
        return runs
    return None


def _rename_table(table: TableFinding, names: list[tuple[str, str | None]] | None) -> None:
    if not names:
        return
    renamed = given_names(names, table.classes, f"{table.csv} gives")
    if table.background:
        table.background = renamed[table.classes.index(table.background)]
    if table.class_key == "name":
        mapping = dict(zip(table.classes, renamed, strict=True))
        table.written = [mapping.get(w, w) for w in table.written]
        if any(mapping[c] != c for c in table.classes if c in table.written):
            raise InitError(
                f"{table.csv} names its classes ({', '.join(table.written)}); --classes may rename only classes a "
                "table numbers: leave those names as they are"
            )
    table.classes = renamed


def _foreground(root: Path, files: FileSet, layout: str, masks: MaskFinding):
    """Image id -> the mask's object pixels (neither its most common value nor unlabelled)."""
    by_id = dict(zip(files.ids if layout == "glob" else files.names, files.files, strict=True))
    background = next(iter(sorted(masks.values.items(), key=lambda kv: -kv[1][0])))[0]

    def read(image_id: str) -> np.ndarray | None:
        rel = by_id.get(image_id)
        if rel is None:
            return None
        with Image.open(root / rel) as image:
            if masks.kind == "index":
                values = np.asarray(image)
                return (values != int(background)) & (
                    values != (masks.ignore_value if masks.ignore_value is not None else -1)
                )
            rgb = np.asarray(_as_rgb(image) if image.mode.startswith("I") else image.convert("RGB")).astype(np.uint32)
            packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            return packed != int(background[1:], 16)

    return read


def _gray(root: Path, layout: Layout):
    by_id = dict(zip(layout.train_ids, layout.train.files, strict=True))

    def read(image_id: str) -> np.ndarray | None:
        rel = by_id.get(image_id)
        if rel is None:
            return None
        with Image.open(root / rel) as image:
            return np.asarray(_as_rgb(image).convert("L"), dtype=np.float32)

    return read


def _sample(fp: Fingerprint, csvs: Csvs, test_names: ImageNames) -> None:
    """The sample submission (the first CSV named like one), and a host's solution file in its layout."""
    if not csvs.samples:
        return
    rel = csvs.samples[0]
    if not test_names.files:
        raise InitError(
            f"{rel} names no test image: the download has no test images (a folder whose name says test); add them, "
            "or move the sample out of the folder"
        )
    fp.sample = read_sample(rel, csvs.tables[rel], test_names, fp.classes, fp.table)
    for solution in csvs.solutions:
        first = csvs.tables[solution].columns[0]
        if first == fp.sample.header[0]:
            fp.sample.solution = solution
            break


def _structure(
    fp: Fingerprint,
    layout: Layout,
    mask_records: list[dict[str, Any]],
    runs: Runs | None,
    train_names: ImageNames,
    records: list[list[dict[str, Any]]],
) -> None:
    """Class shares, group candidates and duplicate groups."""
    structure = Structure(images=len(layout.train_ids))
    if fp.masks is not None:
        structure.class_pixels, structure.class_images = mask_class_counts(mask_records, fp.masks)
        structure.images = len(mask_records)
    elif fp.table is not None and runs is not None:
        structure.class_pixels, structure.class_images = table_class_counts(
            fp.table, runs, train_names.sizes, layout.train_ids
        )
    if layout.layout == "glob":
        structure.groups += field_groups(layout.train.fields)
    structure.groups += stem_groups(layout.train_ids)
    _duplicates(structure, layout, records)
    fp.structure = structure


def _duplicates(structure: Structure, layout: Layout, records: list[list[dict[str, Any]]]) -> None:
    from kseg.config import AuditConfig
    from kseg.data.audit import duplicate_groups

    train, test = records
    hashes = [r.get("hash") for r in [*train, *test]]
    if not any(hashes):
        return
    table = pd.DataFrame(
        {
            "ImageID": [*layout.train_ids, *layout.test_ids],
            "set": ["train"] * len(train) + ["test"] * len(test),
            "error": [None if h else "not hashed" for h in hashes],
        }
    )
    method, size, threshold = HASH
    groups = duplicate_groups(
        table,
        [bytes.fromhex(h) if h else None for h in hashes],
        AuditConfig(hash=method, hash_size=size, threshold=threshold),
    )
    structure.duplicates_checked = True
    if len(groups):
        kinds = groups.groupby("group")["kind"].first()
        structure.cross_duplicates = int((kinds == "train+test").sum())
        structure.duplicate_groups = int((kinds == "train").sum())
