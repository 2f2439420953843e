"""Views of training and its judges: progress, fold results, inference, pseudo-labels, blends, tuning, CV."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kseg.render.core import console, err_console, metric_name, say


class TrainCallbacks(TypedDict):
    """The progress callbacks ``train_fold`` takes, as keyword arguments."""

    on_step: Callable[[int, int, int, float, float], None]
    on_epoch: Callable[[Any], None]
    on_note: Callable[[str], None]


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
    name = "Dice" if not results or results[0].metric == "row_dice" else metric_name(results[0])
    for column in ("fold", "best epoch", f"val {name} (best)", "epochs", "outputs"):
        table.add_column(column, justify="right" if column != "outputs" else "left")
    for r in results:
        stop = " (early stop)" if r.stopped_early else " (time limit)" if r.stopped_by_time else ""
        best = r.average.best_label(r.best_epoch) if r.average is not None else str(r.best_epoch)
        table.add_row(str(r.fold), best, f"{r.best_score:.4f}", f"{r.epochs_done}{stop}", str(r.dir))
    console.print(table)
    for r in results:
        if r.average is not None and not r.average.kept:
            holder = f"the average of epochs {','.join(map(str, r.average.previous))}" if r.average.previous else None
            say(
                f"fold {r.fold}: the average of epochs {','.join(map(str, r.average.epochs))} scored "
                f"{r.average.score:.4f}, below {holder or 'the best epoch'}; best.pt is {holder or 'the best epoch'}"
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
        rules = "thresholds and minimum areas"
        if result.gated:
            rules = f"thresholds, minimum areas and presence gates ({', '.join(result.gated)})"
        say(f"post-processing: tuned {rules} applied ({escape(result.source)})")
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
    for column in ("run", "weight", f"OOF {metric_name(result)}"):
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
    """``kseg tune``: the chosen rule per class (threshold and minimum area, or a presence gate, from the
    mask or the presence head, in front of them), its gain in-sample and on held-out halves, and the rows a
    gate empties."""
    post = result.post
    table = Table(
        title=f"post-processing tuned on {post.n_images} out-of-fold images "
        f"({post.resolution[0]}x{post.resolution[1]})",
        title_justify="left",
    )
    columns = ("class", "threshold", "min area", "presence gate", f"OOF {metric_name(result)} before", "after")
    for column in (*columns, "held-out gain"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, params in post.params.items():
        if name not in result.class_before:  # a class without submission rows: not scored, not tuned
            continue
        threshold = f"{params.threshold:.2f}" if params.threshold else "argmax"
        area = f"{100 * params.min_area:.3g}% of image" if params.min_area else "-"
        gate = "-"
        if params.gate or params.presence:
            reach = f"{100 * params.gate_area:.3g}% of image" if params.gate_area else "a pixel"
            gate = f"head score >= {params.presence:.2f}" if params.presence else f"{reach} >= {params.gate:.2f}"
            if name in result.gate_rows:
                right, wrong = result.gate_rows[name]
                gate += f" (empties {right} right, {wrong} wrong)"
        gain = result.class_after[name] - result.class_before[name]
        after = f"{result.class_after[name]:.4f}" + (f" [green](+{gain:.4f})[/]" if gain > 0 else "")
        held = result.class_holdout_gain.get(name, float("nan"))
        table.add_row(name, threshold, area, gate, f"{result.class_before[name]:.4f}", after, f"{held:+.4f}")
    console.print(table)
    say(
        f"OOF {metric_name(result)} {post.oof_score_before:.4f} -> [bold]{post.oof_score_after:.4f}[/] in-sample "
        f"({post.oof_score_after - post.oof_score_before:+.4f}); tuned on one half and scored on the other: "
        f"{result.holdout_before:.4f} -> {result.holdout_after:.4f} ({post.holdout_gain:+.4f})\n"
        f"wrote {escape(str(result.path))}"
    )


def cv_report(result: Any) -> None:
    """``kseg report``: per-fold and per-class out-of-fold scores, and where the pictures are."""
    post = " (with post-processing)" if result.post is not None else ""
    title = f"out-of-fold score per fold ({metric_name(result)} at data.image_size)"
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
    columns = ("class", "Dice", "IoU", "Dice without post-processing", "empty rows")
    rows = ("both empty", "false positive", "false negative", "both filled")
    for column in (*columns, *rows):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for row in result.classes.itertuples(index=False):
        classes.add_row(
            row[0],
            f"{row.dice:.4f}",
            f"{row.iou:.4f}",
            f"{row.dice_before:.4f}",
            f"{100 * row.empty_share:.1f}%",
            *(str(int(getattr(row, name.replace(" ", "_")))) for name in rows),
        )
    console.print(classes)
    say(f"confusion matrix: {escape(str(result.confusion_png))}\nworst images: {escape(str(result.worst_png))}")
