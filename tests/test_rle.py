import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kseg import rle
from kseg.rle import encoding
from kseg.rle.encoding import format_numbers
from kseg.rle.pixels import sparse_flatnonzero, steady_heap, transpose


def reference_encode(mask: np.ndarray, order: str = "column") -> str:
    """The textbook loop: number pixels, walk them, emit runs (slow, obviously right)."""
    flat = mask.T.ravel() if order == "column" else mask.ravel()
    out, run_start = [], None
    for i, v in enumerate(flat.tolist() + [0]):
        if v and run_start is None:
            run_start = i
        elif not v and run_start is not None:
            out += [run_start + 1, i - run_start]
            run_start = None
    return " ".join(map(str, out))


shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))
masks = shapes.flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(0, 1)))
label_maps = st.tuples(shapes, st.integers(1, 6)).flatmap(
    lambda a: st.tuples(arrays(np.uint8, a[0], elements=st.integers(0, a[1] - 1)), st.just(a[1]))
)
orders = st.sampled_from(["column", "row"])


@settings(max_examples=300, deadline=None)
@given(masks, orders)
def test_round_trip(mask, order):
    text = rle.encode(mask, order)
    assert text == reference_encode(mask, order)
    np.testing.assert_array_equal(rle.decode(text, mask.shape, order), mask)


@settings(max_examples=200, deadline=None)
@given(label_maps, orders)
def test_encode_labels_equals_per_class_encode(case, order):
    label_map, n_classes = case
    rows = rle.encode_labels(label_map, n_classes, order)
    assert rows == [rle.encode(label_map == k, order) for k in range(n_classes)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (5, 7)])
@pytest.mark.parametrize("order", ["column", "row"])
def test_edge_masks(shape, order):
    h, w = shape
    empty = np.zeros(shape, np.uint8)
    full = np.ones(shape, np.uint8)
    assert rle.encode(empty, order) == ""
    assert rle.encode(full, order) == f"1 {h * w}"
    first = empty.copy()
    first[0, 0] = 1
    assert rle.encode(first, order) == "1 1"
    last = empty.copy()
    last[-1, -1] = 1
    assert rle.encode(last, order) == f"{h * w} 1"
    for m in (empty, full, first, last):
        np.testing.assert_array_equal(rle.decode(rle.encode(m, order), shape, order), m)


def test_column_order_is_top_to_bottom_then_left_to_right():
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 0] = 1  # row 1, column 0 -> pixel 2 in column order, 5 in row order
    mask[0, 2] = 1  # row 0, column 2 -> pixel 7 in column order, 3 in row order
    assert rle.encode(mask) == "2 1 7 1"
    assert rle.encode(mask, "row") == "3 1 5 1"


def test_runs_continue_across_columns():
    mask = np.zeros((3, 2), np.uint8)
    mask[2, 0] = 1  # bottom of column 0 ...
    mask[0, 1] = 1  # ... and top of column 1 are neighbours in column order
    assert rle.encode(mask) == "3 2"
    assert rle.encode(mask, "row") == "2 1 5 1"


def test_empty_token():
    zeros = np.zeros((2, 2), np.uint8)
    assert rle.encode_labels(zeros, 2, empty="-1") == ["1 4", "-1"]
    np.testing.assert_array_equal(rle.decode("-1", (2, 2), empty="-1"), zeros)


def test_values_outside_classes_belong_to_no_row():
    label_map = np.array([[0, 255], [1, 1]], np.uint8)
    assert rle.encode_labels(label_map, 2) == ["1 1", "2 1 4 1"]


def test_batch_of_mixed_sizes_and_dtypes():
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 4, s).astype(dt) for s, dt in [((8, 9), np.uint8), ((8, 9), np.int64), ((3, 30), np.uint8)]]
    out = rle.encode_batch(maps, 4, threads=2, chunk=1)
    for m, rows in zip(maps, out, strict=True):
        assert [r.decode() for r in rows] == [reference_encode(m == k) for k in range(4)]


def test_batch_threads_agree():
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 5, (20, 30), dtype=np.uint8) for _ in range(37)]
    assert rle.encode_batch(maps, 5, threads=1) == rle.encode_batch(maps, 5, threads=2, chunk=4)


@pytest.mark.parametrize("top", [9, 99_999, 9_999_999, 10_000_000, 2**40])
def test_number_formatting_at_every_width(top):
    rng = np.random.default_rng(top)
    numbers = rng.integers(1, top + 1, 5000, dtype=np.uint64)
    numbers[:2] = (1, top)
    text, offsets = format_numbers(numbers)
    assert text.tobytes().decode() == "".join(f"{v} " for v in numbers.tolist())
    assert offsets[-1] == len(text)


