"""RLE decoding: many rows tokenised at once (SWAR digit parsing), runs painted into masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from kseg.rle.pixels import Order, check_order, sparse_flatnonzero, steady_heap, thread_map, transpose, windows8

# Byte masks keeping the last ``nd`` of 8 bytes, low nibbles only (ASCII digit -> value).
_NIBBLES = np.array([sum(0x0F << (8 * b) for b in range(8 - nd, 8)) for nd in range(9)], dtype=np.uint64)


def _parse8(data: np.ndarray, end: np.ndarray, n_digits: np.ndarray) -> np.ndarray:
    """Values of digit tokens of ``n_digits`` (at most 8) digits ending before byte ``end``, eight bytes at
    a time.

    Each token's last 8 bytes are read as one little-endian uint64 (an unaligned view), leading bytes
    are masked off, and the digits are combined pairwise with three multiply-shift steps (SWAR), in place.
    """
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[8:] = data
    x = np.take(windows8(padded), end)  # bytes data[end - 8 .. end - 1]
    x &= np.take(_NIBBLES, n_digits)
    for multiplier, shift, keep in _SWAR:
        x *= multiplier
        x >>= shift
        if keep is not None:
            x &= keep
    return x.view(np.int64)  # every value is below 10**8


# (multiplier, shift, mask) of the three SWAR steps: digit pairs, then pairs of pairs, then halves
_SWAR = (
    (np.uint64(10 * 256 + 1), np.uint64(8), np.uint64(0x00FF00FF00FF00FF)),
    (np.uint64(100 * 65536 + 1), np.uint64(16), np.uint64(0x0000FFFF0000FFFF)),
    (np.uint64(10000 * 2**32 + 1), np.uint64(32), None),
)


def _joined(rows: Sequence[str] | Sequence[bytes], empty: str) -> tuple[bytes, list[int] | None]:
    """The rows that hold tokens as one ASCII blob, one row per line, and their indices (None: every row).
    Rows equal to the empty token are left out: a blank line would put two separators in a row, off the
    tokeniser's fast path. A non-ASCII character becomes a byte that is neither a digit nor a space, so its
    row is bad."""
    if rows and isinstance(rows[0], bytes):
        token = empty.encode("utf-8")
        kept = [i for i, r in enumerate(cast("Sequence[bytes]", rows)) if r.strip() != token]
        if len(kept) == len(rows):
            return b"\n".join(cast("Sequence[bytes]", rows)), None
        return b"\n".join(cast("bytes", rows[i]) for i in kept), kept
    kept = [i for i, r in enumerate(cast("Sequence[str]", rows)) if r is not None and r.strip() != empty]
    texts = cast("Sequence[str]", rows) if len(kept) == len(rows) else [cast("str", rows[i]) for i in kept]
    try:
        blob = "\n".join(texts).encode("ascii")
    except UnicodeEncodeError:
        blob = "\n".join(t if t.isascii() else "\x00" for t in texts).encode("ascii")
    return blob, None if len(kept) == len(rows) else kept


def _scan(rows: Sequence[str] | Sequence[bytes], empty: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_tokenise`` of the rows (``per_row`` and ``bad_rows`` in the rows' own numbering)."""
    blob, kept = _joined(rows, empty)
    values, per_kept, bad = _tokenise(blob, len(rows) if kept is None else len(kept))
    if kept is None:
        return values, per_kept, bad
    index = np.asarray(kept, dtype=np.int64)
    per_row = np.zeros(len(rows), dtype=np.int64)
    per_row[index] = per_kept
    return values, per_row, index[bad]


