"""What every ``kseg`` command shares: the typer app, the common options, config loading, and the rule
that kseg's errors become one red line and a non-zero exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kseg import __version__, render
from kseg.errors import KsegError

if TYPE_CHECKING:  # the config's schema (pydantic) loads with the first command that reads a config
    from kseg.config import Config

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


def config_from(
    config: Path | None, overrides: list[str] | None, options: dict[str, tuple[str, Any]] | None = None
) -> Config:
    """The config under ``--set`` overrides and command options that stand for config keys
    (``options``: ``{"--threshold": ("pseudo.threshold", 0.9)}``, ``None`` values left out); an error in
    an option's value names the option as typed, not the key it sets."""
    from kseg.config import load_config

    labels = {
        f"{key}={value}": f"{flag} {value}" for flag, (key, value) in (options or {}).items() if value is not None
    }
    return load_config(config, [*(overrides or []), *labels], labels)


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


def numbers(text: str | None, what: str, kind: type = int, example: str = "0,1,2") -> list | None:
    """A comma-separated option (``--folds 0,1``: whole numbers; ``kind=float``: any numbers)."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "whole numbers" if kind is int else "numbers"
        raise KsegError(f"{what} {text!r} is not a comma-separated list of {noun}, e.g. {example}") from None


PartialOpt = Annotated[
    bool,
    typer.Option("--partial", help="Use unfinished folds (killed, time limit, diverged) as they are; recorded."),
]
FoldsOpt = Annotated[
    str | None, typer.Option("--folds", help="Folds to use, e.g. 0,1,2 (default: every trained fold).")
]
