"""RLE encoding: runs of every class of a label map in one pass, digits from a lookup table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kseg.rle.pixels import Order, check_order, thread_map

# Two ASCII digits per uint16 ("00" .. "99"), little-endian byte order: low byte is the first digit.
_PAIRS = np.array([(48 + i // 10) | ((48 + i % 10) << 8) for i in range(100)], dtype=np.uint16)
if np.little_endian is False:  # pragma: no cover - every platform torch supports is little-endian
    _PAIRS = _PAIRS.byteswap()
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def _digit_table(n_digits: int) -> np.ndarray:
    """ASCII of every ``n_digits``-digit zero-padded number, packed little-endian into uint64."""
    value = np.arange(10**n_digits, dtype=np.uint64)
    packed = np.zeros_like(value)
    for i in range(n_digits):
        digit = value // np.uint64(10 ** (n_digits - 1 - i)) % np.uint64(10)
        packed |= (digit + np.uint64(48)) << np.uint64(8 * i)
    return packed


_DIGITS3 = _digit_table(3)
# The low four digits land in bytes 3-6 of a row and the separator in byte 7: baked into the table.
_DIGITS4_SEP = (_digit_table(4) << np.uint64(24)) | (np.uint64(32) << np.uint64(56))
# Byte masks selecting the last ``nd`` digits and the separator of an 8-byte row, as uint64 words.
_KEEP8 = np.zeros((8, 8), dtype=bool)
for _nd in range(1, 8):
    _KEEP8[_nd, 7 - _nd :] = True
_KEEP8_WORDS = _KEEP8.view(np.uint64).ravel()


def _small_key(key: np.ndarray, top: int) -> np.ndarray:
    # NumPy's stable sort is a radix sort for 16-bit keys: linear time, no comparisons.
    return key.astype(np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.uint64)


def runs(maps: np.ndarray, order: Order) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All runs of equal labels in each map, in submission pixel order.

    Column order is handled without transposing the maps (a cache-hostile byte copy): changes between
    vertically adjacent pixels are found in the maps' own row-major layout, and the few run starts are
    then put in column order by a stable radix sort on ``(image, x)``, which keeps ``y`` ascending.

    Shape:
        maps ``(n, H, W)``; returns ``image, start (0-based), length, label``, each ``(R,)``, sorted by
        image, then start.
    """
    n, height, width = maps.shape
    size = height * width
    change = np.empty((n, height, width), dtype=bool)
    if order == "column":
        np.not_equal(maps[:, 1:, :], maps[:, :-1, :], out=change[:, 1:, :])
        np.not_equal(maps[:, 0, 1:], maps[:, height - 1, :-1], out=change[:, 0, 1:])  # column wrap
    else:
        flat = maps.reshape(n, size)
        np.not_equal(flat[:, 1:], flat[:, :-1], out=change.reshape(n, size)[:, 1:])
    change[:, 0, 0] = True
    index = np.flatnonzero(change)
    label = maps.reshape(-1)[index]
    if n * size < 2**32:  # 32-bit division is several times faster than 64-bit
        index = index.astype(np.uint32)
    image, rest = np.divmod(index, size)
    if order == "column":
        y, x = np.divmod(rest, width)
        by_column = np.argsort(_small_key(image * width + x, n * width), kind="stable")
        image, label = image[by_column], label[by_column]
        start = x[by_column] * height + y[by_column]
    else:
        start = rest
    end = np.empty_like(start)
    end[:-1] = start[1:]
    last = np.empty(len(image), dtype=bool)
    last[:-1] = image[1:] != image[:-1]
    last[-1] = True
    end[last] = size
    return image, start, end - start, label


def _digit_counts(numbers: np.ndarray, digits_max: int) -> np.ndarray:
    n_digits = np.ones(len(numbers), dtype=np.int8)
    for d in range(1, digits_max):
        n_digits += numbers >= 10**d
    return n_digits


def _offsets(n_digits: np.ndarray) -> np.ndarray:
    offsets = np.empty(len(n_digits) + 1, dtype=np.int64)
    offsets[0] = 0
    np.cumsum(n_digits + np.int8(1), dtype=np.int64, out=offsets[1:])
    return offsets


