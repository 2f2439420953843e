"""What a blend pins: the digest of every checkpoint it blended, so that a run trained again (or a
checkpoint replaced, or removed) after ``kseg blend`` is never used under the blend's weights and scores."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from kseg.errors import KsegError
from kseg.io import file_digest
from kseg.workspace.workdir import WorkDir


@functools.lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(Path(path))


def checkpoint_digest(path: Path) -> str:
    """The SHA-256 of a checkpoint, computed once per process for a file of the same time and size
    (``kseg submit`` checks a blend before it writes and again when it logs)."""
    st = Path(path).stat()
    return _digest(str(path), st.st_mtime_ns, st.st_size)


def pin_run(run: Path) -> dict[str, str]:
    """``{fold: SHA-256 of its best.pt}`` of a run's trained folds."""
    work = WorkDir(run)
    return {str(fold): checkpoint_digest(work.best(fold)) for fold in work.trained_folds()}


def check_pins(info: dict[str, Any], blend_json: Path) -> None:
    """Refuse a blend whose runs' checkpoints are missing or changed since it was made.

    Blends written before kseg pinned checkpoints (no ``checkpoints`` entry) are not checked.

    Raises:
        KsegError: One line naming the run, the fold and the fix.
    """
    for run in info.get("runs", []):
        pinned = run.get("checkpoints")
        if pinned is None:
            continue
        work = WorkDir(Path(run["path"]))
        if not work.root.is_dir():
            raise KsegError(
                f"{blend_json} blends run {run['path']}, which no longer exists; restore it, or run 'kseg blend' again"
            )
        for fold, digest in pinned.items():
            work.settle(int(fold))
            best = work.best(int(fold))
            if not best.is_file():
                raise KsegError(
                    f"{blend_json} blends fold {fold} of run {run['path']}, whose {best.name} is gone; restore it, "
                    "or run 'kseg blend' again"
                )
            if checkpoint_digest(best) != digest:
                raise KsegError(
                    f"{blend_json} blends fold {fold} of run {run['path']}, whose {best.name} has changed since "
                    "(trained again?); run 'kseg blend' again so its weights and scores fit the new checkpoints"
                )
        extra = sorted(set(map(str, work.trained_folds())) - set(pinned))
        if extra:
            raise KsegError(
                f"{blend_json} blends folds {', '.join(sorted(pinned))} of run {run['path']}, which now has fold "
                f"{extra[0]} too; run 'kseg blend' again"
            )
