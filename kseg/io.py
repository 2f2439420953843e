"""Atomic file and folder writing: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): every lock is free
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder so that the final ``os.replace`` is atomic.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes private files; outputs get the usual permissions
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except OSError as exc:  # a full disk or a permission error: name the user's file, not the temporary one
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename not in (None, tmp):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a folder in a temporary folder next to ``path``; swap it into ``path`` only if the block
    succeeds (a previous ``path`` is replaced whole), else remove it: readers see the old or the new
    folder, never a half-made one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes private folders
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(folder: Path, target: str | None = None) -> list[Path]:
    """Remove what an interrupted kseg write left in ``folder``: ``.<name>.*.tmp`` files of ``atomic_open``,
    ``.<name>.*.partial`` / ``.old`` folders of ``atomic_dir``, ``*.partial`` and staged ``*.next`` files.
    Call it only where no other kseg process writes at the same time (a fold's own folder), or with
    ``target``: then only the leftovers of writing ``folder/target`` are removed."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        name = path.name
        ours = name.startswith(".") and name.endswith((".tmp", ".partial", ".old")) and name.count(".") >= 3
        if target is not None:
            ours, staged = ours and name.startswith(f".{target}."), False
        else:
            staged = path.is_file() and name.endswith((".partial", ".next"))
        if ours or staged:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def try_lock(path: Path) -> IO[str] | None:
    """An exclusive ``flock`` on ``path`` (created), held until the handle is closed or the process ends;
    ``None`` when another open handle holds it."""
    handle = open(path, "a", encoding="utf-8")
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
    return handle


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the block, waiting for another holder to finish."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def lock_is_held(path: Path) -> bool:
    """Whether a live handle (this process's included) holds ``try_lock`` on ``path``."""
    if not Path(path).is_file():
        return False
    handle = try_lock(path)
    if handle is None:
        return True
    handle.close()
    return False


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, hex (read in chunks: checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def reserve_space(path: Path) -> None:
    """Allocate the disk blocks of a (sparse) file now, so a full disk shows as an ``OSError`` here rather
    than as a bus error when a memory map of it is written later. A no-op where the system cannot."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without it: keep the sparse file
                return
            raise OSError(exc.errno, exc.strerror, str(path)) from None
