"""A fold of the work folder is finished or it is not, and belongs to one model: read from its files
(``metrics.csv``, the run's ``config.yaml``, ``average.json``), for every command that uses folds."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kseg.errors import KsegError
from kseg.workspace.workdir import WorkDir


@dataclass
class FoldStatus:
    """Whether a fold's training ended as planned.

    Attributes:
        fold: The fold.
        finished: All its epochs ran, or early stopping ended it (and its checkpoint average, if asked, is
            done); ``False`` for a run that was killed, stopped by the time limit, diverged, or is still
            training (a new training of a fold makes it unfinished from its first epoch).
        epochs: Epochs done.
        planned: ``train.epochs`` of its run.
        why: In words.
    """

    fold: int
    finished: bool
    epochs: int
    planned: int
    why: str


def fold_status(work: WorkDir, fold: int) -> FoldStatus:
    """Read from the fold's ``metrics.csv``, its run's ``config.yaml`` and ``average.json``."""
    import yaml

    from kseg.metrics.scores import epoch_score

    try:
        tree = yaml.safe_load(work.fold_config(fold).read_text(encoding="utf-8")) or {}
        work.settle(fold)
        history = work.read_metrics(fold).to_dict("records") if work.metrics(fold).is_file() else []
    except (OSError, ValueError, yaml.YAMLError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return FoldStatus(fold, False, 0, 0, "its config.yaml or metrics.csv cannot be read")
    train = tree.get("train", {}) if isinstance(tree, dict) else {}
    planned, patience, average = int(train.get("epochs", 0)), train.get("patience"), train.get("average")
    done = len(history)
    scores = [epoch_score(row) for row in history]
    best = max(range(done), key=lambda i: scores[i]) + 1 if done else 0
    if done >= planned > 0:
        why, finished = f"all {planned} epoch(s)", True
    elif patience and done - best >= int(patience):
        why, finished = f"early stop after epoch {done} of {planned}", True
    else:
        return FoldStatus(fold, False, done, planned, f"it stopped after epoch {done} of {planned}")
    if average:
        info = work.read_average(fold)
        if info is None or info.get("after_epoch") != done:
            return FoldStatus(
                fold, False, done, planned, f"its checkpoint average (train.average {average}) is not done"
            )
    return FoldStatus(fold, finished, done, planned, why)


def require_finished(work: WorkDir, folds: list[int], partial: bool) -> list[int]:
    """The unfinished folds among ``folds`` (to record), refused in one line unless ``partial``.

    Raises:
        KsegError: A fold is unfinished and ``partial`` is off.
    """
    unfinished = [s for s in (fold_status(work, f) for f in folds) if not s.finished]
    if unfinished and not partial:
        s = unfinished[0]
        more = f" (and fold(s) {', '.join(str(u.fold) for u in unfinished[1:])})" if len(unfinished) > 1 else ""
        raise KsegError(
            f"fold {s.fold} of {work.root} is unfinished: {s.why}{more}; finish it with 'kseg train --fold {s.fold} "
            "--resume', or pass --partial to use it as it is"
        )
    return [s.fold for s in unfinished]


def sibling_mismatch(work: WorkDir, fold: int, model: dict, classes: list[str], multilabel: bool) -> str | None:
    """How a fold already trained in ``work`` (other than ``fold``) differs from a new training's model,
    classes or mode, read from its ``config.yaml``; ``None`` when every trained fold agrees.

    The folds of one work folder are one ensemble (``kseg infer``, ``tune``, ``export``), so a fold of
    another model belongs in another work folder.
    """
    import yaml

    from kseg.config import checkpoint_mismatch_of

    for other in work.folds_with("config.yaml"):
        if other == fold:
            continue
        try:
            tree = yaml.safe_load(work.fold_config(other).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # unreadable: fold_status calls it unfinished
        data = tree.get("data", {}) if isinstance(tree, dict) else {}
        saved = {"config": tree, "classes": data.get("classes") if isinstance(data, dict) else None}
        mismatch = checkpoint_mismatch_of(saved, model, classes, multilabel)
        if mismatch:
            return f"fold {other} of {work.root} {mismatch.replace('the config says', 'this training has')}"
    return None
