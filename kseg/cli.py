"""The ``kseg`` command line: thin commands that load the config, call one stage function, and hand
its result to ``kseg.render``; kseg's errors become one red line and a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from kseg import __version__, render
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
        render.error_line(str(exc))
        raise typer.Exit(1) from None
    except OSError as exc:
        if debug:
            raise
        render.os_error(exc)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        render.err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _config(config: Path | None, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


def _version(value: bool) -> None:
    if value:
        render.say(f"kseg {__version__}")
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
    style: Annotated[
        str | None,
        typer.Option(
            "--style",
            help="A competition's shape, with the host's solution.csv: drone (label images, ids <image>_<k>) or "
            "severstal (JPEGs, runs table, long non-empty submission). Default: drone without solution.csv.",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Write a small synthetic Kaggle-style aerial segmentation competition, with its kseg.yaml."""
    from kseg.styles import make_styled
    from kseg.synth import make_competition

    with handled(debug), render.progress_bar("synth") as update:
        if style is None:
            result = make_competition(out_dir, train, test, height, width, classes, seed, on_progress=update)
        else:
            result = make_styled(out_dir, style, train, test, height, width, classes, seed, on_progress=update)
    render.say(
        f"wrote {result.n_train} train + {result.n_test} test images, {len(result.classes)} classes, to "
        f"{result.root}\nnext: [bold]cd {result.root} && kseg split[/]  (config: {result.config.name})"
    )


