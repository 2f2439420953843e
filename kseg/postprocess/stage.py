"""``kseg tune``: the post-processing search on this run's OOF files under the configured metric, and
``postprocess.json``."""

from __future__ import annotations

from kseg.common import Progress
from kseg.config import Config
from kseg.postprocess.instances import instance_grids
from kseg.postprocess.oof import OOFRun, load_oof
from kseg.postprocess.search import TuneResult, tune_grids, tune_oof
from kseg.workspace.workdir import WorkDir


def tune(cfg: Config, seed: int = 0, on_progress: Progress | None = None, gates: bool = True) -> TuneResult:
    """Search per-class rules that maximise the OOF metric (``submission.metric``): a threshold and a minimum
    area, or (``gates``, pixel metrics) a presence gate in front of a threshold, whichever scores higher.

    The in-sample gain is reported next to a held-out one: the OOF images are split in two halves; the
    parameters tuned on each half score the other, and the two results are averaged.
    """
    if cfg.submission.metric == "instance_fbeta":
        found = instance_grids(OOFRun.from_config(cfg), cfg.submission.beta, on_progress)
        result = tune_grids(
            found.grid_for, list(cfg.data.classes), found.space, seed, "instance_fbeta", cfg.scored_classes
        )
    else:
        oof = load_oof(cfg.workdir, cfg.n_classes, cfg.multilabel, on_progress)
        result = tune_oof(oof, list(cfg.data.classes), seed, cfg.submission.metric, cfg.scored_classes, gates)
    path = WorkDir(cfg.workdir).write_postprocess(result.post.to_json())
    result.path = path
    return result
