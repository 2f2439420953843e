"""What the command line shows: rich tables, progress bars and summary lines for each stage's result.

Nothing here computes: each function takes a stage's result (and the few config values it labels with)
and prints it. The commands in ``kseg.cli`` call one stage function, then one of these; one module per
group of stages, on the shared ``core`` (consoles, progress bars, formatting).
"""

from kseg.render.core import (
    console,
    err_console,
    error_line,
    metric_name,
    os_error,
    pct,
    progress_bar,
    say,
    short,
    stage_bars,
)
from kseg.render.data import audit_result, installed_weights, split_result, tile_result
from kseg.render.demo import RichReporter, demo_result
from kseg.render.planning import init_result
from kseg.render.submission import (
    package_result,
    rehearsal_result,
    score_result,
    submission_log,
    submission_logged,
    submission_written,
    validation_report,
)
from kseg.render.training import (
    TrainCallbacks,
    blend_result,
    cv_report,
    inference_result,
    pseudo_labels,
    training_progress,
    training_results,
    tune_result,
)

__all__ = [
    "RichReporter",
    "TrainCallbacks",
    "audit_result",
    "blend_result",
    "console",
    "cv_report",
    "demo_result",
    "err_console",
    "error_line",
    "inference_result",
    "init_result",
    "installed_weights",
    "metric_name",
    "os_error",
    "package_result",
    "pct",
    "progress_bar",
    "pseudo_labels",
    "rehearsal_result",
    "say",
    "score_result",
    "short",
    "split_result",
    "stage_bars",
    "submission_log",
    "submission_logged",
    "submission_written",
    "tile_result",
    "training_progress",
    "training_results",
    "tune_result",
    "validation_report",
]