def _token_ends(data: np.ndarray, digit: np.ndarray, n_digit_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(end, n_digits)`` of every digit token: the byte after its last digit, and its length.

    Fast path, a file as writers write it (one separator between tokens, none first): the ends alone are
    found (a digit before a non-digit, a fifth of the bytes) and each length is the gap to the previous
    end less one, which the digit count proves. Otherwise the bounds come from every change of ``digit``
    (a token's first byte, or the byte after its last), which alternate start, end, start, end.
    """
    after = np.empty(len(data) + 1, dtype=bool)
    after[0] = False
    np.greater(digit[:-1], digit[1:], out=after[1:-1])
    after[-1] = digit[-1]
    end = np.flatnonzero(after)
    if len(end) and int(end[-1]) - len(end) + 1 == n_digit_bytes:
        n_digits = np.empty_like(end)
        n_digits[0] = end[0]
        np.subtract(end[1:], end[:-1], out=n_digits[1:])
        n_digits[1:] -= 1
        return end, n_digits
    change = np.empty(len(data) + 1, dtype=bool)
    np.not_equal(digit[1:], digit[:-1], out=change[1:-1])
    change[0], change[-1] = digit[0], digit[-1]
    bounds = np.flatnonzero(change)
    end = np.ascontiguousarray(bounds[1::2])
    return end, end - bounds[0::2]


def _tokenise(blob: bytes, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(numbers, per_row, bad_rows)`` of a blob of ``n_rows`` newline-separated rows: every integer token
    in order, how many each row holds, and the sorted rows holding anything but ASCII digits and spaces
    (their tokens are still counted and returned)."""
    data = np.frombuffer(blob, dtype=np.uint8)
    none = np.zeros(0, np.int64)
    if data.size == 0:
        return none, np.zeros(n_rows, np.int64), none
    newline = data == 10
    newlines = sparse_flatnonzero(newline)
    digit = (data - np.uint8(48)) < 10
    n_digit_bytes = int(np.count_nonzero(digit))
    bad_rows = none
    if n_digit_bytes + len(newlines) + np.count_nonzero(data == 32) < len(data):  # rare: garbage
        other = ~(digit | newline | (data == 32))
        bad_rows = np.unique(np.searchsorted(newlines, np.flatnonzero(other))).astype(np.int64)
    end, n_digits = _token_ends(data, digit, n_digit_bytes)
    longest = int(n_digits.max()) if len(n_digits) else 0
    values = _parse8(data, end, n_digits if longest <= 8 else np.minimum(n_digits, 8))  # longer: below
    long = np.flatnonzero(n_digits > 8) if longest > 8 else none
    for i in long.tolist():  # rare: 9+ digit numbers (images above 100 megapixels, or garbage)
        token = blob[end[i] - n_digits[i] : end[i]]
        values[i] = int(token) if len(token) <= 18 else -1
    per_row = np.diff(np.searchsorted(end, newlines, side="right"), prepend=0, append=len(end))  # one search a row
    return values, per_row, bad_rows


def tokenise_rows(rows: Sequence[str] | Sequence[bytes], empty: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``parse_rows`` with a count per row instead of a row per number (no array as long as the numbers).

    Returns:
        ``(numbers, per_row, bad_rows)``: every integer token of the good rows in order (int64), how
        many each row holds (0 for a bad row), and the sorted indices of rows holding anything but
        ASCII digits and spaces.
    """
    steady_heap()
    return _good_tokens(rows, empty)


def _good_tokens(rows: Sequence[str] | Sequence[bytes], empty: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_scan`` with the bad rows' tokens dropped (their count set to 0)."""
    values, per_row, bad_rows = _scan(rows, empty)
    if len(bad_rows):
        values = values[~np.isin(np.repeat(np.arange(len(per_row)), per_row), bad_rows)]
        per_row[bad_rows] = 0
    return values, per_row, bad_rows


def parse_rows(rows: Sequence[str] | Sequence[bytes], empty: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenise many RLE strings at once.

    Args:
        rows: RLE strings, or their bytes (as a submission file holds them: no decoding, no copy per
            character); a row equal to ``empty`` (after stripping) has no tokens.
        empty: The empty-mask token.

    Returns:
        ``(numbers, row_of_number, bad_rows)``: every integer token in order (int64), the row it came
        from, and the sorted indices of rows holding anything but ASCII digits and spaces (their
        tokens are dropped). Numbers of more than 18 digits (never pixel numbers) are returned as -1.
    """
    values, per_row, bad_rows = _good_tokens(rows, empty)
    return values, np.repeat(np.arange(len(per_row), dtype=np.int64), per_row), bad_rows


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
    check_order(order)
    height, width = shape
    starts, lengths = _pairs(rle, empty)
    size = height * width
    if len(starts) and (starts + lengths - 1).max() > size:
        raise ValueError(f"RLE {rle[:40]!r} runs past the last pixel {size} of a {height}x{width} mask")
    delta = np.zeros(size + 1, dtype=np.int32)
    np.add.at(delta, starts - 1, 1)
    np.add.at(delta, starts - 1 + lengths, -1)
    flat = (np.cumsum(delta[:-1]) > 0).astype(np.uint8)
    return transpose(flat.reshape(width, height)) if order == "column" else flat.reshape(height, width)


def _tiling(starts: np.ndarray, lengths: np.ndarray, classes: np.ndarray, size: int) -> np.ndarray | None:
    """The flat label map when runs (0-based starts, lengths of at least 1) tile ``[0, size)`` exactly (a
    whole label map, the usual case), else None (gaps or overlaps: the general path decides).

    Runs of positive length tile the image iff their sorted starts begin at 0 and their sorted ends are the
    starts after the first, then ``size``: the largest start can only pair with the end ``size``, the next
    one only with the largest start, and so on. Both sorts are of uint32 values (starts carry their class
    in the low byte), which NumPy sorts with SIMD, several times faster than an argsort.
    """
    if not len(starts) or size >= 2**24:
        return None
    ends = starts + lengths
    if int(ends.max()) != size:  # also keeps the uint32 keys below from wrapping (lengths are positive)
        return None
    keyed = starts.astype(np.uint32)
    keyed <<= np.uint32(8)
    keyed |= classes
    keyed.sort()
    ends = ends.astype(np.uint32)
    ends.sort()
    first = keyed >> np.uint32(8)
    if first[0] != 0 or ends[-1] != size or not np.array_equal(ends[:-1], first[1:]):
        return None
    return np.repeat(keyed.astype(np.uint8), np.subtract(ends, first, dtype=np.intp))  # the low byte: the class


def _paint(
    starts: np.ndarray, lengths: np.ndarray, classes: np.ndarray, shape: tuple[int, int], fill: int, checked: bool
) -> np.ndarray:
    """Flat label map (in pixel-number order) of runs with 0-based ``starts``, int64 ``lengths`` and uint8
    ``classes``; ``checked``: the starts are known to be at least 0 and the lengths at least 1."""
    height, width = shape
    size = height * width
    if checked or (len(starts) and starts.min() >= 0 and lengths.min() >= 1):
        tiled = _tiling(starts, lengths, classes, size)
        if tiled is not None:
            return tiled
    if not len(starts):
        return np.full(size, fill, dtype=np.uint8)
    by_start = np.argsort(starts, kind="stable")
    starts, lengths = starts[by_start], lengths[by_start]
    ends = starts + lengths
    gaps = np.empty(len(starts) + 1, dtype=np.int64)
    gaps[0] = starts[0]
    np.subtract(starts[1:], ends[:-1], out=gaps[1:-1])
    gaps[-1] = size - ends[-1]
    if gaps.min() < 0:  # sorted and apart, the first start and the last end bound them all
        if starts[0] < 0 or ends.max() > size:
            raise ValueError(f"runs fall outside the {height}x{width} mask")
        raise ValueError("runs of different rows claim the same pixel; a pixel can have one class only")
    # Segments alternate gap, run, gap, ..., gap: one np.repeat writes every pixel once.
    values = np.full(2 * len(starts) + 1, fill, dtype=np.uint8)
    values[1::2] = classes[by_start]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0::2] = gaps
    counts[1::2] = lengths
    return np.repeat(values, counts)


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
    starts = np.asarray(starts, dtype=np.int64) - 1
    lengths = np.asarray(lengths, dtype=np.int64)
    classes = np.asarray(labels).astype(np.uint8)
    out = _paint(starts, lengths, classes, (height, width), fill, checked=False)
    return transpose(out.reshape(width, height)) if order == "column" else out.reshape(height, width)


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
    steady_heap()
    check_order(order)
    row_image = np.asarray(row_image)
    row_class = np.asarray(row_class).astype(np.uint8)
    by_image = np.argsort(row_image, kind="stable")
    bounds = np.searchsorted(row_image[by_image], np.arange(len(shapes) + 1))
    chunk = 8  # images tokenised together: small arrays stay in cache, chunks run in parallel

    def work(first: int) -> list[np.ndarray]:
        images = range(first, min(first + chunk, len(shapes)))
        mine = by_image[bounds[first] : bounds[images[-1] + 1]]
        numbers, per_row, bad = _scan([rows[r] for r in mine], empty)
        if len(bad):
            r = int(mine[bad[0]])
            raise ValueError(f"row {r} is not space-separated integers: {rows[r][:40]!r}")
        if (per_row % 2).any():
            raise ValueError(f"row {int(mine[np.flatnonzero(per_row % 2)[0]])} has an odd number of values")
        if len(numbers) and numbers.min() < 1:
            raise ValueError("run starts and lengths must be positive integers")
        starts, lengths = numbers[0::2] - 1, numbers[1::2]
        classes = np.repeat(row_class[mine], per_row // 2)
        pairs = np.zeros(len(mine) + 1, dtype=np.int64)
        np.cumsum(per_row // 2, out=pairs[1:])
        edges = pairs[bounds[first : images[-1] + 2] - bounds[first]]  # rows come grouped by image
        maps = []
        for i, a, b in zip(images, edges[:-1], edges[1:], strict=True):
            height, width = (int(v) for v in shapes[i])
            flat = _paint(starts[a:b], lengths[a:b], classes[a:b], (height, width), fill, checked=True)
            maps.append(transpose(flat.reshape(width, height)) if order == "column" else flat.reshape(height, width))
        return maps

    return [label for part in thread_map(work, range(0, len(shapes), chunk), threads) for label in part]
