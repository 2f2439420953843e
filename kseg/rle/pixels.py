"""Pixel numbering shared by the RLE encoder and decoder: the order names, checks, a fast transpose and
a thread map (NumPy releases the GIL in the heavy kernels)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

Order = Literal["column", "row"]


def transpose(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C-contiguous transpose of a 2-D array, written into ``out`` when given (shape ``a.shape[::-1]``).

    NumPy's strided byte copy is cache-hostile (~9x slower than OpenCV's blocked SIMD transpose);
    OpenCV comes with albumentations, and a tiled NumPy copy stands in where it is missing or for other
    dtypes than uint8.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - albumentations brings OpenCV
        cv2 = None  # type: ignore[assignment]
    if out is None:
        out = np.empty(a.shape[::-1], dtype=a.dtype)
    if cv2 is not None and a.dtype == np.uint8 and out.dtype == np.uint8 and a.size:
        cv2.transpose(np.ascontiguousarray(a), dst=out)
        return out
    for i in range(0, a.shape[0], 64):
        out[:, i : i + 64] = a[i : i + 64].T
    return out


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.cache
def steady_heap() -> bool:
    """Keep the process's freed memory for reuse (glibc only; once per process): a 32 MiB threshold below
    which arrays come from the heap, and up to 256 MiB of free heap kept rather than given back at once.

    The RLE kernels allocate and free the same few hundred kilobyte temporaries chunk after chunk. With
    glibc's adaptive defaults the heap top is trimmed and refilled, or the arrays are mapped afresh, so
    each pass pays its page faults again: a third of the encoder's and decoder's time, depending on the
    chunk sizes. Left alone where the user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``,
    and off other C libraries. Called by the bulk entry points (``encode_batch``, ``decode_batch``,
    ``tokenise_rows``), which run in short commands, not by the single-mask functions that a training
    process may call. Returns whether the settings were made.
    """
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def windows8(buf: np.ndarray) -> np.ndarray:
    """Every 8-byte window of the uint8 array ``buf`` as one unaligned little-endian uint64 (window ``j`` is
    ``buf[j:j+8]``): a view, for reading or writing eight bytes at any offset in one element."""
    return np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))


def sparse_flatnonzero(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` of a sparse 1-D boolean array, about twice as fast: the 8-byte words holding a set
    byte are found first, and only their bytes are looked at.

    Returns uint32 indices where they fit (32-bit division is several times faster than 64-bit), else int64.
    """
    body = len(mask) - len(mask) % 8
    words = np.ascontiguousarray(mask[:body]).view(np.uint64)
    hit = np.flatnonzero(words != 0)
    dtype: type[np.unsignedinteger] | type[np.signedinteger] = np.uint32 if len(mask) < 2**32 else np.int64
    hit = hit.astype(dtype)
    byte = np.flatnonzero(words[hit].view(bool)).astype(dtype)
    index = (np.take(hit, byte >> 3) << 3) | (byte & 7)
    if body < len(mask):  # the last few bytes
        index = np.concatenate([index, (np.flatnonzero(mask[body:]) + body).astype(dtype)])
    return index


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int | None) -> list[Any]:
    """``[fn(x) for x in items]`` on a thread pool (NumPy releases the GIL in the heavy kernels)."""
    items = list(items)
    threads = threads or os.cpu_count() or 1
    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]


def check_order(order: str) -> None:
    """Raise ``ValueError`` for a pixel order other than ``column`` or ``row``."""
    if order not in ("column", "row"):
        raise ValueError(f"pixel order {order!r} is not 'column' or 'row'")
