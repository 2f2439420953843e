"""Names every stage shares: the progress-callback type and the id column of every table."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]  # callback(done, total)
ID = "ImageID"  # the id column of every table kseg writes (folds.csv, oof.csv, the scan's cache, ...)