def format_numbers(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal text of positive integers, each followed by one space.

    Each number is written right-aligned into a fixed-width byte row, whole digit groups at a time from
    lookup tables, and a per-digit-count byte mask (one gather of uint64 words) keeps its digits and
    separator; one boolean compaction then yields the text.

    Shape:
        numbers ``(M,)`` unsigned; returns ``(text (T,) uint8, offsets (M+1,) int64)`` where number
        ``i`` is ``text[offsets[i] : offsets[i+1] - 1]``.
    """
    m = len(numbers)
    if m == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    top = int(numbers.max())
    if top < 10**7:  # the common case (images up to 10 megapixels): one uint64 per number
        high, low = np.divmod(numbers, 10000)
        rows = _DIGITS3[high]
        rows |= _DIGITS4_SEP[low]
        n_digits = _digit_counts(numbers, 7)
        keep = _KEEP8_WORDS[n_digits].view(bool)
        return np.compress(keep, rows.view(np.uint8)), _offsets(n_digits)  # compress beats mask indexing
    digits_max = len(str(top))
    pairs = (digits_max + 1) // 2
    width = 2 * pairs + 2  # digits, separator, one pad byte
    work = numbers.astype(np.uint64, copy=True)
    rows16 = np.empty((m, width // 2), dtype=np.uint16)
    for p in range(pairs - 1, -1, -1):
        work, rest = np.divmod(work, np.uint64(100))
        rows16[:, p] = _PAIRS[rest]
    rows16[:, pairs] = 32  # ' ' then a zero pad byte (little-endian)
    n_digits = _digit_counts(numbers, digits_max)
    patterns = np.zeros((digits_max + 1, width), dtype=bool)
    for nd in range(1, digits_max + 1):
        patterns[nd, 2 * pairs - nd : 2 * pairs + 1] = True
    text = np.compress(patterns[n_digits].ravel(), rows16.view(np.uint8))
    return text, _offsets(n_digits)


def runs_to_text(starts: np.ndarray, lengths: np.ndarray, row_counts: np.ndarray) -> list[bytes]:
    """Text of many RLE rows at once.

    Args:
        starts: 1-based run starts, grouped by row, ascending within a row.
        lengths: Run lengths.
        row_counts: Number of runs of each row.

    Returns:
        One ``b"start length start length ..."`` per row (``b""`` for a row without runs).
    """
    numbers = np.empty(2 * len(starts), dtype=np.uint64 if len(starts) and starts.max() >= 2**32 else np.uint32)
    numbers[0::2] = starts
    numbers[1::2] = lengths
    text, offsets = format_numbers(numbers)
    blob = text.tobytes()
    bounds = np.zeros(len(row_counts) + 1, dtype=np.int64)
    np.cumsum(2 * np.asarray(row_counts, dtype=np.int64), out=bounds[1:])
    byte_bounds = offsets[bounds].tolist()
    return [blob[a : b - 1] if b > a else b"" for a, b in zip(byte_bounds[:-1], byte_bounds[1:], strict=True)]


def _encode_stack(maps: np.ndarray, n_classes: int, order: Order) -> list[bytes]:
    """RLE bytes of every class of every map in a ``(n, H, W)`` stack, image-major."""
    n = maps.shape[0]
    image, start, length, label = runs(maps, order)
    keep = label < n_classes
    if not keep.all():
        image, start, length, label = image[keep], start[keep], length[keep], label[keep]
    key = _small_key(image * n_classes + label, n * n_classes)
    by_row = np.argsort(key, kind="stable")  # rows in (image, class) order, starts stay ascending
    counts = np.bincount(key, minlength=n * n_classes)
    return runs_to_text(start[by_row] + 1, length[by_row], counts)


def encode_batch(
    label_maps: Sequence[np.ndarray] | np.ndarray,
    n_classes: int,
    order: Order = "column",
    threads: int | None = None,
    chunk: int = 4,
) -> list[list[bytes]]:
    """RLE of every class of many label maps.

    Args:
        label_maps: ``(H, W)`` integer label maps (sizes may differ between maps). Values at or above
            ``n_classes`` (such as an ignore index) belong to no row.
        n_classes: Rows per map: classes ``0 .. n_classes - 1``.
        order: Pixel numbering, ``column`` (Kaggle) or ``row``.
        threads: Worker threads (default: the number of CPU cores).
        chunk: Maps encoded together; small enough to stay in cache.

    Returns:
        ``result[i][k]``: ASCII RLE of class ``k`` in map ``i`` (``b""`` when empty).
    """
    check_order(order)
    maps = list(label_maps)
    for m in maps:
        if m.ndim != 2:
            raise ValueError(f"label maps must be 2-D (H, W); got shape {m.shape}")
    groups: list[list[int]] = []
    i = 0
    while i < len(maps):  # consecutive maps of one shape are stacked
        j = i + 1
        while j < len(maps) and j - i < chunk and maps[j].shape == maps[i].shape:
            j += 1
        groups.append(list(range(i, j)))
        i = j

    def work(idx: list[int]) -> list[bytes]:
        stack = np.stack([np.asarray(maps[k]) for k in idx])
        if stack.dtype != np.uint8 and stack.size and (stack.min() < 0 or stack.max() > 255):
            stack = stack.astype(np.int64)
        elif stack.dtype != np.uint8:
            stack = stack.astype(np.uint8)
        return _encode_stack(stack, n_classes, order)

    flat = [row for part in thread_map(work, groups, threads) for row in part]
    return [flat[i * n_classes : (i + 1) * n_classes] for i in range(len(maps))]


def encode_labels(label_map: np.ndarray, n_classes: int, order: Order = "column", empty: str = "") -> list[str]:
    """RLE of every class of one label map in one pass; element ``k`` equals ``encode(label_map == k)``.

    Shape:
        label_map ``(H, W)`` integers.
    """
    rows = encode_batch([np.asarray(label_map)], n_classes, order, threads=1)[0]
    return [r.decode("ascii") if r else empty for r in rows]


def encode(mask: np.ndarray, order: Order = "column", empty: str = "") -> str:
    """RLE of a binary mask (any non-zero pixel is set).

    Shape:
        mask ``(H, W)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {mask.shape}")
    return encode_labels((mask != 0).view(np.uint8), 2, order, empty)[1]
