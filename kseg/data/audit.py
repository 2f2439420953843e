"""Data audit: one pass over the training and test images that finds what costs competitors days.

- **Duplicates and near-duplicates** within the training set and across train/test, from perceptual
  hashes (``imagehash``): resized, re-encoded and slightly cropped copies land within a few bits of each
  other. Hashes closer than ``audit.threshold`` bits are linked; linked images form a group (connected
  components), each pictured on a contact sheet. ``split.duplicates: true`` makes each group a split group.
- **Unreadable files** and **image/mask size mismatches** (listed, not fatal: the audit reports all of them).
- **Classes**: per-class image counts and pixel shares (bar chart), classes that barely exist, mask
  values or colours outside the palette with their pixel counts, the ignored share.
- **Image sizes**: the distribution per set.

Everything goes to ``<workdir>/audit/``: ``audit.md`` (the report), ``images.csv``, ``duplicates.csv``,
``classes.csv``, ``classes.png``, ``sizes.png``, ``groups/group_NNN.png``. The folder is built next to
its final place and renamed into it, so a failed audit never leaves a half-written report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from kseg.common import Progress
from kseg.config import AuditConfig, Config, DataConfig
from kseg.data.groups import POPCOUNT, connected_groups, hamming_pairs
from kseg.data.reading import ID, MaskSpec, list_samples
from kseg.data.scan import scan_one, tally_unknown
from kseg.io import atomic_dir
from kseg.parallel import parallel_map
from kseg.plotting import pyplot, to_uint8
from kseg.workspace.workdir import DUPLICATES_NAME, WorkDir

StageProgress = Callable[[str], Progress | None]  # the progress callback of one stage ("hash", "masks")


@dataclass
class AuditResult:
    """What the audit found and where it wrote it.

    Attributes:
        images: One row per image: ``ImageID, set, path, height, width, hash, error``.
        groups: One row per image in a duplicate group: ``group, kind, ImageID, set, distance`` (bits
            from the group's first image); ``kind`` is ``train``, ``test`` or ``train+test``.
        classes: ``class, images, image_share, pixel_share, rare``.
        unknown: ``{value or colour: (pixels, masks)}`` outside the palette.
        mask_problems: One row per bad mask: ``ImageID, problem``.
        ignored_share: Share of training pixels labelled ``data.ignore_index``.
        report: Path of ``audit.md``.
    """

    images: pd.DataFrame
    groups: pd.DataFrame
    classes: pd.DataFrame
    unknown: dict[str, tuple[int, int]]
    mask_problems: pd.DataFrame
    ignored_share: float
    report: Path

    @property
    def n_groups(self) -> int:
        return int(self.groups["group"].nunique()) if len(self.groups) else 0

    @property
    def n_cross(self) -> int:
        """Groups that hold both training and test images (leakage)."""
        if not len(self.groups):
            return 0
        return int(self.groups.loc[self.groups["kind"] == "train+test", "group"].nunique())

    @property
    def unreadable(self) -> pd.DataFrame:
        return self.images[self.images["error"].notna()]


# ------------------------------------------------------------------------------------------ hashing


def _load_for_hash(path: str) -> Image.Image:
    if path.lower().endswith(".npy"):  # multiband (H, W, C) arrays: the mean of the bands, stretched to 0-255
        band = np.load(path).astype(np.float32)
        band = band.mean(-1) if band.ndim == 3 else band
        lo, hi = np.percentile(band, [1, 99])
        return Image.fromarray(to_uint8(np.clip(band, lo, hi)))
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def hash_image(item: tuple[str, str, int]) -> tuple[int, int, bytes | None, str | None]:
    """Worker: ``(height, width, packed hash bits, error)`` of one image."""
    import imagehash

    path, method, hash_size = item
    try:
        image = _load_for_hash(path)
        bits = getattr(imagehash, method)(image, hash_size=hash_size).hash
    except FileNotFoundError:
        return 0, 0, None, f"{path} does not exist"
    except Exception as exc:  # a corrupt file is a finding, not a crash
        return 0, 0, None, f"{path} cannot be read ({type(exc).__name__}: {exc})"
    width, height = image.size
    return height, width, np.packbits(bits.ravel()).tobytes(), None


# ------------------------------------------------------------------------------------------- pictures


def _thumbnail(path: str, height: int) -> Image.Image:
    try:
        image = _load_for_hash(path)
    except Exception:
        return Image.new("RGB", (height, height), (128, 0, 0))
    scale = height / image.height
    return image.convert("RGB").resize((max(1, round(image.width * scale)), height), Image.Resampling.BILINEAR)


def contact_sheet(members: pd.DataFrame, path: Path, height: int = 160) -> None:
    """Thumbnails of one group side by side, captioned with id, set, size and distance."""
    thumbs = [_thumbnail(p, height) for p in members["path"]]
    pad, caption = 6, 30
    width = sum(t.width for t in thumbs) + pad * (len(thumbs) + 1)
    sheet = Image.new("RGB", (width, height + caption + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    for thumb, row in zip(thumbs, members.itertuples(index=False), strict=True):
        sheet.paste(thumb, (x, pad))
        draw.text((x, height + pad + 2), f"{row.ImageID} ({row.set})", fill=(0, 0, 0))
        draw.text((x, height + pad + 15), f"{row.width}x{row.height}, {row.distance} bits", fill=(90, 90, 90))
        x += thumb.width + pad
    sheet.save(path)


def _class_chart(classes: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(classes) + 1.5), sharey=True)
    names = classes["class"][::-1]
    axes[0].barh(names, classes["images"][::-1], color="#4c72b0")
    axes[0].set_xlabel("training images containing the class")
    axes[1].barh(names, 100 * classes["pixel_share"][::-1], color="#dd8452")
    axes[1].set_xlabel("share of labelled training pixels (%)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _size_chart(images: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    ok = images[images["error"].isna()]
    for name, color in (("train", "#4c72b0"), ("test", "#dd8452")):
        part = ok[ok["set"] == name]
        if len(part):
            ax.scatter(part["width"], part["height"], s=18, alpha=0.5, color=color, label=f"{name} ({len(part)})")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- audit


def _test_samples(data: DataConfig) -> pd.DataFrame | None:
    if (data.layout == "csv" and not data.test_csv) or (data.layout == "glob" and not data.test_image_pattern):
        return None
    return list_samples(data, "test")


def run_audit(cfg: Config, out: Path | None = None, on_stage: StageProgress | None = None) -> AuditResult:
    """Audit the training (and test) set of ``cfg`` and write the report.

    Args:
        cfg: The experiment config (``audit`` section for the hash and thresholds).
        out: Report folder (default ``<workdir>/audit``); replaced as a whole when the audit succeeds.
        on_stage: Optional ``on_stage(name)`` returning the progress ``callback(done, total)`` of that
            stage (``hash``, then ``masks``).

    Raises:
        DataError: When the data set cannot be listed at all (missing root, bad templates).
    """
    out = Path(out) if out is not None else WorkDir(cfg.workdir).audit_dir
    train = list_samples(cfg.data, "train")
    test = _test_samples(cfg.data)
    table = pd.DataFrame({ID: train[ID], "set": "train", "path": train["image"].astype(str)})
    if test is not None:
        table = pd.concat([table, pd.DataFrame({ID: test[ID], "set": "test", "path": test["image"].astype(str)})])
    table = table.reset_index(drop=True)
    workers = min(cfg.split.workers or os.cpu_count() or 1, 8)

    def progress(stage: str) -> Progress | None:
        return on_stage(stage) if on_stage else None

    items = [(p, cfg.audit.hash, cfg.audit.hash_size) for p in table["path"]]
    hashed = parallel_map(hash_image, items, workers, progress("hash"))
    table["height"] = [h for h, _, _, _ in hashed]
    table["width"] = [w for _, w, _, _ in hashed]
    table["hash"] = [b.hex() if b is not None else None for _, _, b, _ in hashed]
    table["error"] = [e for _, _, _, e in hashed]
    groups = duplicate_groups(table, [b for _, _, b, _ in hashed], cfg.audit)
    readable_train = train[table["error"].iloc[: len(train)].isna().to_numpy()]
    masks = _mask_findings(cfg.data, cfg.audit, readable_train, workers, progress("masks"))
    with atomic_dir(out) as tmp:  # everything goes into a fresh folder, swapped in at the end
        result = AuditResult(
            table, groups, masks.classes, masks.unknown, masks.problems, masks.ignored_share, out / "audit.md"
        )
        _write_report(cfg.data, cfg.audit, result, masks, tmp)
    return result


def duplicate_groups(table: pd.DataFrame, hashes: list[bytes | None], options: AuditConfig) -> pd.DataFrame:
    """One row per image in a group of near-identical hashes: ``group, kind, ImageID, set, distance``;
    groups across train and test first, then the biggest.

    Args:
        table: ``ImageID, set, error`` per image (``error`` null where the image was hashed).
        hashes: Each image's packed hash bits (``hash_image``), ``None`` where it failed.
        options: The hash size and the distance threshold.
    """
    readable = np.flatnonzero(table["error"].isna().to_numpy())
    n_bytes = (options.hash_size**2 + 7) // 8
    packed = np.zeros((len(readable), n_bytes), np.uint8)
    for row, k in enumerate(readable):
        packed[row] = np.frombuffer(hashes[k] or b"", np.uint8)
    labels = connected_groups(len(readable), hamming_pairs(packed, options.threshold))
    rows = []
    for g in range(labels.max() + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == g)
        first = packed[members[0]]
        sets = set(table["set"].iloc[readable[members]])
        kind = "train+test" if len(sets) == 2 else sets.pop()
        for m in members:
            k = readable[m]
            distance = int(POPCOUNT[first ^ packed[m]].sum())
            rows.append((g, kind, table[ID].iloc[k], table["set"].iloc[k], distance))
    groups = pd.DataFrame(rows, columns=["group", "kind", ID, "set", "distance"])
    if len(groups):  # leakage first, then the biggest groups
        order = groups.groupby("group").agg(cross=("kind", lambda s: s.iloc[0] == "train+test"), n=("set", "size"))
        order = order.sort_values(["cross", "n"], ascending=False).index
        renumber = {old: new + 1 for new, old in enumerate(order)}
        groups["group"] = groups["group"].map(renumber)
        groups = groups.sort_values(["group", "set", "distance", ID], ascending=[True, False, True, True])
        groups = groups.reset_index(drop=True)
    return groups


@dataclass
class _MaskFindings:
    classes: pd.DataFrame
    unknown: dict[str, tuple[int, int]]
    problems: pd.DataFrame
    ignored_share: float
    unknown_pixels: int
    total_pixels: int


def _mask_findings(
    data: DataConfig, audit: AuditConfig, train: pd.DataFrame, workers: int, progress: Progress | None
) -> _MaskFindings:
    """Sizes, classes and unknown colours of the training masks: every problem listed, none fatal."""
    spec = MaskSpec.from_config(data)
    counting = replace(spec, unknown="ignore")  # unknown colours are counted and reported, not fatal
    items = [(r[ID], r["mask"], r["image"], counting, False) for r in train.to_dict("records")]
    scanned = parallel_map(scan_one, items, workers, progress)
    problems = pd.DataFrame([(r[ID], r["error"]) for r in scanned if "error" in r], columns=[ID, "problem"])
    good = [r for r in scanned if "error" not in r]
    k = len(data.classes)
    counts = np.stack([r["counts"] for r in good]).astype(np.int64) if good else np.zeros((0, k), np.int64)
    ignored = int(sum(r["ignore"] for r in good))
    unknown = tally_unknown([r["unknown"] for r in good], spec)
    unknown_pixels = sum(p for p, _ in unknown.values())
    labelled = max(int(counts.sum()), 1)
    present = (counts > 0).sum(0)
    classes = pd.DataFrame(
        {
            "class": data.classes,
            "images": present,
            "image_share": present / max(len(good), 1),
            "pixel_share": counts.sum(0) / labelled,
        }
    )
    classes["rare"] = (classes["images"] < audit.rare_images) | (classes["pixel_share"] < audit.rare_share)
    total = labelled + ignored
    ignored_share = (ignored - unknown_pixels) / total if total else 0.0
    return _MaskFindings(classes, unknown, problems, ignored_share, unknown_pixels, total)


def _write_report(
    data: DataConfig, audit: AuditConfig, result: AuditResult, masks: _MaskFindings, folder: Path
) -> None:
    (folder / "groups").mkdir()
    result.images.to_csv(folder / "images.csv", index=False)
    result.groups.to_csv(folder / DUPLICATES_NAME, index=False)
    result.classes.to_csv(folder / "classes.csv", index=False)
    sheets = []
    info = result.images.set_index(ID)
    for g, members in list(result.groups.groupby("group"))[: audit.max_sheets]:
        detail = members.join(info[["path", "height", "width"]], on=ID)
        name = f"groups/group_{g:03d}.png"
        contact_sheet(detail, folder / name)
        sheets.append((g, name))
    if len(result.classes):
        _class_chart(result.classes, folder / "classes.png")
    _size_chart(result.images, folder / "sizes.png")
    text = _markdown(data, audit, result, sheets, masks.unknown_pixels, masks.total_pixels)
    (folder / "audit.md").write_text(text)


def _markdown(
    data: DataConfig,
    audit: AuditConfig,
    r: AuditResult,
    sheets: list[tuple[int, str]],
    unknown_px: int,
    total_px: int,
) -> str:
    n_train = int((r.images["set"] == "train").sum())
    n_test = int((r.images["set"] == "test").sum())
    lines = [
        "# kseg data audit",
        "",
        f"Data: `{data.root}` ({n_train} training images, {n_test} test images). "
        f"Hash: {audit.hash}, {audit.hash_size**2} bits, near-duplicate threshold "
        f"{audit.threshold} bits (`audit.threshold`).",
        "",
        "## Summary",
        "",
        f"- duplicate / near-duplicate groups: **{r.n_groups}** "
        f"({r.n_cross} across train and test, {len(r.groups)} images)",
        f"- unreadable images: **{len(r.unreadable)}**",
        f"- mask problems (unreadable, size mismatch): **{len(r.mask_problems)}**",
        f"- rare classes: **{int(r.classes['rare'].sum())}** "
        f"({', '.join(r.classes.loc[r.classes['rare'], 'class']) or 'none'})",
        f"- colours / values outside the palette: **{len(r.unknown)}** "
        f"({unknown_px:,} px, {100 * unknown_px / max(total_px, 1):.3f}% of mask pixels)",
        f"- ignored (`data.ignore_index`) pixels besides those: {100 * r.ignored_share:.2f}%",
        "",
        "## Duplicates and near-duplicates",
        "",
    ]
    if not r.n_groups:
        lines += ["None found.", ""]
    else:
        lines += [
            "Groups across train and test leak: a model scores better on those test images than on truly new "
            "ones. Groups within train bias CV when they straddle folds: `kseg split` keeps each group in "
            "one fold with `split.duplicates: true`. The full list is `duplicates.csv`.",
            "",
            "| group | kind | images | max distance (bits) |",
            "| ---: | --- | --- | ---: |",
        ]
        for g, members in r.groups.groupby("group"):
            ids = ", ".join(f"`{i}`" for i in members[ID].head(6)) + (" ..." if len(members) > 6 else "")
            lines.append(f"| {g} | {members['kind'].iloc[0]} | {ids} | {members['distance'].max()} |")
        lines.append("")
        for g, name in sheets:
            lines += [f"![group {g}]({name})", ""]
        if r.n_groups > len(sheets):
            lines += [f"({r.n_groups - len(sheets)} more groups not pictured; raise `audit.max_sheets`.)", ""]
    lines += _problem_lines(data.unknown_labels, r)
    lines += _class_lines(audit, r) + _size_lines(r)
    return "\n".join(lines)


def _problem_lines(unknown_labels: str, r: AuditResult) -> list[str]:
    lines: list[str] = []
    lines += ["## Unreadable images", ""]
    if len(r.unreadable):
        lines += [f"- `{row.ImageID}` ({row.set}): {row.error}" for row in r.unreadable.itertuples()] + [""]
    else:
        lines += ["None.", ""]
    lines += ["## Masks", ""]
    if len(r.mask_problems):
        lines += [f"- `{row.ImageID}`: {row.problem}" for row in r.mask_problems.itertuples()] + [""]
    else:
        lines += ["Every readable image has a readable mask of its size.", ""]
    if r.unknown:
        lines += [
            "Mask values or colours that map to no class (trained on as ignored only with "
            f"`data.unknown_labels: ignore`; now `{unknown_labels}`):",
            "",
            "| value | pixels | masks |",
            "| --- | ---: | ---: |",
        ]
        for value, (pixels, masks) in sorted(r.unknown.items(), key=lambda kv: -kv[1][0]):
            lines.append(f"| `{value}` | {pixels:,} | {masks} |")
        lines.append("")
    return lines


def _class_lines(audit: AuditConfig, r: AuditResult) -> list[str]:
    lines = [
        "## Classes",
        "",
        f"A class is flagged rare below {audit.rare_images} images or {100 * audit.rare_share:g}% of "
        "the labelled pixels (`audit.rare_images`, `audit.rare_share`).",
        "",
        "| class | images | image share | pixel share | rare |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in r.classes.itertuples():
        lines.append(
            f"| {row._1} | {row.images} | {100 * row.image_share:.1f}% | {100 * row.pixel_share:.3f}% | "
            f"{'**rare**' if row.rare else ''} |"
        )
    return [*lines, "", "![classes](classes.png)", ""]


def _size_lines(r: AuditResult) -> list[str]:
    lines = ["## Image sizes", ""]
    ok = r.images[r.images["error"].isna()]
    sizes = ok.groupby(["set", "height", "width"]).size().rename("images").reset_index()
    sizes = sizes.sort_values(["set", "images"], ascending=[False, False])
    lines += ["| set | height x width | images |", "| --- | --- | ---: |"]
    for row in sizes.head(20).itertuples():
        lines.append(f"| {row.set} | {row.height} x {row.width} | {row.images} |")
    if len(sizes) > 20:
        lines.append(f"| ... | {len(sizes) - 20} more sizes | |")
    lines += ["", "![sizes](sizes.png)", ""]
    return lines


def summary_json(result: AuditResult) -> str:
    return json.dumps(
        {
            "groups": result.n_groups,
            "cross_groups": result.n_cross,
            "unreadable": len(result.unreadable),
            "mask_problems": len(result.mask_problems),
            "rare_classes": result.classes.loc[result.classes["rare"], "class"].tolist(),
            "unknown": {k: {"pixels": p, "masks": m} for k, (p, m) in result.unknown.items()},
            "report": str(result.report),
        }
    )
