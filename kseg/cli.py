"""The ``kseg`` command line: thin commands over the library's stage functions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
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

from kseg import __version__
from kseg.config import Config, load_config
from kseg.errors import KsegError

app = typer.Typer(
    name="kseg",
    help="From a Kaggle semantic-segmentation download to a validated, leaderboard-ready submission.csv.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Experiment YAML (default: ./kseg.yaml).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config key: dotted.key=value, value parsed as YAML. Repeatable.", show_default=False
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
NoPostOpt = Annotated[bool, typer.Option("--no-postprocess", help="Ignore <workdir>/postprocess.json.")]
SubmissionArg = Annotated[
    Path | None,
    typer.Argument(help="The submission CSV (default: submission.path, what 'kseg submit' wrote).", show_default=False),
]


@contextlib.contextmanager
def handled(debug: bool = False) -> Iterator[None]:
    """Turn kseg's errors into one red line and exit code 1 (``--debug`` re-raises)."""
    try:
        yield
    except typer.Exit:
        raise
    except KsegError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc.strerror or exc))}{escape(where)}; "
            "check the path, permissions and free disk space "
            "(--debug shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _config(config: Path | None, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator:
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


def _version(value: bool) -> None:
    if value:
        console.print(f"kseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """kseg: split, train, infer, submit."""


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the competition to.")],
    train: Annotated[int, typer.Option("--train", help="Training images.")] = 24,
    test: Annotated[int, typer.Option("--test", help="Test images.")] = 8,
    height: Annotated[int, typer.Option("--height", help="Image height.")] = 64,
    width: Annotated[int, typer.Option("--width", help="Image width.")] = 96,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    debug: DebugOpt = False,
) -> None:
    """Write a small synthetic Kaggle-style aerial segmentation competition, with its kseg.yaml."""
    from kseg.synth import make_competition

    with handled(debug), progress_bar("synth") as update:
        result = make_competition(out_dir, train, test, height, width, classes, seed, on_progress=update)
    console.print(
        f"wrote {result.n_train} train + {result.n_test} test images, {len(result.classes)} classes, to "
        f"{result.root}\nnext: [bold]cd {result.root} && kseg split[/]  (config: {result.config.name})",
        highlight=False,
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


@app.command()
def split(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Scan the training masks and write multilabel-stratified K folds to <workdir>/folds.csv."""
    from kseg.split import make_folds

    with handled(debug):
        cfg = _config(config, set_)
        with progress_bar("scan masks") as update:
            result = make_folds(cfg, on_progress=update)
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
    by = " and ".join(by + (["audit duplicates"] if cfg.split.duplicates else []))
    groups = f", {result.n_groups} groups by {by}" if result.n_groups else ""
    plain = "plain group KFold" if result.n_groups else "plain KFold"
    console.print(
        f"imbalance [bold]{result.imbalance:.1f}%[/] vs {result.plain_imbalance:.1f}% for a {plain} "
        f"(mean relative deviation of per-fold class shares; lower is better){groups}",
        highlight=False,
    )
    if result.stats.unknown:
        shown = ", ".join(
            f"{v} ({p:,} px in {m} masks)"
            for v, (p, m) in sorted(result.stats.unknown.items(), key=lambda kv: -kv[1][0])
        )
        console.print(f"[yellow]mapped to ignore index {cfg.data.ignore_index}:[/] {shown}", highlight=False)
    cached = len(result.folds) - result.stats.n_scanned
    console.print(
        f"wrote {result.path}  (scanned {result.stats.n_scanned} masks, {cached} from cache)", highlight=False
    )


@app.command()
def audit(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: <workdir>/audit).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Audit the data: duplicates across train/test, unreadable files, mask sizes, classes, image sizes."""
    from kseg.audit import run_audit, summary_json

    with handled(debug):
        cfg = _config(config, set_)
        bars: dict[str, object] = {}
        stack = contextlib.ExitStack()
        with stack:

            def update(stage: str, done: int, total: int) -> None:
                if stage not in bars:
                    label = {"hash": "hash images", "masks": "read masks"}.get(stage, stage)
                    bars[stage] = stack.enter_context(progress_bar(label))
                bars[stage](done, total)

            result = run_audit(cfg, out, on_progress=None if as_json else update)
    if as_json:
        print(summary_json(result))
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
    console.print(f"wrote {result.report}", highlight=False)


@app.command()
def tile(
    image: Annotated[Path, typer.Argument(help="A georeferenced raster (GeoTIFF), any number of bands.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for tiles, tiles.csv, tiles.json, data.yaml.")],
    mask: Annotated[Path | None, typer.Option("--mask", help="Class raster (band 1), any resolution.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Tile side in pixels (tile.size).")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Step between tiles (tile.stride).")] = None,
    bands: Annotated[str | None, typer.Option("--bands", help="1-based bands to keep, e.g. 4,3,2.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Cut a large GeoTIFF (and its mask raster) into tiles with windowed reads; needs kseg[geo]."""
    from kseg.config import tile_options
    from kseg.tile import tile_raster

    with handled(debug):
        flags = {"size": size, "stride": stride, "bands": _int_list(bands, "--bands")}
        # the flags are --set tile.* overrides, validated by the same rules
        flag_sets = [f"tile.{k}={v}" for k, v in flags.items() if v is not None]
        options, ignore_index = tile_options(config, [*(set_ or []), *flag_sets])
        with progress_bar("tile") as update:
            result = tile_raster(image, out, options, mask, ignore_index, on_progress=update)
    kept = len(result.index)
    console.print(
        f"{kept} tiles of {options.size} px kept out of {result.n_candidates} "
        f"({result.dropped_nodata} all nodata, {result.dropped_classes} only tile.drop_classes)\n"
        f"per-band mean {_short(result.mean)}, std {_short(result.std)}\n"
        f"wrote {result.out} (tiles.csv, tiles.json, data.yaml: the data section for these tiles)",
        highlight=False,
    )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the resolved config: every default spelled out, paths made absolute."""
    from kseg.config import to_yaml

    with handled(debug):
        cfg = _config(config, set_)
    console.print(to_yaml(cfg), highlight=False, markup=False, end="")


def _render_report(report, path: Path) -> None:
    if report.ok:
        console.print(f"[bold green]valid[/]: {path} ({report.n_rows} rows)", highlight=False)
        return
    table = Table(title=f"{path}: {len(report.problems)} kind(s) of problem", title_justify="left")
    table.add_column("problem", style="bold red")
    table.add_column("rows", justify="right")
    table.add_column("first rows")
    table.add_column("fix")
    for problem in report.problems:
        table.add_row(problem.kind, str(problem.count), escape("\n".join(problem.examples)), escape(problem.fix))
    console.print(table)


@app.command()
def submit(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Submission file (default: submission.path).")] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="Folder of <ImageID>.png label maps (default: <workdir>/predictions)."),
    ] = None,
    upload: Annotated[
        bool, typer.Option("--upload", help="Send the validated file to Kaggle (needs kseg[kaggle]).")
    ] = False,
    competition: Annotated[str, typer.Option("--competition", help="Competition slug, for --upload.")] = "",
    message: Annotated[str, typer.Option("--message", "-m", help="Submission description, for --upload.")] = "kseg",
    no_postprocess: NoPostOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Encode the predicted label maps into a validated submission.csv (optionally uploaded)."""
    from kseg.submission import upload_submission, write_submission

    with handled(debug):
        cfg = _config(config, set_)
        if upload and not competition:
            raise KsegError("--upload needs --competition SLUG (the name in the competition's URL)")
        with progress_bar("read predictions") as update:
            result = write_submission(
                cfg, out=out, predictions=predictions, on_progress=update, postprocess=not no_postprocess
            )
        console.print(result.note, highlight=False)
        took = sum(result.seconds.values())
        console.print(
            f"wrote {result.path}: {result.n_rows} rows for {result.n_images} images, "
            f"{result.n_bytes / 1e6:.1f} MB, {result.empty_rows} empty rows, [bold green]valid[/] "
            f"({took:.2f} s: encode {result.seconds['encode']:.2f} s, validate {result.seconds['validate']:.2f} s)",
            highlight=False,
        )
        if upload:
            upload_submission(result.path, cfg, competition, message)
            console.print(f"uploaded to [bold]{competition}[/] with message {message!r}", highlight=False)


@app.command()
def validate(
    file: SubmissionArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check a submission file against the competition's format; exit 0 only when it is valid."""
    from kseg.submission import validate_file

    with handled(debug):
        cfg = _config(config, set_)
        file = file or cfg.submission.path
        report = validate_file(file, cfg)
    _render_report(report, file)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def score(
    file: SubmissionArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    truth: Annotated[
        Path | None,
        typer.Option("--truth", help="Folder of true masks <ImageID>.png (default: data.test_mask_template)."),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="Score a folder of predicted label maps instead of a CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"score": ..., "per_class": {...}} only.')] = False,
    debug: DebugOpt = False,
) -> None:
    """Score a submission (or a folder of label maps) with the competition metric: mean row Dice."""
    import json

    from kseg.submission import score_file, score_label_maps

    with handled(debug):
        cfg = _config(config, set_)
        if file is not None and predictions is not None:
            raise KsegError("give either a submission FILE or --predictions DIR (with --truth DIR), not both")
        if predictions is not None:
            if truth is None:
                raise KsegError("--predictions needs --truth DIR: the folder of true masks")
            result = score_label_maps(cfg, predictions, truth)
            what = predictions
        else:
            what = file or cfg.submission.path
            result = score_file(what, cfg, truth)
    if as_json:
        typer.echo(json.dumps({"score": result.score, "per_class": result.per_class}))
        return
    console.print(
        f"{what}: score [bold]{result.score:.4f}[/] "
        f"(mean Dice over {len(result.rows)} rows; 1 when both masks are empty)",
        highlight=False,
    )
    table = Table()
    table.add_column("class")
    for column in ("Dice", "IoU", "empty rows", "rows"):
        table.add_column(column, justify="right")
    for name, row in result.per_class.items():
        table.add_row(
            name, f"{row['dice']:.4f}", f"{row['iou']:.4f}", f"{100 * row['empty_share']:.1f}%", str(row["rows"])
        )
    console.print(table)


def _folds_to_train(cfg: Config, fold: str) -> list[int]:
    from kseg.split import read_folds

    n_folds = int(read_folds(cfg)["fold"].max()) + 1
    if fold == "all":
        return list(range(n_folds))
    try:
        return [int(fold)]
    except ValueError:
        raise KsegError(
            f"--fold {fold!r} is neither a fold number nor 'all'; use e.g. --fold 0 or --fold all"
        ) from None


def _train_one(cfg: Config, fold: int, resume: bool, quiet: bool):
    """Train one fold with a rich progress bar (loss, images/s, ETA) and a line per epoch."""
    from kseg.train import train_fold

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s"),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=err_console, transient=True, disable=quiet)
    tasks: dict[int, int] = {}

    def on_step(epoch: int, step: int, steps: int, loss: float, speed: float) -> None:
        if epoch not in tasks:
            description = f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs}"
            tasks[epoch] = progress.add_task(description, total=steps, loss=0.0, speed=0.0)
        progress.update(tasks[epoch], completed=step, loss=loss, speed=speed)

    def on_epoch(stats) -> None:
        mark = " [green]best[/]" if stats.best else ""
        progress.console.print(
            f"fold {fold} epoch {stats.epoch:>3}/{cfg.train.epochs}  train loss {stats.train_loss:.4f}  "
            f"val loss {stats.val_loss:.4f}  val Dice [bold]{stats.val_dice:.4f}[/]  "
            f"{stats.images_per_s:.1f} img/s  {stats.seconds:.0f} s{mark}",
            highlight=False,
        )

    def on_note(text: str) -> None:
        if not quiet:
            progress.console.print(f"[dim]{escape(text)}[/]", highlight=False)

    with progress:
        return train_fold(cfg, fold, resume=resume, on_step=on_step, on_epoch=on_epoch, on_note=on_note)


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    fold: Annotated[
        str, typer.Option("--fold", help="Fold to hold out (0, 1, ...) or 'all' (one after another).")
    ] = "0",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <workdir>/fold<N>/last.pt.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Train a UNet (or any smp model) on the other folds; keep the best epoch by validation Dice."""
    import os

    quiet = int(os.environ.get("RANK", 0)) != 0  # under torchrun only rank 0 talks
    with handled(debug):
        cfg = _config(config, set_)
        results = [_train_one(cfg, f, resume, quiet) for f in _folds_to_train(cfg, fold)]
    if quiet:
        return
    table = Table(title="training", title_justify="left")
    for column in ("fold", "best epoch", "val Dice (best)", "epochs", "outputs"):
        table.add_column(column, justify="right" if column != "outputs" else "left")
    for r in results:
        stop = " (early stop)" if r.stopped_early else ""
        table.add_row(str(r.fold), str(r.best_epoch), f"{r.best_score:.4f}", f"{r.epochs_done}{stop}", str(r.dir))
    console.print(table)
    if len(results) > 1:
        scores = [r.best_score for r in results]
        console.print(f"CV (mean of fold bests): [bold]{sum(scores) / len(scores):.4f}[/]", highlight=False)


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KsegError(f"{what} {text!r} is not a comma-separated list of whole numbers, e.g. 0,1,2") from None


def _float_list(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KsegError(f"{what} {text!r} is not a comma-separated list of numbers, e.g. 1,1,2") from None


FoldsOpt = Annotated[
    str | None, typer.Option("--folds", help="Folds to use, e.g. 0,1,2 (default: every trained fold).")
]


@app.command()
def infer(
    views: Annotated[
        str | None,
        typer.Argument(
            help="Views for --tta: none, hflip, vflip, flip, rot90, d4 (default: infer.tta).", show_default=False
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Test-time augmentation with the config's views (or VIEWS).")
    ] = False,
    images: Annotated[
        Path | None, typer.Option("--images", help="Predict this folder (default: the test set).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <workdir>/predictions).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="A 'kseg export' file: needs no config.")] = None,
    folds: FoldsOpt = None,
    fold_weights: Annotated[str | None, typer.Option("--fold-weights", help="One weight per fold, e.g. 1,1,2.")] = None,
    color: Annotated[bool, typer.Option("--color", help="Also write <id>_color.png in the palette.")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <id>_overlay.png (image | blend).")] = False,
    probs: Annotated[bool, typer.Option("--probs", help="Also write uint8 probabilities <id>.probs.npy.")] = False,
    stitch: Annotated[
        Path | None,
        typer.Option("--stitch", help="Tiles of 'kseg tile': also write the predictions as one GeoTIFF here."),
    ] = None,
    no_postprocess: NoPostOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict the test set (or --images DIR) with the trained folds, optionally with TTA."""
    from kseg.infer import competition_test_images, list_images, load_bundle, load_ensemble, run_inference
    from kseg.tta import views as view_set_of

    with handled(debug):
        if views is not None:
            view_set_of(views)  # a bad name fails before any model is loaded
        if bundle is not None:
            if images is None or out is None:
                raise KsegError("with --bundle, give --images DIR and --out DIR (a bundle carries no data set)")
            ensemble = load_bundle(bundle, set_ or [])
        else:
            cfg = _config(config, set_)
            chosen = _int_list(folds, "--folds") or cfg.infer.folds
            weights = _float_list(fold_weights, "--fold-weights") or cfg.infer.fold_weights
            ensemble = load_ensemble(cfg, chosen, weights)
        cfg = ensemble.cfg
        tiles_dir = None
        if stitch is not None:
            from kseg.tile import META_NAME

            candidates = [d for d in (images, images.parent if images else None) if d and (d / META_NAME).is_file()]
            if not candidates:
                raise KsegError(
                    f"--stitch needs --images pointing at the images of a 'kseg tile' folder (with {META_NAME})"
                )
            tiles_dir = candidates[0]
        if images is not None:
            if out is None:
                raise KsegError("--images needs --out DIR for the predicted masks")
            table = list_images(images)
        else:
            table = competition_test_images(cfg)
        target = out or cfg.predictions_dir
        view_set = views or (cfg.infer.tta if tta else "none")
        with progress_bar("predict") as update:
            result = run_inference(
                ensemble, table, target, view_set, probs, color, overlay, not no_postprocess, on_progress=update
            )
    console.print(
        f"predicted {result.n_images} images with {len(ensemble.models)} model(s) ({result.source}), "
        f"TTA {result.tta} ({result.views} views), {cfg.infer.mode} mode: {result.images_per_s:.2f} images/s\n"
        f"wrote {result.out}",
        highlight=False,
    )
    if result.postprocessed:
        console.print(
            f"post-processing: tuned thresholds and minimum areas applied ({ensemble.source})", highlight=False
        )
    elif ensemble.post is not None:
        console.print("post-processing: off (--no-postprocess)", highlight=False)
    for item in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(item)}", highlight=False)
    if tiles_dir is not None:
        from kseg.tile import stitch as stitch_tiles

        with handled(debug):
            written = stitch_tiles(tiles_dir, result.out, stitch)
        console.print(f"stitched {result.n_images} tiles into {written}", highlight=False)


@app.command()
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write, e.g. model.kseg.")] = Path("model.kseg"),
    folds: FoldsOpt = None,
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Pack the resolved config and the trained folds' best weights into one file for offline inference."""
    from kseg.infer import export_bundle

    with handled(debug):
        cfg = _config(config, set_)
        path = export_bundle(cfg, out, _int_list(folds, "--folds"), half)
    console.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); predict anywhere with "
        f"[bold]kseg infer --bundle {path.name} --images DIR --out DIR[/]",
        highlight=False,
    )


