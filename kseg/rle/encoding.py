"""RLE encoding: runs of every class of a label map in one pass, digits from a lookup table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kseg.rle.pixels import Order, check_order, sparse_flatnonzero, steady_heap, thread_map, transpose, windows8

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
# Six-digit rows from two 8 KiB tables (kept in L1): the high three digits in bytes 1-3, the low three
# and the separator in bytes 4-7.
_HIGH3 = _DIGITS3 << np.uint64(8)
_LOW3_SEP = (_DIGITS3 << np.uint64(32)) | (np.uint64(32) << np.uint64(56))
# The low four digits land in bytes 3-6 of a row and the separator in byte 7: baked into the table.
_DIGITS4_SEP = (_digit_table(4) << np.uint64(24)) | (np.uint64(32) << np.uint64(56))


def _stores_in_order() -> bool:
    """Whether a 1-D fancy assignment stores its values in index order. The formatter's overlapping stores
    rely on it (NumPy's loop does); checked once, with the mask-and-compress path as the fallback."""
    buf = np.zeros(24, dtype=np.uint8)
    windows8(buf)[np.array([16, 12, 8, 4, 0])] = np.arange(1, 6, dtype=np.uint64) * np.uint64(0x0101010101010101)
    return buf.tolist() == [5] * 8 + [4] * 4 + [3] * 4 + [2] * 4 + [1] * 4


_IN_ORDER = _stores_in_order()


def _small_key(key: np.ndarray, top: int) -> np.ndarray:
    # NumPy's stable sort is a radix sort for 16-bit keys: linear time, no comparisons.
    return key.astype(np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.uint64)


def _in_pixel_order(maps: Sequence[np.ndarray], order: Order) -> np.ndarray:
    """``(n, H*W)`` copy of equally shaped label maps of one dtype, pixels in submission order: column
    order transposes each map (OpenCV's blocked transpose, microseconds a map) straight into the stack."""
    height, width = maps[0].shape
    if order == "row":
        return np.stack(maps).reshape(len(maps), height * width)
    out = np.empty((len(maps), width, height), dtype=maps[0].dtype)
    for k, m in enumerate(maps):
        transpose(m, out=out[k])
    return out.reshape(len(maps), height * width)


def runs(maps: np.ndarray, order: Order) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All runs of equal labels in each map, in submission pixel order.

    Shape:
        maps ``(n, H, W)``; returns ``image, start (0-based), length, label``, each ``(R,)``, sorted by
        image, then start.
    """
    return _runs_flat(_in_pixel_order(list(maps), order))


def _runs_flat(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``runs`` of maps already in pixel order, ``(n, size)``: run starts are the changes between
    neighbours of one flat pass."""
    n, size = flat.shape
    change = np.empty((n, size), dtype=bool)
    np.not_equal(flat[:, 1:], flat[:, :-1], out=change[:, 1:])
    change[:, 0] = True
    index = sparse_flatnonzero(change.reshape(-1))
    label = np.take(flat.reshape(-1), index)
    image, start = np.divmod(index, index.dtype.type(size))
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
    """Text offsets of numbers of ``n_digits`` digits and a space each; the running sum goes over pairs of
    numbers (half the length: NumPy's cumsum does not vectorise), the odd offsets are filled in after."""
    m = len(n_digits)
    pairs = (m + 1) // 2
    offsets = np.zeros(2 * pairs + 1, dtype=np.int64)
    widths = np.zeros(2 * pairs, dtype=np.int8)  # a pad number of width 0 for odd m
    np.add(n_digits, np.int8(1), out=widths[:m])
    np.cumsum(widths[0::2] + widths[1::2], dtype=np.int64, out=offsets[2::2])
    np.add(offsets[0:-1:2], widths[0::2], out=offsets[1::2])
    return offsets[: m + 1]


def _rows7(numbers: np.ndarray, top: int) -> np.ndarray:
    """Numbers below 10**7 as 8-byte rows: zero-padded digits right-aligned in bytes 0-6, a space in byte 7."""
    if top < 10**4:
        return np.take(_DIGITS4_SEP, numbers)  # np.take: no index conversion, unlike a[uint32 index]
    if top < 10**6:
        high, low = np.divmod(numbers, numbers.dtype.type(1000))
        rows = np.take(_LOW3_SEP, low)
        rows |= np.take(_HIGH3, high)
        return rows
    high, low = np.divmod(numbers, numbers.dtype.type(10000))
    rows = np.take(_DIGITS3, high)
    rows |= np.take(_DIGITS4_SEP, low)
    return rows


def format_numbers(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal text of positive integers, each followed by one space.

    Below 10**7 (images up to 10 megapixels) each number becomes one 8-byte row from digit lookup
    tables, its digits and space right-aligned; the rows are then stored at their text offsets, last
    number first, as overlapping unaligned uint64 words, so each row's leading padding lands on bytes
    that the number before it overwrites. Wider numbers are written into fixed-width rows two digits at
    a time, and a per-digit-count byte mask compacts them.

    Shape:
        numbers ``(M,)`` unsigned; returns ``(text (T,) uint8, offsets (M+1,) integers)`` where number
        ``i`` is ``text[offsets[i] : offsets[i+1] - 1]``.
    """
    m = len(numbers)
    if m == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    top = int(numbers.max())
    digits_max = len(str(top))
    n_digits = _digit_counts(numbers, digits_max)
    offsets = _offsets(n_digits)
    if top < 10**7:
        rows = _rows7(numbers, top)
        if _IN_ORDER:
            buf = np.empty(int(offsets[-1]) + 8, dtype=np.uint8)
            windows8(buf)[offsets[:0:-1]] = rows[::-1]  # number i's row ends where number i + 1 starts
            return buf[8:], offsets
        keep = (np.arange(8) >= 7 - n_digits[:, None]).ravel()  # a NumPy that stores out of order
        return np.compress(keep, rows.view(np.uint8)), offsets
    pairs = (digits_max + 1) // 2
    width = 2 * pairs + 2  # digits, separator, one pad byte
    work = numbers.astype(np.uint64, copy=True)
    rows16 = np.empty((m, width // 2), dtype=np.uint16)
    for p in range(pairs - 1, -1, -1):
        work, rest = np.divmod(work, np.uint64(100))
        rows16[:, p] = _PAIRS[rest]
    rows16[:, pairs] = 32  # ' ' then a zero pad byte (little-endian)
    patterns = np.zeros((digits_max + 1, width), dtype=bool)
    for nd in range(1, digits_max + 1):
        patterns[nd, 2 * pairs - nd : 2 * pairs + 1] = True
    text = np.compress(patterns[n_digits].ravel(), rows16.view(np.uint8))
    return text, offsets


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


def _encode_flat(flat: np.ndarray, n_classes: int) -> list[bytes]:
    """RLE bytes of every class of every map of an ``(n, size)`` stack in pixel order, image-major."""
    n = flat.shape[0]
    image, start, length, label = _runs_flat(flat)
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
    steady_heap()
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
        group = [np.asarray(maps[k]) for k in idx]
        if any(g.dtype != np.uint8 for g in group):
            wide = any(g.size and (g.min() < 0 or g.max() > 255) for g in group)
            group = [g.astype(np.int64 if wide else np.uint8) for g in group]
        return _encode_flat(_in_pixel_order(group, order), n_classes)

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
