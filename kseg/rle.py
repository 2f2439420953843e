"""Run-length encoding in Kaggle's submission format, vectorised.

Pixel numbering (the Kaggle default, ``order="column"``): pixels are numbered from **1**, **top to
bottom, then left to right**, i.e. down the first column, then down the second. The pixel at row ``y``,
column ``x`` of an ``H x W`` mask has number ``x * H + y + 1``. A mask is written as ``start length``
pairs separated by single spaces, starts ascending; an empty mask is the empty token (``""`` by default;
some competitions want ``"-1"``). ``order="row"`` numbers pixels left to right, then top to bottom
(``y * W + x + 1``), as some competitions do.

Runs may continue from the bottom of one column into the top of the next: numbering is continuous.

Everything is vectorised: runs are found with one comparison pass over each label map for all classes
together, grouped with a radix sort, and turned into text with a two-digit lookup table; no Python loop
runs over pixels, runs or digits. ``encode_batch`` is the fast path used to write whole submissions and
spreads its work over threads (NumPy releases the GIL in these kernels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

Order = Literal["column", "row"]

__all__ = [
    "decode",
    "decode_batch",
    "decode_labels",
    "encode",
    "encode_batch",
    "encode_labels",
    "parse_rows",
    "runs_to_text",
]

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


def _transpose(a: np.ndarray) -> np.ndarray:
    """C-contiguous transpose of a 2-D uint8 array.

    NumPy's strided byte copy is cache-hostile (~9x slower than OpenCV's blocked SIMD transpose);
    OpenCV comes with albumentations, and a tiled NumPy copy stands in where it is missing.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - albumentations brings OpenCV
        cv2 = None  # type: ignore[assignment]
    if cv2 is not None and a.dtype == np.uint8 and a.size:
        return cv2.transpose(np.ascontiguousarray(a))
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    for i in range(0, a.shape[0], 64):
        out[:, i : i + 64] = a[i : i + 64].T
    return out


def _map(fn, items, threads: int | None) -> list:
    """``[fn(x) for x in items]`` on a thread pool (NumPy releases the GIL in the heavy kernels)."""
    items = list(items)
    threads = threads or os.cpu_count() or 1
    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]


def _check_order(order: str) -> None:
    if order not in ("column", "row"):
        raise ValueError(f"pixel order {order!r} is not 'column' or 'row'")


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