@app.command()
def split(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Scan the training masks and write multilabel-stratified K folds to <workdir>/folds.csv."""
    from kseg.split import make_folds

    with handled(debug):
        cfg = _config(config, set_)
        with render.progress_bar("scan masks") as update:
            result = make_folds(cfg, on_progress=update)
    render.split_result(result, cfg)


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
        with render.stage_bars() as bar_for:
            result = run_audit(cfg, out, on_stage=None if as_json else bar_for)
    render.audit_result(result, summary_json(result) if as_json else None)


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
    """Cut a large GeoTIFF (and its mask raster) into tiles with windowed reads; needs kseg\\[geo]."""
    from kseg.config import tile_options
    from kseg.tile import tile_raster

    with handled(debug):
        flags = {"size": size, "stride": stride, "bands": _numbers(bands, "--bands", example="4,3,2")}
        # the flags are --set tile.* overrides, validated by the same rules
        flag_sets = [f"tile.{k}={v}" for k, v in flags.items() if v is not None]
        options, ignore_index = tile_options(config, [*(set_ or []), *flag_sets])
        with render.progress_bar("tile") as update:
            result = tile_raster(image, out, options, mask, ignore_index, on_progress=update)
    render.tile_result(result, options.size)


@app.command("weights")
def list_weights(debug: DebugOpt = False) -> None:
    """List pretrained weights installed as packages, spelled as model.encoder_weights takes them."""
    from kseg.weights import installed_weights

    with handled(debug):
        found = installed_weights()
    render.installed_weights(found)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the resolved config: every default spelled out, paths made absolute."""
    from kseg.config import to_yaml

    with handled(debug):
        cfg = _config(config, set_)
    render.console.print(to_yaml(cfg), highlight=False, markup=False, end="")


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
        bool, typer.Option("--upload", help="Send the validated file to Kaggle (needs kseg\\[kaggle]).")
    ] = False,
    competition: Annotated[str, typer.Option("--competition", help="Competition slug, for --upload.")] = "",
    message: Annotated[str, typer.Option("--message", "-m", help="Submission description, for --upload.")] = "kseg",
    no_postprocess: NoPostOpt = False,
    fill_empty: Annotated[
        bool, typer.Option("--fill-empty", help="Submit empty masks for test images kseg infer skipped.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Encode the predicted label maps into a validated submission.csv (optionally uploaded); log it."""
    from kseg.submission import log_path, read_log, record_submission, write_submission

    with handled(debug):
        cfg = _config(config, set_)
        if upload and not competition:
            raise KsegError("--upload needs --competition SLUG (the name in the competition's URL)")
        read_log(log_path(out or cfg.submission.path))  # a foreign log.csv stops us before anything is written
        with render.progress_bar("read predictions") as update:
            result = write_submission(
                cfg,
                out=out,
                predictions=predictions,
                on_progress=update,
                postprocess=not no_postprocess,
                fill_empty=fill_empty,
            )
        render.submission_written(result)
        recorded = record_submission(
            cfg,
            result.path,
            result.predictions,
            result.postprocess,
            competition=competition if upload else "",
            message=message,
        )
        render.submission_logged(recorded)


@app.command()
def submissions(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    log: Annotated[
        Path | None, typer.Option("--log", help="The log file (default: log.csv beside submission.path).")
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Fill missing public scores from Kaggle (needs kseg\\[kaggle]).")
    ] = False,
    competition: Annotated[str, typer.Option("--competition", help="Competition slug, for --refresh.")] = "",
    debug: DebugOpt = False,
) -> None:
    """The submission log: every file kseg submit wrote, its runs, TTA and CV beside the public score."""
    from kseg.submission import fill_public_scores, kaggle, log_path, read_log

    with handled(debug):
        path = log or log_path(_config(config, set_).submission.path)
        if refresh:
            if not competition:
                raise KsegError("--refresh needs --competition SLUG (the name in the competition's URL)")
            filled = fill_public_scores(path, kaggle.kaggle_api(), competition)
            render.say(f"filled {filled} public score(s) from Kaggle")
        table = read_log(path)
    render.submission_log(table, path)


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
    render.validation_report(report, file)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def score(
    file: SubmissionArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="Folder of true masks <ImageID>.png, or a solution CSV in the submission's layout "
            "(default: submission.solution, else data.test_mask_template).",
        ),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="Score a folder of predicted label maps instead of a CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"score": ..., "per_class": {...}} only.')] = False,
    debug: DebugOpt = False,
) -> None:
    """Score a submission (or a folder of label maps) with the competition metric (submission.metric)."""
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
    render.score_result(result, what, as_json)


def _deadline(cfg: Config) -> float | None:
    """``train.time_limit`` from now, one budget for every fold of the command."""
    limit = cfg.train.time_limit
    return time.monotonic() + limit if limit is not None else None


def _out_of_time(results: list, deadline: float | None) -> bool:
    """Whether the next fold must not start: the last one stopped at the limit, or the limit has passed."""
    late = deadline is not None and time.monotonic() >= deadline
    return bool(results) and (results[-1].stopped_by_time or late)


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
    from kseg.train import FoldResult, folds_to_train, train_fold
    from kseg.workdir import WorkDir

    quiet = int(os.environ.get("RANK", 0)) != 0  # under torchrun only rank 0 talks
    results: list[FoldResult] = []
    with handled(debug):
        cfg = _config(config, set_)
        deadline = _deadline(cfg)
        folds = folds_to_train(cfg, fold)
        for f in folds:
            if _out_of_time(results, deadline):
                break
            # --fold all --resume: folds never started start now; a single fold must have its last.pt
            again = resume and (len(folds) == 1 or WorkDir(cfg.workdir).last(f).is_file())
            with render.training_progress(f, cfg.train.epochs, quiet) as callbacks:
                results.append(train_fold(cfg, f, again, **callbacks, deadline=deadline))
    if not quiet:
        render.training_results(results, folds)


def _numbers(text: str | None, what: str, kind: type = int, example: str = "0,1,2") -> list | None:
    """A comma-separated option (``--folds 0,1``: whole numbers; ``kind=float``: any numbers)."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "whole numbers" if kind is int else "numbers"
        raise KsegError(f"{what} {text!r} is not a comma-separated list of {noun}, e.g. {example}") from None


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
    no_blend: Annotated[
        bool, typer.Option("--no-blend", help="Predict with this run's folds even where blend.json exists.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Predict the test set (or --images DIR) with the trained folds (or the blend), optionally with TTA."""
    from kseg.ensemble import load_bundle, load_ensemble
    from kseg.infer import OutputOptions, competition_test_images, list_images, run_inference
    from kseg.tile import tiles_folder
    from kseg.tta import views as view_set_of
    from kseg.workdir import default_predictions

    with handled(debug):
        if views is not None:
            view_set_of(views)  # a bad name fails before any model is loaded
        if bundle is not None:
            if images is None or out is None:
                raise KsegError("with --bundle, give --images DIR and --out DIR (a bundle carries no data set)")
            ensemble = load_bundle(bundle, set_ or [])
        else:
            cfg = _config(config, set_)
            chosen = _numbers(folds, "--folds") or cfg.infer.folds
            weights = _numbers(fold_weights, "--fold-weights", float, "1,1,2") or cfg.infer.fold_weights
            ensemble = load_ensemble(cfg, chosen, weights, use_blend=not no_blend)
        cfg = ensemble.cfg
        tiles_dir = tiles_folder(images) if stitch is not None else None
        if images is not None:
            if out is None:
                raise KsegError("--images needs --out DIR for the predicted masks")
            table = list_images(images)
        else:
            table = competition_test_images(cfg)
        target = out or default_predictions(cfg)
        view_set = views or (cfg.infer.tta if tta else "none")
        outputs = OutputOptions(probs=probs, color=color, overlay=overlay)
        with render.progress_bar("predict") as update:
            result = run_inference(
                ensemble, table, target, view_set, outputs=outputs, postprocess=not no_postprocess, on_progress=update
            )
    render.inference_result(result, len(ensemble.models), cfg.infer.mode, ensemble.post is not None)
    if tiles_dir is not None and stitch is not None:
        from kseg.tile import stitch as stitch_tiles

        with handled(debug):
            written = stitch_tiles(tiles_dir, result.out, stitch)
        render.say(f"stitched {result.n_images} tiles into {written}")


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
    from kseg.ensemble import export_bundle

    with handled(debug):
        cfg = _config(config, set_)
        path = export_bundle(cfg, out, _numbers(folds, "--folds"), half)
    render.say(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); predict anywhere with "
        f"[bold]kseg infer --bundle {path.name} --images DIR --out DIR[/]"
    )