def test_large_image_uses_wide_numbers():
    mask = np.zeros((4000, 3000), np.uint8)  # 12 megapixels: 8-digit pixel numbers
    mask[-1, -1] = 1
    mask[5, 2500] = 1
    assert rle.encode(mask) == f"{2500 * 4000 + 6} 1 {12_000_000} 1"


def test_parse_rows_flags_garbage_and_keeps_rows_apart():
    numbers, row, bad = rle.parse_rows(["1 2 3 4", "", "-1", "5 x", "  7   8 ", "12345678901234567890 1"])
    assert bad.tolist() == [2, 3]
    assert row.tolist() == [0, 0, 0, 0, 4, 4, 5, 5]
    assert numbers.tolist()[:6] == [1, 2, 3, 4, 7, 8]
    assert numbers[6] == -1  # too long to be a pixel number


def test_decode_rejects_runs_past_the_end_and_odd_counts():
    with pytest.raises(ValueError, match="runs past the last pixel 6"):
        rle.decode("5 3", (2, 3))
    with pytest.raises(ValueError, match="pairs of positive integers"):
        rle.decode("1 2 3", (2, 3))
    with pytest.raises(ValueError, match="pairs of positive integers"):
        rle.decode("0 2", (2, 3))


@settings(max_examples=100, deadline=None)
@given(label_maps, orders)
def test_decode_labels_inverts_encode_labels(case, order):
    label_map, n_classes = case
    starts, lengths, labels = [], [], []
    for k, text in enumerate(rle.encode_labels(label_map, n_classes, order)):
        nums = np.array(text.split(), dtype=np.int64)
        starts += nums[0::2].tolist()
        lengths += nums[1::2].tolist()
        labels += [k] * (len(nums) // 2)
    out = rle.decode_labels(np.array(starts), np.array(lengths), np.array(labels), label_map.shape, order)
    np.testing.assert_array_equal(out, label_map)


def test_decode_labels_of_an_image_without_runs():
    assert rle.decode_labels(np.array([]), np.array([]), np.array([]), (2, 3), fill=7).tolist() == [[7] * 3] * 2


def test_decode_labels_rejects_overlap_and_fills_gaps():
    out = rle.decode_labels(np.array([1]), np.array([2]), np.array([3]), (2, 2), fill=9)
    assert out.tolist() == [[3, 9], [3, 9]]
    with pytest.raises(ValueError, match="claim the same pixel"):
        rle.decode_labels(np.array([1, 2]), np.array([2, 2]), np.array([0, 1]), (2, 2))


@pytest.mark.parametrize("opencv", [True, False])
def test_transpose_with_and_without_opencv(monkeypatch, opencv):
    if not opencv:
        import builtins

        real_import = builtins.__import__

        def no_cv2(name, *args, **kwargs):
            if name == "cv2":
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_cv2)
    a = (np.arange(200 * 130) % 251).astype(np.uint8).reshape(200, 130)
    out = transpose(a)
    np.testing.assert_array_equal(out, a.T)
    assert out.flags["C_CONTIGUOUS"]


def test_transpose_writes_into_a_view_of_a_stack():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int64):
        a = rng.integers(0, 200, (37, 23)).astype(dtype)
        stack = np.zeros((3, 23, 37), dtype=dtype)
        assert np.shares_memory(transpose(a, out=stack[1]), stack)
        np.testing.assert_array_equal(stack[1], a.T)
        assert not stack[0].any() and not stack[2].any()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_sparse_flatnonzero_equals_flatnonzero(n, density, seed):
    mask = np.random.default_rng(seed).random(n) < density
    np.testing.assert_array_equal(sparse_flatnonzero(mask), np.flatnonzero(mask))
    np.testing.assert_array_equal(sparse_flatnonzero(mask[1:]), np.flatnonzero(mask[1:]))  # unaligned


def test_numpy_stores_overlapping_windows_in_index_order():
    # The formatter's fast path relies on it; were it ever false, the fallback below would be taken.
    assert encoding._stores_in_order()


@pytest.mark.parametrize("top", [9, 9_999, 99_999, 9_999_999])
def test_number_formatting_without_overlapping_stores(monkeypatch, top):
    numbers = np.random.default_rng(top).integers(1, top + 1, 3000).astype(np.uint32)
    fast_text, fast_offsets = format_numbers(numbers)
    monkeypatch.setattr(encoding, "_IN_ORDER", False)
    text, offsets = format_numbers(numbers)
    assert text.tobytes() == fast_text.tobytes() == "".join(f"{v} " for v in numbers.tolist()).encode()
    np.testing.assert_array_equal(offsets, fast_offsets)


