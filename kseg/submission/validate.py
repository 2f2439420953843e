"""Every problem of a submission file at once, vectorised: header, ids, and each mask's runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kseg import rle
from kseg.config import Config
from kseg.data.listing import repeats
from kseg.errors import SubmissionError
from kseg.submission.format import SubmissionFormat, grid_key, load_format
from kseg.submission.table import NotCSV, read_table

if TYPE_CHECKING:  # pandas is imported where the parsed runs become a table (scoring)
    import pandas as pd


@dataclass
class Problem:
    """One kind of problem in a submission file.

    Attributes:
        kind: Short name.
        fix: What to do about it.
        count: Rows (or ids) affected.
        examples: The first few, with line numbers and details.
    """

    kind: str
    fix: str
    count: int
    examples: list[str]


@dataclass
class ValidationReport:
    """Everything wrong with a submission file; ``ok`` when nothing is."""

    n_rows: int
    problems: list[Problem] = field(default_factory=list)
    parsed: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def first(self) -> str:
        if not self.problems:
            return "valid"
        p = self.problems[0]
        return f"{p.kind}: {p.examples[0] if p.examples else ''}"


CHUNK_CHARS = 16_000_000  # characters of runs checked in one pass (a 41 MB file: three passes)
EXAMPLES = 3
SHOWN = 40  # characters of an offending value shown; longer values are cut, with their length


def clip(value: str | bytes, quoted: bool = True) -> str:
    """A value as shown in a problem (quoted), cut after ``SHOWN`` characters with its full length."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    show = repr if quoted else str
    return show(value) if len(value) <= SHOWN else f"{show(value[:SHOWN])}... ({len(value):,} characters)"


def _line(i: int) -> int:
    return i + 2  # header is line 1