@app.command()
def tune(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Tune per-class probability thresholds and minimum areas on the out-of-fold predictions."""
    from kseg.postprocess import tune as tune_postprocess

    with handled(debug):
        cfg = _config(config, set_)
        with render.progress_bar("read OOF") as update:
            result = tune_postprocess(cfg, on_progress=update)
    render.tune_result(result)


@app.command()
def pseudo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Unlabelled images to pseudo-label (default: the test set).")
    ] = None,
    fold: Annotated[str, typer.Option("--fold", help="Fold to train again (0, 1, ...) or 'all'.")] = "all",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Keep pixels whose top probability reaches this (0-1).")
    ] = None,
    share: Annotated[
        float | None, typer.Option("--share", help="Share of every training batch given to them (0-1).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Work folder of the new run (default: <workdir>-pseudo).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Label with the config's TTA views.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the new run's folds from last.pt.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Pseudo-label the test set with each fold's own model, then train the folds again with them."""
    from kseg.infer import competition_test_images, list_images
    from kseg.pseudo import label_fold, prepare_run, pseudo_rows
    from kseg.train import FoldResult, folds_to_train, train_fold

    options = {"pseudo.threshold": threshold, "pseudo.share": share, "pseudo.workdir": out}
    overrides = [*(set_ or []), *(f"{k}={v}" for k, v in options.items() if v is not None)]
    results: list[FoldResult] = []
    with handled(debug):
        cfg = _config(config, overrides)
        run_cfg = prepare_run(cfg)
        table = list_images(images) if images is not None else competition_test_images(cfg)
        folds = folds_to_train(cfg, fold)
        deadline = _deadline(cfg)
        for f in folds:
            if _out_of_time(results, deadline):
                break
            with render.progress_bar(f"pseudo-label fold {f}") as update:
                labels = label_fold(
                    cfg, f, table, run_cfg.workdir, tta=cfg.infer.tta if tta else "none", on_progress=update
                )
            render.pseudo_labels(labels, cfg.pseudo.threshold)
            again = resume and run_cfg.workdir.joinpath(f"fold{f}", "last.pt").is_file()
            with render.training_progress(f, cfg.train.epochs, False) as callbacks:
                rows = pseudo_rows(labels, cfg)
                results.append(train_fold(run_cfg, f, again, **callbacks, deadline=deadline, pseudo=rows))
    render.training_results(results, folds)
    render.say(f"the pseudo-labelled run is {run_cfg.workdir}: tune, infer and submit it with --set workdir=...")


@app.command()
def blend(
    runs: Annotated[list[Path], typer.Argument(help="Work folders of runs trained on the same folds.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Blend runs with weights searched on their out-of-fold predictions; infer and export then use it."""
    from kseg.blend import blend_runs

    with handled(debug):
        cfg = _config(config, set_)
        with render.progress_bar("score OOF blends") as update:
            result = blend_runs(cfg, runs, on_progress=update)
    render.blend_result(result)


@app.command()
def report(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Cross-validation report: per-fold and per-class OOF scores, confusion matrix, worst images."""
    from kseg.report import cv_report

    with handled(debug):
        cfg = _config(config, set_)
        with render.progress_bar("read OOF") as update:
            result = cv_report(cfg, on_progress=update)
    render.cv_report(result)


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
        result = run_demo(out_dir, render.RichReporter(), seed=seed, force=force)
    render.demo_result(result)
