"""``kseg init``: what it found in the download and what it decided, each with its evidence."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from kseg.render.core import console, say


def _found_rows(fp: Any) -> list[tuple[str, str]]:
    rows = []
    train = fp.train
    size = f"median {train.median_size[0]}x{train.median_size[1]}" + (", sizes vary" if train.sizes_vary else "")
    modes = ", ".join(f"{m} {c}" for m, c in train.modes.items())
    rows.append(("training images", f"{train.count} {train.pattern}  ({size}; {modes}; {train.bit_depth}-bit)"))
    if fp.test is not None:
        rows.append(("test images", f"{fp.test.count} {fp.test.pattern}"))
    else:
        rows.append(("test images", "none (predict a folder with kseg infer --images)"))
    if fp.masks is not None:
        m = fp.masks
        rows.append(("masks", f"{m.count} {m.pattern}: {m.kind} ({', '.join(f'{k} {v}' for k, v in m.modes.items())})"))
        shown = ", ".join(f"{v} ({pm[1]} masks)" for v, pm in list(m.values.items())[:8])
        rows.append(("mask values", shown + (" ..." if len(m.values) > 8 else "")))
        if m.palette_file:
            rows.append(("class file", f"{m.palette_file}: agrees on {len(m.palette_agrees)} colour(s), "
                         f"{len(m.palette_only)} listed but unused, {len(m.masks_only)} unlisted"))  # fmt: skip
    if fp.table is not None:
        t = fp.table
        rows.append(("runs table", f"{t.csv}: {t.rows} rows, {t.form}, classes {', '.join(t.written) or '(one)'}"))
        rows.append(("pixel order", f"{t.order}-major from {t.first_index}: {t.order_evidence}"))
        if t.multilabel or t.instances:
            extra = [f"overlaps in {t.overlap_images} images"] * t.multilabel + [
                f"up to {t.max_rows} rows per object class"
            ] * t.instances
            rows.append(("table rows", "; ".join(extra)))
    if fp.sample is not None:
        s = fp.sample
        rows.append(("sample submission", f"{s.csv}: {s.rows} rows, {s.layout}, ids {s.id_format}, rows {s.rows_mode}"))
    st = fp.structure
    if st.class_images and st.images:
        shares = ", ".join(f"{n} {k / st.images:.0%}" for n, k in zip(fp.classes, st.class_images, strict=False))
        rows.append(("images per class", shares))
    for g in st.groups:
        rows.append(("groups", f"{g.groups} by {g.kind} {g.key} ({g.example})"))
    if st.duplicates_checked:
        rows.append(
            ("duplicates", f"{st.duplicate_groups} groups in training, {st.cross_duplicates} across train and test")
        )
    rows += [("note", n) for n in fp.notes]
    return rows


def init_result(result: Any) -> None:
    """``kseg init``: two tables (found, decided) and where the config went."""
    from kseg.planning.writer import scalar

    found = Table(title=f"what kseg init found in {escape(result.fingerprint.root)}")
    found.add_column("what")
    found.add_column("found", overflow="fold")
    for what, text in _found_rows(result.fingerprint):
        found.add_row(what, escape(text))
    console.print(found)
    decided = Table(title="what it decided (CHECK: a guess; ?: a question left in the config)")
    decided.add_column("key")
    decided.add_column("value", overflow="fold")
    decided.add_column("because", overflow="fold")
    for d in result.plan.decisions:
        mark = "?" if d.question else ("CHECK" if not d.sure else "")
        style = "yellow" if mark else ""
        value = "" if d.question else scalar(d.value)
        decided.add_row(
            f"[{style}]{escape(d.key)}[/]" if style else escape(d.key),
            escape(value),
            f"{mark + ': ' if mark else ''}{escape(d.reason)}",
        )
    console.print(decided)
    flagged = len(result.plan.flagged)
    where = f"wrote {escape(str(result.config))}" if result.config else "wrote nothing"
    say(f"{where} in {result.seconds:.1f} s; {flagged} key(s) to check (CHECK / ?); next: [bold]kseg split[/]")