def _format_numbers(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    text, offsets = _format_numbers(numbers)
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
    _check_order(order)
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

    flat = [row for part in _map(work, groups, threads) for row in part]
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


# --------------------------------------------------------------------------------------- decoding


# Byte masks keeping the last ``nd`` of 8 bytes, low nibbles only (ASCII digit -> value).
_NIBBLES = np.array([sum(0x0F << (8 * b) for b in range(8 - nd, 8)) for nd in range(9)], dtype=np.uint64)


def _parse8(data: np.ndarray, last: np.ndarray, n_digits: np.ndarray) -> np.ndarray:
    """Values of digit tokens of at most 8 digits ending at byte ``last``, eight bytes at a time.

    Each token's last 8 bytes are read as one little-endian uint64 (an unaligned view), leading bytes
    are masked off, and the digits are combined pairwise with three multiply-shift steps (SWAR).
    """
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[8:] = data
    windows = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    x = windows[last + 1]  # bytes data[last - 7 .. last]
    x &= _NIBBLES[np.minimum(n_digits, 8)]
    x = ((x * np.uint64(10 * 256 + 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    x = ((x * np.uint64(100 * 65536 + 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    x = (x * np.uint64(10000 * 2**32 + 1)) >> np.uint64(32)
    return x.astype(np.int64)


def parse_rows(rows: Sequence[str], empty: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenise many RLE strings at once.

    Args:
        rows: RLE strings; a row equal to ``empty`` (after stripping) has no tokens.
        empty: The empty-mask token.

    Returns:
        ``(numbers, row_of_number, bad_rows)``: every integer token in order (int64), the row it came
        from, and the sorted indices of rows holding anything but ASCII digits and spaces (their
        tokens are dropped). Numbers of more than 18 digits (never pixel numbers) are returned as -1.
    """
    texts = ["" if r is None or r.strip() == empty else r for r in rows]
    try:
        blob = "\n".join(texts).encode("ascii")
    except UnicodeEncodeError:
        blob = "\n".join(t if t.isascii() else "\x00" for t in texts).encode("ascii")
    data = np.frombuffer(blob, dtype=np.uint8)
    none = np.zeros(0, np.int64)
    if data.size == 0:
        return none, none, none
    newlines = np.flatnonzero(data == 10)
    digit = (data - np.uint8(48)) < 10
    other = ~(digit | (data == 10) | (data == 32))
    bad_rows = np.unique(np.searchsorted(newlines, np.flatnonzero(other))) if other.any() else none
    edges = np.diff(digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1) - 1
    n_digits = last - first + 1
    values = _parse8(data, last, n_digits)
    long = np.flatnonzero(n_digits > 8)
    for i in long.tolist():  # rare: 9+ digit numbers (images above 100 megapixels, or garbage)
        token = blob[first[i] : last[i] + 1]
        values[i] = int(token) if len(token) <= 18 else -1
    per_row = np.diff(np.searchsorted(first, newlines), prepend=0, append=len(first))  # one search per row
    row = np.repeat(np.arange(len(per_row)), per_row)
    if len(bad_rows):
        keep = ~np.isin(row, bad_rows)
        values, row = values[keep], row[keep]
    return values, row.astype(np.int64), bad_rows.astype(np.int64)


def _pairs(rle: str, empty: str) -> tuple[np.ndarray, np.ndarray]:
    numbers, _, bad = parse_rows([rle], empty)
    if len(bad) or len(numbers) % 2 or (numbers < 1).any():
        raise ValueError(f"RLE {rle[:40]!r} is not pairs of positive integers")
    return numbers[0::2], numbers[1::2]


def decode(rle: str, shape: tuple[int, int], order: Order = "column", empty: str = "") -> np.ndarray:
    """Binary mask from an RLE string.

    Shape:
        Returns ``shape`` = ``(H, W)`` uint8 of 0/1.

    Raises:
        ValueError: If the string is not ``start length`` pairs inside the mask.
    """
    _check_order(order)
    height, width = shape
    starts, lengths = _pairs(rle, empty)
    size = height * width
    if len(starts) and (starts + lengths - 1).max() > size:
        raise ValueError(f"RLE {rle[:40]!r} runs past the last pixel {size} of a {height}x{width} mask")
    delta = np.zeros(size + 1, dtype=np.int32)
    np.add.at(delta, starts - 1, 1)
    np.add.at(delta, starts - 1 + lengths, -1)
    flat = (np.cumsum(delta[:-1]) > 0).astype(np.uint8)
    return _transpose(flat.reshape(width, height)) if order == "column" else flat.reshape(height, width)


def decode_labels(
    starts: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, int],
    order: Order = "column",
    fill: int = 0,
) -> np.ndarray:
    """Label map from the runs of several classes of one image (runs must not overlap).

    Args:
        starts: 1-based run starts (any order).
        lengths: Run lengths.
        labels: Class of each run (0-254).
        shape: ``(H, W)``.
        order: Pixel numbering.
        fill: Label of pixels no run covers.

    Shape:
        Returns ``(H, W)`` uint8.

    Raises:
        ValueError: If runs overlap or fall outside the mask.
    """
    height, width = shape
    size = height * width
    starts = np.asarray(starts, dtype=np.int64) - 1
    ends = starts + np.asarray(lengths, dtype=np.int64)
    if len(starts) and (starts.min() < 0 or ends.max() > size):
        raise ValueError(f"runs fall outside the {height}x{width} mask")
    if not len(starts):
        out = np.full(size, fill, dtype=np.uint8)
    else:
        by_start = np.argsort(starts, kind="stable")
        starts, ends = starts[by_start], ends[by_start]
        gaps = np.empty(len(starts) + 1, dtype=np.int64)
        gaps[0] = starts[0]
        gaps[1:-1] = starts[1:] - ends[:-1]
        gaps[-1] = size - ends[-1]
        if (gaps < 0).any():
            raise ValueError("runs of different rows claim the same pixel; a pixel can have one class only")
        # Segments alternate gap, run, gap, ..., gap: one np.repeat writes every pixel once.
        values = np.full(2 * len(starts) + 1, fill, dtype=np.uint8)
        values[1::2] = np.asarray(labels)[by_start]
        counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts[0::2] = gaps
        counts[1::2] = ends - starts
        out = np.repeat(values, counts)
    return _transpose(out.reshape(width, height)) if order == "column" else out.reshape(height, width)


def decode_batch(
    rows: Sequence[str],
    row_image: np.ndarray,
    row_class: np.ndarray,
    shapes: np.ndarray,
    order: Order = "column",
    empty: str = "",
    fill: int = 0,
    threads: int | None = None,
) -> list[np.ndarray]:
    """Label maps of many images from their RLE rows (the inverse of ``encode_batch``).

    Args:
        rows: One RLE string per row.
        row_image: Image index of each row. Shape ``(R,)``.
        row_class: Class of each row. Shape ``(R,)``.
        shapes: ``(H, W)`` of each image. Shape ``(n_images, 2)``.
        order: Pixel numbering.
        empty: The empty-mask token.
        fill: Label of pixels that no row claims.
        threads: Worker threads (default: the number of CPU cores).

    Returns:
        One ``(H, W)`` uint8 label map per image.

    Raises:
        ValueError: On malformed rows, runs outside an image, or a pixel claimed by two rows.
    """
    _check_order(order)
    row_image = np.asarray(row_image)
    row_class = np.asarray(row_class)
    by_image = np.argsort(row_image, kind="stable")
    bounds = np.searchsorted(row_image[by_image], np.arange(len(shapes) + 1))
    chunk = 8  # images tokenised together: small arrays stay in cache, chunks run in parallel

    def work(first: int) -> list[np.ndarray]:
        images = range(first, min(first + chunk, len(shapes)))
        mine = by_image[bounds[first] : bounds[images[-1] + 1]]
        numbers, row_of, bad = parse_rows([rows[r] for r in mine], empty)
        if len(bad):
            r = int(mine[bad[0]])
            raise ValueError(f"row {r} is not space-separated integers: {rows[r][:40]!r}")
        counts = np.bincount(row_of, minlength=len(mine))
        if (counts % 2).any():
            raise ValueError(f"row {int(mine[np.flatnonzero(counts % 2)[0]])} has an odd number of values")
        if (numbers < 1).any():
            raise ValueError("run starts and lengths must be positive integers")
        pair_row = mine[row_of[0::2]]
        pair_image = row_image[pair_row]
        starts, lengths, classes = numbers[0::2], numbers[1::2], row_class[pair_row]
        edges = np.searchsorted(pair_image, np.arange(first, images[-1] + 2))  # rows come grouped by image
        return [
            decode_labels(starts[a:b], lengths[a:b], classes[a:b], tuple(shapes[i]), order, fill)
            for i, a, b in zip(images, edges[:-1], edges[1:], strict=True)
        ]

    return [label for part in _map(work, range(0, len(shapes), chunk), threads) for label in part]
