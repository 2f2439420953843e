"""A fold folder's commit journal: an epoch's files are staged (``<name>.next``, each complete), listed in
``commit.json`` and renamed into place together, so a kill leaves either the previous epoch's set or the new
one. ``.fold<N>.lock`` (beside the fold folder) is held by the live run that trains the fold; readers leave
its commits to it and complete a dead run's (``settle``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from kseg.errors import KsegError
from kseg.io import atomic_write_text, lock_is_held, remove_stale, try_lock


class FoldJournal:
    """The commit journal and the lock of one fold folder.

    Args:
        folder: The fold folder (``<workdir>/fold<N>``).
        lock: The lock file a live run holds (``<workdir>/.fold<N>.lock``).
    """

    def __init__(self, folder: Path, lock: Path):
        self.folder, self.lock = Path(folder), Path(lock)

    @property
    def path(self) -> Path:
        """``commit.json``: the names of a commit under way."""
        return self.folder / "commit.json"

    def staged(self, name: str) -> Path:
        """Where the new ``<name>`` is written before ``commit`` puts it in place."""
        return self.folder / f"{name}.next"

    def commit(self, names: list[str]) -> None:
        """Put the staged files ``names`` in place together: the list is written first, so ``roll_forward``
        completes the renames if the process dies among them."""
        atomic_write_text(self.path, json.dumps({"files": names}))
        self.roll_forward()

    def roll_forward(self) -> bool:
        """Finish a commit that a killed run started; whether there was one."""
        if not self.path.is_file():
            return False
        for name in json.loads(self.path.read_text(encoding="utf-8"))["files"]:
            try:
                os.replace(self.staged(name), self.folder / name)
            except FileNotFoundError:
                pass  # renamed before the kill
        self.path.unlink(missing_ok=True)
        return True

    def settle(self) -> bool:
        """What a reader does before it reads: complete a commit that a killed run left half done, unless a
        live run trains the fold (it completes its own), or remove what a killed run staged before it wrote
        its journal; whether a commit was completed."""
        try:
            if not self.path.is_file():
                if self.folder.is_dir() and not self.is_held():
                    remove_stale(self.folder)  # what a killed run staged before its journal
                return False
            return not self.is_held() and self.roll_forward()
        except OSError:  # a read-only copy of a work folder (a Kaggle dataset): read it as it is
            return False

    def hold(self) -> IO[str]:
        """Mark the fold as trained by this process until the handle is closed or the process ends (a killed
        run holds nothing).

        Raises:
            KsegError: Another live kseg process trains the fold.
        """
        if not self.lock.parent.is_dir():  # nothing to protect yet, and nothing to train on
            raise KsegError(f"{self.lock.parent / 'folds.csv'} does not exist; run 'kseg split' first")
        handle = try_lock(self.lock)
        if handle is None:
            raise KsegError(
                f"{self.folder} is being trained by another kseg process; let it finish or stop it, then run again"
            )
        return handle

    def is_held(self) -> bool:
        """Whether a live process (this one included, through ``hold``) trains the fold."""
        return lock_is_held(self.lock)
