"""Commands around the submission file: submit, submissions, validate, score."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kseg import render
from kseg.cli.common import (
    ConfigOpt,
    DebugOpt,
    NoPostOpt,
    PartialOpt,
    SetOpt,
    SubmissionArg,
    app,
    config_from,
    handled,
)
from kseg.errors import KsegError


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
    partial: PartialOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Encode the predicted label maps into a validated submission.csv (optionally uploaded); log it."""
    from kseg.io import held_lock
    from kseg.submission import record_submission, write_submission
    from kseg.submission.log import check_before_submit, log_lock

    with handled(debug):
        cfg = config_from(config, set_)
        if upload and not competition:
            raise KsegError("--upload needs --competition SLUG (the name in the competition's URL)")
        target = out or cfg.submission.path
        with held_lock(log_lock(target)):  # the file and its log row go in together, one submit at a time
            check_before_submit(cfg.workdir, target)  # what would stop the log row stops us first
            with render.progress_bar("read predictions") as update:
                result = write_submission(
                    cfg,
                    out=out,
                    predictions=predictions,
                    on_progress=update,
                    postprocess=not no_postprocess,
                    fill_empty=fill_empty,
                    partial=partial,
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
        path = log or log_path(config_from(config, set_).submission.path)
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
        cfg = config_from(config, set_)
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
        cfg = config_from(config, set_)
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