class _Findings:
    """Rows flagged per kind of problem, with details for the first few (by line)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[np.ndarray]] = {}
        self.details: dict[str, list[tuple[int, str]]] = {}

    def add(self, kind: str, rows: np.ndarray, detail: Callable[[int], str]) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        self.rows.setdefault(kind, []).append(rows)
        order = np.argsort(rows, kind="stable")[:EXAMPLES]
        self.details.setdefault(kind, []).extend((int(rows[i]), detail(int(i))) for i in order)

    def merge(self, other: _Findings) -> None:
        for kind, rows in other.rows.items():
            self.rows.setdefault(kind, []).extend(rows)
            self.details.setdefault(kind, []).extend(other.details[kind])

    def problems(self, fixes: dict[str, str]) -> list[Problem]:
        out = []
        for kind, fix in fixes.items():
            if kind in self.rows:
                count = len(np.unique(np.concatenate(self.rows[kind])))
                examples = list(dict.fromkeys(text for _, text in sorted(self.details[kind])))[:EXAMPLES]
                out.append(Problem(kind, fix, count, examples))
        return out


def _check_runs(
    texts: list[bytes],
    rows: np.ndarray,
    ids: list[str],
    image_of_row: np.ndarray,
    fmt: SubmissionFormat,
    check_overlap: bool,
) -> tuple[_Findings, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Check the masks of some rows (all rows of the images they cover), vectorised.

    Returns the findings and the runs ``(row, start, length)`` of the rows that passed.
    """
    found = _Findings()
    numbers, counts, bad = rle.tokenise_rows([texts[r] for r in rows], fmt.empty)
    found.add(
        "not integers",
        rows[bad],
        lambda i: f"line {_line(rows[bad][i])} ({clip(ids[rows[bad][i]], False)}): {clip(texts[rows[bad][i]])}",
    )
    odd = np.flatnonzero(counts % 2 == 1)
    found.add(
        "odd count",
        rows[odd],
        lambda i: f"line {_line(rows[odd][i])} ({clip(ids[rows[odd][i]], False)}): {counts[odd][i]} numbers",
    )
    if len(odd):  # drop the odd rows' numbers, so that the rest pair up (skipped when every row pairs)
        numbers = numbers[np.repeat(counts % 2 == 0, counts)]
        counts = np.where(counts % 2 == 0, counts, 0)
    starts, lengths, prow = numbers[0::2], numbers[1::2], np.repeat(rows, counts // 2)

    def flag(kind: str, hit: np.ndarray, detail: Callable[[int], str]) -> None:
        where = np.flatnonzero(hit)
        found.add(
            kind,
            prow[where],
            lambda i: f"line {_line(prow[where[i]])} ({clip(ids[prow[where[i]]], False)}): {detail(where[i])}",
        )

    positive = not len(numbers) or int(numbers.min()) >= 1  # (a number too long to read is -1)
    if not positive:
        flag("not positive", (starts == 0) | (lengths == 0), lambda j: f"start {starts[j]} length {lengths[j]}")
    # A row's runs are in order and apart when each starts at or after the end of the one before it;
    # which of the two rules a run breaks is only worked out where one is broken.
    same = prow[1:] == prow[:-1]
    if not positive or (same & (starts[1:] < starts[:-1] + lengths[:-1])).any():
        not_ascending = np.zeros(len(starts), dtype=bool)
        not_ascending[1:] = same & (starts[1:] <= starts[:-1])
        flag("starts not ascending", not_ascending, lambda j: f"start {starts[j]} after start {starts[j - 1]}")
        overlapping = np.zeros(len(starts), dtype=bool)
        overlapping[1:] = same & ~not_ascending[1:] & (starts[1:] < starts[:-1] + lengths[:-1])
        flag(
            "overlapping runs",
            overlapping,
            lambda j: f"run {starts[j]}+{lengths[j]} starts inside run {starts[j - 1]}+{lengths[j - 1]}",
        )
    # pixels of each row's image (unknown images: no limit), one gather per run
    row_size = np.where(
        image_of_row >= 0, np.prod(fmt.shapes, axis=1)[np.maximum(image_of_row, 0)], np.iinfo(np.int64).max
    )
    size = row_size[prow]
    outside = starts + lengths - 1 > size
    if not positive:
        outside |= (starts < 0) | (lengths < 0)

    def outside_detail(j: int) -> str:
        h, w = fmt.shapes[image_of_row[prow[j]]]
        if starts[j] < 0 or lengths[j] < 0:
            return f"a number with more than 18 digits, far past the last pixel {h * w} ({h}x{w})"
        return f"run {starts[j]}+{lengths[j]} ends at {starts[j] + lengths[j] - 1} > {h * w} pixels ({h}x{w})"

    flag("outside the mask", outside, outside_detail)

    if check_overlap and not found.rows:
        _flag_overlaps(found, ids, prow, starts, lengths, image_of_row[prow], size)
    return found, (prow, starts, lengths)


def _flag_overlaps(
    found: _Findings,
    ids: list[str],
    prow: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    image: np.ndarray,
    size: np.ndarray,
) -> None:
    """Add the pixels that two rows of one image both claim (``image`` is -1 for unknown images).

    Each run's start and end become positions on one line, image after image (``image * stride + pixel``,
    the stride above every image's size); sorted by start, a run clashes with the one before it when it
    starts before that one ends, which the stride keeps within one image."""
    known = np.flatnonzero(image >= 0)
    if len(known) < len(image):
        prow, starts, lengths, image, size = prow[known], starts[known], lengths[known], image[known], size[known]
    if not len(image):
        return
    stride = int(size.max()) + 1
    key = image * stride + starts
    if _apart(key, lengths):
        return
    by_pos = np.argsort(key, kind="stable")  # only to name the clashes
    sorted_key = key[by_pos]
    clash = np.flatnonzero(sorted_key[1:] < (sorted_key + lengths[by_pos])[:-1])
    a, b = by_pos[clash], by_pos[clash + 1]
    first_row, second_row = np.minimum(prow[a], prow[b]), np.maximum(prow[a], prow[b])
    pairs = len(clash)
    found.add(
        "classes overlap",
        np.concatenate([first_row, second_row]),  # both rows of each clash count as affected
        lambda i: (
            f"lines {_line(first_row[i % pairs])} and {_line(second_row[i % pairs])} "
            f"({ids[first_row[i % pairs]]}, {ids[second_row[i % pairs]]}) both claim pixel {starts[b[i % pairs]]}"
        ),
    )


def _apart(key: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether runs at positions ``key`` (distinct images far apart on one line) with lengths of at least 1
    share no pixel: sorted apart, every end comes at or before the next start (at most one run is open at
    any pixel). Two sorts of plain values (SIMD; uint32 where they fit) instead of an argsort."""
    ends = key + lengths
    narrow = np.uint32 if len(ends) and int(ends.max()) < 2**32 else np.int64
    first = np.sort(key.astype(narrow))
    last = np.sort(ends.astype(narrow))
    return bool(np.all(last[:-1] <= first[1:]))


RUN_FIXES = {
    "not integers": "masks are 'start length' pairs of positive integers separated by spaces",
    "odd count": "every run needs a start and a length",
    "not positive": "starts count from 1 and lengths are at least 1",
    "starts not ascending": "sort each row's runs by start",
    "overlapping runs": "merge runs that overlap",
    "outside the mask": "runs must end at or before pixel H*W of the image's size",
    "classes overlap": "give each pixel one class (argmax) and keep an image's instances apart; if the "
    "competition's classes may overlap, set data.multilabel: true (or submission.check_overlap: false)",
}


def validate_bytes(
    data: bytes, fmt: SubmissionFormat, check_overlap: bool = True, keep_runs: bool = False
) -> ValidationReport:
    """Check a submission's bytes against the competition's format.

    Checks: the header equals the sample's; ids equal the sample's (a subset where ``fmt.nonempty``; in
    the long layout an id is the image and class cells), without duplicates (in the instances layout an
    id repeats once per instance, and instances of one image must not overlap either); every mask is
    ``start length`` pairs of positive integers, starts ascending, runs not overlapping and inside the
    image's ``H x W``; optionally, no pixel is claimed by two classes of one image. Masks are checked
    a few images at a time, in parallel, so arrays stay small.

    Args:
        data: The file's bytes.
        fmt: The competition's format.
        check_overlap: Also check that no pixel has two classes.
        keep_runs: Keep the parsed runs in ``report.parsed`` (for scoring).
    """
    try:
        table = read_table(data)
    except NotCSV as exc:
        return ValidationReport(0, [Problem("not a CSV", "write a plain comma-separated file", 1, [str(exc)])])
    header = table.header
    problems: list[Problem] = []
    if header != fmt.header:
        line = f"line 1 is {clip(','.join(header))} but should be {','.join(fmt.header)!r}"
        problems.append(Problem("header", f"write the header exactly as in {fmt.source}", 1, [line]))
        if len(header) < len(fmt.header):
            return ValidationReport(len(table.first), problems)
    ids = table.first
    if fmt.layout == "long" and table.third is not None:  # a row is named by its image and class cells
        ids = [grid_key(image, klass) for image, klass in zip(ids, table.third, strict=True)]
    index = fmt.row_index()  # once: built per row, it made validation quadratic in the rows
    sample_row = np.array([index.get(x, -1) for x in ids], dtype=np.int64)
    problems += _id_problems(ids, sample_row, fmt)
    texts = table.runs
    results = _check_masks(texts, ids, sample_row, fmt, check_overlap)
    found = _Findings()
    for part, _ in results:
        found.merge(part)
    problems += _run_problems(found, texts, fmt)
    parsed = _parsed_runs([runs for _, runs in results], sample_row) if keep_runs else None
    return ValidationReport(len(ids), problems, parsed)


def _id_problems(ids: list[str], sample_row: np.ndarray, fmt: SubmissionFormat) -> list[Problem]:
    """Duplicate, unknown and missing ids (``sample_row`` is each row's index in the sample, -1 if none)."""
    problems = []
    dup = np.array(repeats(ids) if not fmt.instances else [], dtype=np.int64)
    if len(dup):
        examples = [f"line {_line(r)}: {clip(ids[r])} appears again" for r in dup[:EXAMPLES]]
        problems.append(Problem("duplicate ids", "keep one row per id", len(dup), examples))
    unknown = np.flatnonzero(sample_row < 0)
    if len(unknown):
        examples = [f"line {_line(r)}: {clip(ids[r])}" for r in unknown[:EXAMPLES]]
        problems.append(Problem("unknown ids", f"use only the ids of {fmt.source}", len(unknown), examples))
    present = set(ids)
    missing = [] if fmt.nonempty else [x for x in fmt.ids if x not in present]
    if missing:
        examples = [repr(x) for x in missing[:EXAMPLES]]
        problems.append(Problem("missing ids", f"write one row for every id of {fmt.source}", len(missing), examples))
    return problems


def _check_masks(
    texts: list[bytes], ids: list[str], sample_row: np.ndarray, fmt: SubmissionFormat, check_overlap: bool
) -> list[tuple[_Findings, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``_check_runs`` over the rows in chunks of about ``CHUNK_NUMBERS`` numbers (an image's rows together,
    for the overlap check), in threads: one pass for most files, a few for the largest, so that the
    arrays stay small while the per-call overhead stays negligible."""
    n = len(ids)
    image_of_row = np.where(sample_row >= 0, fmt.row_image[np.maximum(sample_row, 0)], -1)
    by_image = np.argsort(image_of_row, kind="stable")
    weight = np.fromiter((len(texts[r]) for r in by_image), dtype=np.int64, count=n)  # characters ~ numbers
    per_image = np.bincount(np.searchsorted(np.unique(image_of_row[by_image]), image_of_row[by_image]), weights=weight)
    per_chunk = min(CHUNK_CHARS, max(1, int(weight.sum()) // (2 * (os.cpu_count() or 1)) + 1))  # two per core
    image_cuts = np.flatnonzero(np.diff(np.floor_divide(np.cumsum(per_image), per_chunk), prepend=0)) + 1
    starts = np.searchsorted(image_of_row[by_image], np.unique(image_of_row[by_image]))
    cuts = np.unique(np.concatenate([[0], starts[image_cuts[image_cuts < len(starts)]], [n]]))
    chunks = [by_image[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]

    def work(rows: np.ndarray) -> tuple[_Findings, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return _check_runs(texts, rows, ids, image_of_row, fmt, check_overlap)

    if len(chunks) == 1:
        return [work(chunks[0])]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(work, chunks))


def _run_problems(found: _Findings, texts: list[bytes], fmt: SubmissionFormat) -> list[Problem]:
    """The findings as problems, with a hint when an empty-mask token seems to be the cause."""
    fixes = dict(RUN_FIXES)
    fixes["outside the mask"] += f" ({fmt.order} order)"
    problems = found.problems(fixes)
    for problem in problems:
        if problem.kind == "not integers" and any(
            texts[r].strip() in (b"-1", b"[]", b"nan", b"None") for r in np.concatenate(found.rows[problem.kind])[:50]
        ):
            problem.fix += (
                f"; if the competition marks empty masks with such a token, set submission.empty_token "
                f"(now {fmt.empty!r})"
            )
    return problems


def _parsed_runs(runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], sample_row: np.ndarray) -> pd.DataFrame:
    """Every valid run: ``row, start, length, sample_row``, for scoring."""
    import pandas as pd

    empty = np.zeros(0, np.int64)
    prow = np.concatenate([r[0] for r in runs]) if runs else empty
    return pd.DataFrame(
        {
            "row": prow,
            "start": np.concatenate([r[1] for r in runs]) if runs else empty,
            "length": np.concatenate([r[2] for r in runs]) if runs else empty,
            "sample_row": sample_row[prow],
        }
    )


def validate_file(
    path: Path, cfg: Config, fmt: SubmissionFormat | None = None, keep_runs: bool = False
) -> ValidationReport:
    """Validate a submission file against ``cfg``'s competition (see ``validate_bytes``)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file {path} does not exist; check the path, or run 'kseg submit'")
    fmt = fmt or load_format(cfg.data, cfg.submission)
    return validate_bytes(path.read_bytes(), fmt, cfg.overlap_check, keep_runs)