@app.command()
def tune(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Tune per-class probability thresholds and minimum areas on the out-of-fold predictions."""
    from kseg.postprocess import tune as tune_postprocess

    with handled(debug):
        cfg = _config(config, set_)
        with progress_bar("read OOF") as update:
            result = tune_postprocess(cfg, on_progress=update)
    post = result.post
    table = Table(
        title=f"post-processing tuned on {post.n_images} out-of-fold images "
        f"({post.resolution[0]}x{post.resolution[1]})",
        title_justify="left",
    )
    for column in ("class", "threshold", "min area", "OOF Dice before", "after"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, params in post.params.items():
        threshold = f"{params.threshold:.2f}" if params.threshold else "argmax"
        area = f"{100 * params.min_area:.3g}% of image" if params.min_area else "-"
        gain = result.class_after[name] - result.class_before[name]
        after = f"{result.class_after[name]:.4f}" + (f" [green](+{gain:.4f})[/]" if gain > 0 else "")
        table.add_row(name, threshold, area, f"{result.class_before[name]:.4f}", after)
    console.print(table)
    console.print(
        f"OOF mean row Dice {post.oof_score_before:.4f} -> [bold]{post.oof_score_after:.4f}[/] in-sample "
        f"({post.oof_score_after - post.oof_score_before:+.4f}); tuned on one half and scored on the other: "
        f"{result.holdout_before:.4f} -> {result.holdout_after:.4f} ({post.holdout_gain:+.4f})\nwrote {result.path}",
        highlight=False,
    )


@app.command()
def report(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Cross-validation report: per-fold and per-class OOF scores, confusion matrix, worst images."""
    from kseg.report import cv_report

    with handled(debug):
        cfg = _config(config, set_)
        with progress_bar("read OOF") as update:
            result = cv_report(cfg, on_progress=update)
    post = " (with post-processing)" if result.post is not None else ""
    folds = Table(title="out-of-fold score per fold (mean row Dice at data.image_size)", title_justify="left")
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
    console.print(f"confusion matrix: {result.confusion_png}\nworst images: {result.worst_png}", highlight=False)


class _RichReporter:
    """Shows each demo stage as a rich progress bar."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator:
        started = time.perf_counter()
        with progress_bar(name) as update:
            yield update
        console.print(f"[green]done[/] {name} ({time.perf_counter() - started:.0f} s)", highlight=False)

    def note(self, text: str) -> None:
        console.print(f"[dim]{escape(text)}[/]", highlight=False)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder for everything the demo writes.")] = Path("kseg-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic competition.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a previous demo in OUT_DIR.")] = False,
    debug: DebugOpt = False,
) -> None:
    """The whole pipeline on a synthetic competition, on a CPU, in a few minutes."""
    from kseg.demo import run_demo

    with handled(debug):
        result = run_demo(out_dir, _RichReporter(), seed=seed, force=force)
    verdict = "[bold green]valid[/]" if result.valid else f"[bold red]INVALID[/] ({', '.join(result.problems)})"
    lines = [
        f"submission: {result.submission} ({verdict})",
        f"local score against the hidden test truth: [bold]{result.score:.4f}[/] "
        f"(an all-empty submission scores {result.empty_score:.4f})",
        f"cross-validation (out-of-fold): {result.cv_score:.4f}, {result.cv_tuned:.4f} with tuned post-processing",
    ]
    for what, paths in result.pictures.items():
        if paths:
            shown = ", ".join(str(p) for p in paths[:3])
            lines.append(f"{what}: {shown}")
    lines.append(f"finished in {result.seconds / 60:.1f} min; the config is {result.root / 'kseg.yaml'}")
    console.print("\n".join(lines), highlight=False)
