"""Commands that predict: infer, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kseg import render
from kseg.cli.common import (
    ConfigOpt,
    DebugOpt,
    FoldsOpt,
    NoPostOpt,
    PartialOpt,
    SetOpt,
    app,
    config_from,
    handled,
    numbers,
)
from kseg.errors import KsegError

if TYPE_CHECKING:
    from kseg.prediction.ensemble import Ensemble


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
    probs: Annotated[
        bool,
        typer.Option(
            "--probs", help="Also write uint8 probabilities <id>.probs.npy (and a presence head's <id>.presence.npy)."
        ),
    ] = False,
    stitch: Annotated[
        Path | None,
        typer.Option("--stitch", help="Tiles of 'kseg tile': also write the predictions as one GeoTIFF here."),
    ] = None,
    no_postprocess: NoPostOpt = False,
    no_blend: Annotated[
        bool, typer.Option("--no-blend", help="Predict with this run's folds even where blend.json exists.")
    ] = False,
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict the test set (or --images DIR) with the trained folds (or the blend), optionally with TTA."""
    from kseg.data.tile import tiles_folder
    from kseg.prediction.infer import OutputOptions, competition_test_images, list_images, run_inference
    from kseg.prediction.tta import views as view_set_of
    from kseg.workspace.workdir import default_predictions

    with handled(debug):
        if views is not None:
            view_set_of(views)  # a bad name fails before any model is loaded
        if bundle is not None and (images is None or out is None):
            raise KsegError("with --bundle, give --images DIR and --out DIR (a bundle carries no data set)")
        ensemble = _ensemble(bundle, config, set_, folds, fold_weights, no_blend, partial)
        cfg = ensemble.cfg
        tiles_dir = tiles_folder(images) if stitch is not None else None
        if images is not None:
            if out is None:
                raise KsegError("--images needs --out DIR for the predicted masks")
            table = list_images(images)
        else:
            table = competition_test_images(cfg.data)
        target = out or default_predictions(cfg.submission.predictions, cfg.workdir)
        view_set = views or (cfg.infer.tta if tta else "none")
        outputs = OutputOptions(probs=probs, color=color, overlay=overlay)
        with render.progress_bar("predict") as update:
            result = run_inference(
                ensemble, table, target, view_set, outputs=outputs, postprocess=not no_postprocess, on_progress=update
            )
    render.inference_result(result, len(ensemble.models), cfg.infer.mode, ensemble.post is not None)
    if tiles_dir is not None and stitch is not None:
        from kseg.data.tile import stitch as stitch_tiles

        with handled(debug):
            written = stitch_tiles(tiles_dir, result.out, stitch)
        render.say(f"stitched {result.n_images} tiles into {written}")


def _ensemble(
    bundle: Path | None,
    config: Path | None,
    set_: list[str] | None,
    folds: str | None,
    fold_weights: str | None,
    no_blend: bool,
    partial: bool = False,
) -> Ensemble:
    """The models ``kseg infer`` predicts with: a bundle's, or the config's folds (or its blend)."""
    from kseg.prediction.ensemble import load_bundle, load_ensemble, select_folds

    if bundle is not None:
        chosen = numbers(folds, "--folds")
        weights = numbers(fold_weights, "--fold-weights", float, "1,1,2")
        ensemble = select_folds(load_bundle(bundle, set_ or []), chosen, weights, str(bundle))
        if ensemble.partial and not partial:
            raise KsegError(
                f"bundle {bundle} holds unfinished folds ({'; '.join(ensemble.partial)}), exported with --partial; "
                "pass --partial to predict with it as it is"
            )
        return ensemble
    cfg = config_from(config, set_)
    chosen = numbers(folds, "--folds") or cfg.infer.folds
    weights = numbers(fold_weights, "--fold-weights", float, "1,1,2") or cfg.infer.fold_weights
    return load_ensemble(cfg, chosen, weights, use_blend=not no_blend, partial=partial)


@app.command()
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write, e.g. model.kseg.")] = Path("model.kseg"),
    folds: FoldsOpt = None,
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size).")] = False,
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Pack the resolved config and the trained folds' best weights into one file for offline inference."""
    from kseg.prediction.ensemble import export_bundle

    with handled(debug):
        cfg = config_from(config, set_)
        path = export_bundle(cfg, out, numbers(folds, "--folds"), half, partial=partial)
    render.say(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); predict anywhere with "
        f"[bold]kseg infer --bundle {path.name} --images DIR --out DIR[/]"
    )


@app.command()
def package(
    out: Annotated[Path, typer.Argument(help="Folder to write: OUT/dataset and OUT/notebook.")],
    competition: Annotated[str, typer.Option("--competition", help="The competition's slug (its URL name).")],
    dataset: Annotated[str, typer.Option("--dataset", help="OWNER/NAME of the Kaggle dataset to hold it.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    folds: FoldsOpt = None,
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size).")] = False,
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu", help="The notebook asks for a GPU.")] = True,
    python_version: Annotated[
        str | None, typer.Option("--python-version", help="The notebook image's Python, X.Y (default: this one).")
    ] = None,
    push: Annotated[bool, typer.Option("--push", help="Create or version the dataset and push the notebook.")] = False,
    message: Annotated[str, typer.Option("--message", "-m", help="Version notes of a pushed dataset.")] = "kseg",
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a code competition's Kaggle dataset (bundle, config, wheels) and its offline notebook."""
    from kseg.codecomp.package import package as write_package
    from kseg.codecomp.push import push_package

    with handled(debug):
        cfg = config_from(config, set_)
        with render.progress_bar("package (bundle, wheels, notebook)") as _update:
            result = write_package(
                cfg,
                out,
                competition,
                dataset,
                folds=numbers(folds, "--folds"),
                half=half,
                gpu=gpu,
                python_version=python_version,
                partial=partial,
            )
    render.package_result(result)
    if push:
        with handled(debug):
            pushed = push_package(
                result.dataset_dir, result.notebook.parent, dataset, result.kernel_id, competition, message
            )
        render.say(
            f"{'created' if pushed.new_dataset else 'new version of'} dataset {pushed.dataset}; notebook pushed: "
            f"{pushed.kernel_url}\n{pushed.submit_hint}"
        )


@app.command()
def rehearse(
    out: Annotated[Path, typer.Argument(help="A 'kseg package' folder.")],
    images: Annotated[
        Path | None,
        typer.Option("--images", help="A folder laid out as the competition's download (default: the config's)."),
    ] = None,
    test_images: Annotated[
        int | None, typer.Option("--test-images", help="The hidden test set's size, for the projection.")
    ] = None,
    limit_hours: Annotated[
        float | None, typer.Option("--limit-hours", help="The competition's notebook time limit.")
    ] = None,
    keep: Annotated[Path | None, typer.Option("--keep", help="Leave the rehearsal's folder here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Run a package's notebook offline as Kaggle will: fresh environment with torch only, no network."""
    from kseg.codecomp.rehearse import rehearse as run_rehearsal

    with handled(debug):
        with render.progress_bar("rehearse (venv, offline install, notebook)") as _update:
            result = run_rehearsal(out, images=images, test_images=test_images, keep=keep)
    render.rehearsal_result(result, limit_hours)
