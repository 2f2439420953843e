"""Duplicate groups: perceptual-hash distances, connected components, and split groups that keep them whole."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kseg.errors import AuditError
from kseg.workspace.workdir import ID, WorkDir

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # set bits of each byte value


def hamming_pairs(hashes: np.ndarray, threshold: int, block: int = 512) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, whose packed hashes differ in at most ``threshold`` bits.

    Shape:
        hashes: ``(N, B)`` uint8 (packed bits). Returns ``(P, 2)`` int64.
    """
    n = len(hashes)
    pairs = []
    for start in range(0, n, block):
        chunk = hashes[start : start + block]
        distance = POPCOUNT[chunk[:, None, :] ^ hashes[None, :, :]].sum(-1, dtype=np.int32)
        i, j = np.nonzero(distance <= threshold)
        i = i + start
        keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` items linked by ``pairs`` (union-find); singletons get -1."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    labels = np.full(n, -1)
    for k, root in enumerate(sorted({r for r in roots if sizes[r] > 1})):
        labels[roots == root] = k
    return labels


def read_duplicate_groups(workdir: WorkDir) -> pd.DataFrame:
    """The training images' duplicate groups of the last ``kseg audit``: ``ImageID, group``."""
    groups = workdir.read_duplicates()
    if groups is None:
        raise AuditError(f"split.duplicates is on but {workdir.duplicates_csv} does not exist; run 'kseg audit' first")
    return groups.loc[groups["set"] == "train", [ID, "group"]]


def merge_groups(ids: pd.Series, base: np.ndarray | None, duplicates: pd.DataFrame) -> np.ndarray:
    """Split groups that keep both ``base`` groups and duplicate groups whole (their union).

    Args:
        ids: Training image ids, in table order.
        base: Optional group label per image (``split.group_by``).
        duplicates: ``ImageID, group`` of images in duplicate groups.

    Returns:
        One string label per image.
    """
    n = len(ids)
    index = {image_id: i for i, image_id in enumerate(ids)}
    pairs = []
    for _, members in duplicates.groupby("group"):
        rows = [index[i] for i in members[ID] if i in index]
        pairs += [(rows[0], other) for other in rows[1:]]
    if base is not None:
        first: dict[str, int] = {}
        for i, label in enumerate(np.asarray(base).astype(str)):
            pairs.append((first.setdefault(label, i), i))
    labels = connected_groups(n, np.array(pairs, dtype=np.int64).reshape(-1, 2))
    return np.array([f"g{lab}" if lab >= 0 else f"i{i}" for i, lab in enumerate(labels)])
