"""Views around the submission file: validation, writing, the log, the score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from kseg.render.core import console, metric_name, say


def validation_report(report: Any, path: Path) -> None:
    """``kseg validate``: 'valid', or a table of every kind of problem with examples and the fix."""
    if report.ok:
        say(f"[bold green]valid[/]: {escape(str(path))} ({report.n_rows} rows)")
        return
    table = Table(title=f"{escape(str(path))}: {len(report.problems)} kind(s) of problem", title_justify="left")
    table.add_column("problem", style="bold red")
    table.add_column("rows", justify="right")
    table.add_column("first rows")
    table.add_column("fix")
    for problem in report.problems:
        table.add_row(problem.kind, str(problem.count), escape("\n".join(problem.examples)), escape(problem.fix))
    console.print(table)


def submission_written(result: Any) -> None:
    """``kseg submit``: the post-processing note and what was written."""
    say(escape(result.note))
    took = sum(result.seconds.values())
    say(
        f"wrote {escape(str(result.path))}: {result.n_rows} rows for {result.n_images} images, "
        f"{result.n_bytes / 1e6:.1f} MB, {result.empty_rows} empty rows, [bold green]valid[/] "
        f"({took:.2f} s: encode {result.seconds['encode']:.2f} s, validate {result.seconds['validate']:.2f} s)"
    )


def submission_logged(recorded: Any) -> None:
    """``kseg submit``: the upload, and the log row."""
    if recorded.uploaded:
        values = recorded.entry.values
        say(f"uploaded to [bold]{escape(values['competition'])}[/] with message {values['message']!r}")
        if recorded.public_score:
            say(f"public score: [bold]{escape(recorded.public_score)}[/]")
        elif recorded.score_note:
            say(escape(recorded.score_note))
        else:
            say("public score not ready yet: 'kseg submissions --refresh --competition SLUG' fills it in later")
    cv = recorded.entry.values["cv"] or "n/a"
    say(f"logged in {escape(str(recorded.log))} (sha256 {recorded.entry.sha256[:12]}..., CV {cv})")


def submission_log(table: Any, path: Path) -> None:
    """``kseg submissions``: one row per submission, CV beside the public score."""
    if table.empty:
        say(f"{escape(str(path))}: no submissions logged yet ('kseg submit' adds one row per file)")
        return
    out = Table(title=str(path), title_justify="left")
    columns = {"time": "time", "file": "file", "sha256": "sha256", "tta": "TTA", "postprocess": "post"}
    columns.update(cv="CV", public_score="public", message="message")
    for key, title in columns.items():
        numeric = key in ("cv", "public_score")
        out.add_column(title, justify="right" if numeric else "left", overflow="fold", min_width=6 if numeric else None)
    for _, row in table.iterrows():
        out.add_row(*[escape(str(row[k])[:8] if k == "sha256" else str(row[k])) for k in columns])
    console.print(out)
    say("runs, folds, config hashes and full sha256 sums are in the file")


def score_result(result: Any, what: Path, as_json: bool = False) -> None:
    """``kseg score``: the score, then Dice / IoU / empty-row share per class (or both as one JSON line)."""
    if as_json:
        parts = {"by_usage": result.by_usage} if result.by_usage else {}
        print(json.dumps({"score": result.score, "per_class": result.per_class, **parts}))
        return
    say(
        f"{escape(str(what))}: score [bold]{result.score:.4f}[/] "
        f"({metric_name(result)} over {len(result.rows)} rows; 1 when both masks are empty)"
    )
    if result.by_usage:
        say("  " + ", ".join(f"{escape(part)} [bold]{value:.4f}[/]" for part, value in result.by_usage.items()))
    fbeta = any("fbeta" in row for row in result.per_class.values())
    table = Table()
    table.add_column("class")
    for column in ("F-beta",) * fbeta + ("Dice", "IoU", "empty rows", "rows"):
        table.add_column(column, justify="right")
    for name, row in result.per_class.items():
        cells = [f"{row['fbeta']:.4f}"] if fbeta else []
        cells += [f"{row['dice']:.4f}", f"{row['iou']:.4f}", f"{100 * row['empty_share']:.1f}%", str(row["rows"])]
        table.add_row(name, *cells)
    console.print(table)


def package_result(result: Any) -> None:
    """``kseg package``: what was written, its sizes and time, and the next steps."""
    say(
        f"wrote {escape(str(result.out))} in {result.seconds:.1f} s: dataset/ (bundle {result.bundle_mb:.1f} MB, "
        f"{len(result.wheels)} wheels {result.wheels_mb:.1f} MB, kseg.yaml, dataset-metadata.json) and "
        f"notebook/ ({escape(result.notebook.name)}, kernel-metadata.json)\n"
        f"upload: kaggle datasets create -p {escape(str(result.dataset_dir))} (or: kaggle datasets version), then "
        f"kaggle kernels push -p {escape(str(result.notebook.parent))}; the notebook is {escape(result.kernel_id)}"
    )


def rehearsal_result(result: Any, limit_hours: float | None) -> None:
    """``kseg rehearse``: each cell's time, install, memory, validity and the projection to the full test set."""
    table = Table(title="the notebook, cell by cell (offline)" if result.isolated else "the notebook, cell by cell")
    for column in ("cell", "first line", "seconds", "output (last line)"):
        table.add_column(column, justify="right" if column in ("cell", "seconds") else "left")
    for cell in result.cells:
        last = cell["tail"].splitlines()[-1] if cell["tail"] else ""
        table.add_row(str(cell["index"]), escape(cell["first_line"][:40]), f"{cell['seconds']:.1f}", escape(last[:80]))
    console.print(table)
    verdict = "[green]valid[/]" if result.valid else "[red]INVALID or missing[/]"
    limit = ""
    if limit_hours is not None:
        fits = result.projected_s <= limit_hours * 3600
        limit = f" against the {limit_hours:g} h limit: " + ("[green]fits[/]" if fits else "[red]does not fit[/]")
    say(
        f"submission.csv {verdict}; wheelhouse {result.wheels_mb:.0f} MB installed in {result.install_s:.1f} s; "
        f"peak memory {result.peak_mib:.0f} MiB; {result.n_images} images predicted in {result.predict_s:.1f} s, "
        f"the whole notebook projected to {result.projected_s / 60:.1f} min for the full test set{limit}"
    )
    for note in result.notes:
        say(f"[yellow]{escape(note)}[/]")
