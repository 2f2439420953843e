"""Process pools for per-file work (mask scans, image hashes), in order, with progress."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from kseg.common import Progress


def apply_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """Worker: ``fn`` over one chunk of items."""
    return [fn(item) for item in items]


def parallel_map(
    fn: Callable[[Any], Any], items: list[Any], workers: int | None, on_progress: Progress | None = None
) -> list[Any]:
    """``[fn(item) for item in items]`` in worker processes (chunked; in order), with progress.

    ``fn`` must be a module-level function (it is pickled); small inputs run in this process.
    """
    total = len(items)
    if on_progress:
        on_progress(0, total)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total < 64:
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_progress:
                on_progress(i + 1, total)
        return results
    chunk = max(8, min(64, total // (workers * 8)))
    chunks = [items[i : i + chunk] for i in range(0, total, chunk)]
    out: list[list[Any]] = [[] for _ in chunks]
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(apply_chunk, fn, c): i for i, c in enumerate(chunks)}
        for future in as_completed(futures):
            out[futures[future]] = future.result()
            done += len(chunks[futures[future]])
            if on_progress:
                on_progress(done, total)
    return [r for part in out for r in part]
