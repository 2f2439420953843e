"""A fold's out-of-fold (OOF) files: the true labels and ids written when the fold starts, the
probabilities of its best epoch filled through a memory map and committed with the epoch, and the three
read back together for tuning, blending and the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kseg.common import ID
from kseg.errors import KsegError
from kseg.io import atomic_open, atomic_write_text, reserve_space
from kseg.workspace.workdir import WorkDir


def write_oof_truth(work: WorkDir, fold: int, masks: np.ndarray, table: pd.DataFrame) -> None:
    """The validation images' true labels at ``data.image_size`` and their ids and original sizes."""
    with atomic_open(work.oof_masks(fold), "wb") as handle:
        np.save(handle, masks)
    atomic_write_text(work.oof_csv(fold), table[[ID, "height", "width"]].to_csv(index=False))


def open_oof(work: WorkDir, fold: int, shape: tuple[int, ...]) -> np.ndarray:
    """A fresh memory-mapped staged ``oof.npy`` to fill; ``commit`` puts it in place.

    Its disk space is reserved first: a memory map written on a full disk kills the process with a bus
    error, while a failed reservation is an ``OSError`` that names the file."""
    path = work.journal(fold).staged("oof.npy")
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        reserve_space(path)
    except OSError:
        del array
        path.unlink(missing_ok=True)
        raise
    return array


OOF_PRESENCE = "oof_presence.npy"


def stage_oof_presence(work: WorkDir, fold: int, presence: np.ndarray) -> None:
    """Stage the presence scores ``(N, K)`` of the OOF probabilities staged beside them (committed together)."""
    with atomic_open(work.journal(fold).staged(OOF_PRESENCE), "wb") as handle:
        np.save(handle, presence.astype(np.float32))


def read_oof_presence(work: WorkDir, fold: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The fold's presence scores ``(N, K)`` float32, or ``None`` when its model has no presence head.

    Raises:
        KsegError: The file is damaged or does not fit the fold's ``shape`` ``(N, K)`` of OOF maps.
    """
    work.settle(fold)
    path = work.oof_presence(fold)
    if not path.is_file():
        return None
    try:
        presence = np.load(path)
    except (OSError, ValueError) as exc:
        raise KsegError(f"{path} is damaged, perhaps truncated ({exc})") from None
    if presence.shape != tuple(shape):
        raise KsegError(f"{path} holds {presence.shape} presence scores for {tuple(shape)} out-of-fold maps")
    return presence


def read_oof(work: WorkDir, fold: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(probabilities (N, K, H, W), true labels (N, H, W), ids table)``, arrays memory-mapped.

    Raises:
        KsegError: A file is missing, damaged (truncated), or the three disagree on the number of images;
            the message names the file and the problem, the caller adds the fix.
    """
    work.settle(fold)
    paths = (work.oof(fold), work.oof_masks(fold), work.oof_csv(fold))
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise KsegError(f"fold {fold} has no {missing.name} ({missing})")
    read: list[Any] = []
    for path in paths:
        try:
            read.append(pd.read_csv(path, dtype={ID: str}) if path.suffix == ".csv" else np.load(path, mmap_mode="r"))
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise KsegError(f"{path} is damaged, perhaps truncated ({exc})") from None
    probs, masks, table = read
    if ID not in table.columns or not len(probs) == len(masks) == len(table):
        raise KsegError(
            f"fold {fold}'s out-of-fold files disagree: {len(probs)} probability maps, {len(masks)} masks, "
            f"{len(table)} rows in {paths[2].name}"
        )
    return probs, masks, table
