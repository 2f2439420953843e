"""Commands that prepare a competition: init, synth, split, audit, tile, weights, config, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kseg import render
from kseg.cli.common import (
    ConfigOpt,
    DebugOpt,
    SetOpt,
    app,
    config_from,
    handled,
    numbers,
)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="The unpacked download (default: the current folder).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing kseg.yaml.")] = False,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="The competition's metric: row_dice, row_iou, dataset_iou or instance_fbeta (default: row_dice, "
            "instance_fbeta when the labels list one row per object).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Class names in class order (a,b,c), or with their mask colours (a=#RRGGBB,b=#RRGGBB).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write the config (default: FOLDER/kseg.yaml).", show_default=False),
    ] = None,
    gpu_memory: Annotated[
        float, typer.Option("--gpu-memory", help="GiB of GPU memory the image size and batch are planned for.")
    ] = 16.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the fingerprint as JSON; write nothing.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Read a competition's download (images, labels, pixel order, submission) and write kseg.yaml."""
    from kseg.planning.stage import run_init

    with handled(debug), render.progress_bar("read files") as update:
        result = run_init(
            folder, out=out, force=force, metric=metric, classes=classes, gpu_memory=gpu_memory,
            write=not as_json, on_progress=update,
        )  # fmt: skip
    if as_json:
        print(result.fingerprint.to_json())
        return
    render.init_result(result)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the competition to.")],
    train: Annotated[int, typer.Option("--train", help="Training images.")] = 24,
    test: Annotated[int, typer.Option("--test", help="Test images.")] = 8,
    height: Annotated[int, typer.Option("--height", help="Image height.")] = 64,
    width: Annotated[int, typer.Option("--width", help="Image width.")] = 96,
    classes: Annotated[
        int | None, typer.Option("--classes", help="Number of classes (default 6; the drone style only).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    style: Annotated[
        str | None,
        typer.Option(
            "--style",
            help="A competition's shape, with the host's solution.csv: drone (label images, ids <image>_<k>), "
            "severstal (JPEGs, runs table, long non-empty submission), clouds (overlapping classes, "
            "<file>_<name> ids, quarter-size masks) or instances (Airbus ships: a row per ship, F2 over IoU "
            "thresholds). Default: drone without solution.csv.",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Write a small synthetic Kaggle-style aerial segmentation competition, with its kseg.yaml."""
    from kseg.synth.aerial import DEFAULT_CLASSES, make_competition
    from kseg.synth.styles import make_styled

    with handled(debug), render.progress_bar("synth") as update:
        if style is None:
            n_classes = DEFAULT_CLASSES if classes is None else classes
            result = make_competition(out_dir, train, test, height, width, n_classes, seed, on_progress=update)
        else:
            result = make_styled(out_dir, style, train, test, height, width, classes, seed, on_progress=update)
    render.say(
        f"wrote {result.n_train} train + {result.n_test} test images, {len(result.classes)} classes, to "
        f"{result.root}\nnext: [bold]cd {result.root} && kseg split[/]  (config: {result.config.name})"
    )


@app.command()
def split(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Scan the training masks and write multilabel-stratified K folds to <workdir>/folds.csv."""
    from kseg.data.split import make_folds

    with handled(debug):
        cfg = config_from(config, set_)
        with render.progress_bar("scan masks") as update:
            result = make_folds(cfg, on_progress=update)
    render.split_result(result, cfg.data, cfg.split)


@app.command()
def audit(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: <workdir>/audit).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Audit the data: duplicates across train/test, unreadable files, mask sizes, classes, image sizes."""
    from kseg.data.audit import run_audit, summary_json

    with handled(debug):
        cfg = config_from(config, set_)
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
    from kseg.data.tile import tile_raster

    with handled(debug):
        flags = {"size": size, "stride": stride, "bands": numbers(bands, "--bands", example="4,3,2")}
        # the flags are --set tile.* overrides, validated by the same rules
        flag_sets = [f"tile.{k}={v}" for k, v in flags.items() if v is not None]
        options, ignore_index = tile_options(config, [*(set_ or []), *flag_sets])
        with render.progress_bar("tile") as update:
            result = tile_raster(image, out, options, mask, ignore_index, on_progress=update)
    render.tile_result(result, options.size)


@app.command("weights")
def list_weights(debug: DebugOpt = False) -> None:
    """List pretrained weights installed as packages, spelled as model.encoder_weights takes them."""
    from kseg.models.weights import installed_weights

    with handled(debug):
        found = installed_weights()
    render.installed_weights(found)


@app.command("config")
def showconfig_from(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the resolved config: every default spelled out, paths made absolute."""
    from kseg.config import to_yaml

    with handled(debug):
        cfg = config_from(config, set_)
    render.console.print(to_yaml(cfg), highlight=False, markup=False, end="")


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