batches = st.lists(label_maps, min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(batches, orders, st.integers(0, 2**32 - 1))
def test_decode_batch_inverts_encode_batch_with_and_without_gaps(batch, order, seed):
    k = max(n for _, n in batch)
    maps = [m for m, _ in batch]
    rows = [r.decode() for per_map in rle.encode_batch(maps, k, order=order, threads=1) for r in per_map]
    row_image = np.repeat(np.arange(len(maps)), k)
    row_class = np.tile(np.arange(k), len(maps))
    shapes = np.array([m.shape for m in maps])
    for got, want in zip(rle.decode_batch(rows, row_image, row_class, shapes, order, threads=1), maps, strict=True):
        np.testing.assert_array_equal(got, want)  # whole label maps: the tiling path
    # Rows dropped (classes absent from the file), and rows shuffled: what they covered gets the fill.
    keep = np.random.default_rng(seed).permutation(len(rows))[: len(rows) // 2]
    decoded = rle.decode_batch([rows[r] for r in keep], row_image[keep], row_class[keep], shapes, order, fill=200)
    for i, (got, want) in enumerate(zip(decoded, maps, strict=True)):
        kept = row_class[keep][row_image[keep] == i]
        np.testing.assert_array_equal(got, np.where(np.isin(want, kept), want, 200))


def test_decode_batch_rejects_overlaps_and_runs_outside_even_when_the_counts_tile():
    shapes, images = np.array([[2, 2]]), np.array([0, 0])
    # Two rows claim pixels 1-2, nobody claims 3-4: the lengths still add up to the image.
    with pytest.raises(ValueError, match="claim the same pixel"):
        rle.decode_batch(["1 2", "1 2"], images, np.array([0, 1]), shapes)
    with pytest.raises(ValueError, match="outside the 2x2 mask"):
        rle.decode_batch(["1 2", "3 3"], images, np.array([0, 1]), shapes)
    # Runs that cross from one image into the next image of the same chunk are refused too.
    with pytest.raises(ValueError, match="outside the 2x2 mask"):
        rle.decode_batch(["1 5", "2 3"], np.array([0, 1]), np.array([0, 0]), np.array([[2, 2], [2, 2]]))


def test_decode_batch_refuses_starts_past_32_bits_that_would_wrap_into_a_tiling():
    # 0-based start 2**32 + 1 and end 2**32 + 4 read as 1 and 4 in uint32: a tiling of a 2x2 image with "1 1"
    rows, images, classes = ["1 1", f"{2**32 + 2} 3"], np.array([0, 0]), np.array([0, 1])
    with pytest.raises(ValueError, match="outside the 2x2 mask"):
        rle.decode_batch(rows, images, classes, np.array([[2, 2]]))


def test_decode_labels_keeps_zero_length_runs_harmless():
    out = rle.decode_labels(np.array([1, 3]), np.array([0, 2]), np.array([1, 2]), (2, 2), fill=5)
    assert out.tolist() == [[5, 2], [5, 2]]


def test_steady_heap_leaves_a_users_malloc_settings_alone(monkeypatch):
    steady_heap.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    try:
        assert steady_heap() is False
    finally:
        steady_heap.cache_clear()


def test_tokenise_rows_counts_what_parse_rows_lists():
    rows = ["1 2 3 4", "", "-1", "5 x", "  7   8 ", "9"]
    numbers, per_row, bad = rle.tokenise_rows(rows)
    listed, row, bad_too = rle.parse_rows(rows)
    np.testing.assert_array_equal(numbers, listed)
    np.testing.assert_array_equal(bad, bad_too)
    assert per_row.tolist() == [4, 0, 0, 0, 2, 1] == np.bincount(row, minlength=len(rows)).tolist()
    assert rle.tokenise_rows([])[1].tolist() == [] and rle.tokenise_rows([""])[1].tolist() == [0]


row_texts = st.lists(
    st.tuples(
        st.lists(st.integers(0, 10**12), max_size=6),
        st.sampled_from([" ", "  "]),  # the separator: single (the fast path) or double
        st.sampled_from(["", " "]),  # padding around the row
        st.booleans(),  # garbage in the row
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(row_texts, st.booleans())
def test_tokenising_matches_python_on_any_spacing(rows, as_bytes):
    texts = []
    for numbers, sep, pad, garbage in rows:
        text = pad + sep.join(map(str, numbers)) + pad
        texts.append(text + (" x" if garbage else ""))
    rows_in = [t.encode() for t in texts] if as_bytes else texts
    good = [i for i, t in enumerate(texts) if "x" not in t]
    want = [int(v) if len(v) <= 18 else -1 for i in good for v in texts[i].split()]
    numbers, row, bad = rle.parse_rows(rows_in)
    assert numbers.tolist() == want
    assert row.tolist() == [i for i in good for _ in texts[i].split()]
    assert bad.tolist() == [i for i, t in enumerate(texts) if "x" in t]
    counted, per_row, bad_too = rle.tokenise_rows(rows_in)
    assert counted.tolist() == want and bad_too.tolist() == bad.tolist()
    assert per_row.tolist() == [len(t.split()) if i in good else 0 for i, t in enumerate(texts)]
