"""The demo's stage reporter and its closing summary."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.markup import escape

from kseg.common import Progress as ProgressCallback
from kseg.render.core import progress_bar, say


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
