"""The consoles, one-line messages, progress bars and small formatting helpers every view shares."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from typing import Any

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

from kseg.common import Progress as ProgressCallback

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
    """An operating-system error (disk full, permission, missing file) as one ``error:`` line that names the
    path first and the fix last."""
    name = getattr(exc, "filename", None)
    if not name:
        text = f"{exc.strerror or exc}; check the paths, permissions and free disk space (--debug shows the traceback)"
    elif isinstance(exc, IsADirectoryError):
        text = f"{name} is a folder, not a file; give a file's name (a path inside the folder, or another name)"
    elif isinstance(exc, NotADirectoryError):
        text = f"{name}: a part of this path is a file, not a folder; fix the path"
    elif isinstance(exc, FileNotFoundError):
        text = f"{name} does not exist; check the path"
    elif isinstance(exc, PermissionError):
        text = f"{name}: permission denied; write somewhere you may, or fix the permissions"
    elif exc.errno == errno.ENOSPC:
        text = f"no space left on the disk while writing {name}; free some space or write elsewhere"
    else:
        text = f"{name}: {exc.strerror or exc}; check the path, permissions and free disk space (--debug shows more)"
    error_line(text)


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


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def metric_name(result: Any) -> str:
    """How a result's metric is written (``submission.metric``)."""
    from kseg.metrics.scores import METRIC_NAMES  # numpy: loaded by the commands whose results name a metric

    return METRIC_NAMES.get(getattr(result, "metric", "row_dice"), "score")
