"""Submission files: write, validate, score, upload.

The format is taken from the competition's ``sample_submission.csv``: its header, its ids and their order.
Each id names a test image and a class through ``submission.id_format`` (``{id}_{k}`` by default: image
id, underscore, class index). Masks are run-length encoded at each test image's original size (or
``submission.size``) with the conventions of ``kseg.rle``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kseg import rle
from kseg.config import Config
from kseg.data import ID, MaskSpec, image_size, list_samples, read_mask
from kseg.errors import DataError, KsegError, SubmissionError
from kseg.io import atomic_write_bytes
from kseg.metrics import label_counts, row_dice, row_iou

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------ format


@dataclass
class SubmissionFormat:
    """What a valid submission of this competition looks like.

    Attributes:
        header: Column names, as in the sample.
        ids: Row ids in the sample's order.
        image_ids: Test image ids.
        image_paths: Test image files.
        row_image: Index into ``image_ids`` of each row. Shape ``(R,)``.
        row_class: Class index of each row. Shape ``(R,)``.
        shapes: Required ``(H, W)`` of each test image's masks. Shape ``(n_images, 2)``.
        order: Pixel order of the RLE.
        empty: Token written for an empty mask.
        classes: Class names.
    """

    header: list[str]
    ids: list[str]
    image_ids: list[str]
    image_paths: list[str]
    row_image: np.ndarray
    row_class: np.ndarray
    shapes: np.ndarray
    order: str
    empty: str
    classes: list[str]
    source: str = "the sample submission"

    def row_index(self) -> dict[str, int]:
        return {row_id: i for i, row_id in enumerate(self.ids)}


def load_format(cfg: Config, test: pd.DataFrame | None = None) -> SubmissionFormat:
    """The submission format of ``cfg``'s competition, from its sample submission and test set."""
    test = list_samples(cfg.data, "test") if test is None else test
    image_ids = test[ID].tolist()
    sub = cfg.submission
    expected: dict[str, tuple[int, int]] = {}
    for i, image_id in enumerate(image_ids):
        for k in range(cfg.n_classes):
            expected[sub.id_format.format(id=image_id, k=k)] = (i, k)
    if len(expected) != len(image_ids) * cfg.n_classes:
        raise SubmissionError(
            f"submission.id_format {sub.id_format!r} gives the same id to two (image, class) pairs; "
            "make it unambiguous, e.g. '{id}_{k}'"
        )
    sample_path = cfg.sample_path
    if sample_path is not None:
        if not sample_path.is_file():
            raise SubmissionError(
                f"sample submission {sample_path} does not exist; set submission.sample (relative to data.root), "
                "or null to write every test image and class"
            )
        sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False, na_filter=False)
        header = list(sample.columns)
        if len(header) < 2:
            raise SubmissionError(
                f"{sample_path} has {len(header)} column(s); a sample submission has an id and a mask column"
            )
        ids = sample[header[0]].tolist()
        dup = sample[header[0]][sample[header[0]].duplicated()]
        if len(dup):
            raise SubmissionError(f"{sample_path} lists id {dup.iloc[0]!r} twice; fix the sample file")
        unknown = [x for x in ids if x not in expected]
        if unknown:
            raise SubmissionError(
                f"{sample_path} id {unknown[0]!r} ({len(unknown)} such) is no test image and class under "
                f"submission.id_format {sub.id_format!r} and {len(image_ids)} test images of data.test_csv; "
                "fix submission.id_format or the test set"
            )
        source = str(sample_path)
    else:
        header = [ID, "EncodedPixels"]
        ids = list(expected)
        source = "submission.id_format"
    pairs = np.array([expected[x] for x in ids], dtype=np.int64).reshape(-1, 2)
    if sub.size == "original":
        with ThreadPoolExecutor(8) as pool:
            shapes = np.array(list(pool.map(lambda p: image_size(Path(p)), test["image"])), dtype=np.int64)
    else:
        shapes = np.tile(np.array(sub.size, dtype=np.int64), (len(image_ids), 1))
    return SubmissionFormat(
        header=header,
        ids=ids,
        image_ids=image_ids,
        image_paths=test["image"].tolist(),
        row_image=pairs[:, 0],
        row_class=pairs[:, 1],
        shapes=shapes.reshape(-1, 2),
        order=sub.pixel_order,
        empty=sub.empty_token,
        classes=list(cfg.data.classes),
        source=source,
    )


# ------------------------------------------------------------------------------------------ writing


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_csv(header: list[str], ids: list[str], masks: list[bytes], empty: str = "") -> bytes:
    """The submission file's bytes: header, then ``id,rle`` per row (``empty`` for an empty mask)."""
    empty_b = empty.encode("ascii")
    parts = [(",".join(_csv_field(h) for h in header) + "\n").encode()]
    for row_id, mask in zip(ids, masks, strict=True):
        parts.append(_csv_field(row_id).encode() + b"," + (mask or empty_b) + b"\n")
    return b"".join(parts)


def read_prediction(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A predicted label map (``.png`` or ``.npy``), resized (nearest) to ``shape`` if needed.

    Shape:
        Returns ``(H, W)`` uint8.
    """
    try:
        if path.suffix == ".npy":
            labels = np.load(path)
        else:
            with Image.open(path) as image:
                labels = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise SubmissionError(f"prediction {path} cannot be read ({exc}); run 'kseg infer' again") from None
    if labels.ndim != 2:
        raise SubmissionError(f"prediction {path} has shape {labels.shape}; a label map is (H, W) of class indices")
    if labels.shape != tuple(shape):
        labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize(shape[::-1], Image.NEAREST))
    return labels.astype(np.uint8, copy=False)


def find_predictions(directory: Path, image_ids: list[str]) -> list[Path]:
    """The prediction file of each test image in ``directory`` (``<id>.png`` or ``<id>.npy``)."""
    if not directory.is_dir():
        raise SubmissionError(f"predictions folder {directory} does not exist; run 'kseg infer' first")
    paths, missing = [], []
    for image_id in image_ids:
        for suffix in (".png", ".npy"):
            candidate = directory / f"{image_id}{suffix}"
            if candidate.is_file():
                paths.append(candidate)
                break
        else:
            missing.append(image_id)
    if missing:
        raise SubmissionError(
            f"no prediction for test image {missing[0]!r} in {directory} ({len(missing)} of {len(image_ids)} "
            "missing); run 'kseg infer' for the whole test set"
        )
    return paths


@dataclass
class WriteResult:
    """What ``write_submission`` wrote."""

    path: Path
    n_rows: int
    n_images: int
    n_bytes: int
    empty_rows: int
    report: ValidationReport
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _postprocess_plan(cfg: Config, directory: Path, image_ids: list[str], enabled: bool):
    """How ``write_submission`` post-processes: returns ``(PostProcess or None, use probabilities, note)``."""
    import json

    from kseg.postprocess import load as load_postprocess

    info_path = directory / "inference.json"
    done = False
    if info_path.is_file():
        try:
            done = json.loads(info_path.read_text(encoding="utf-8")).get("postprocess") is not None
        except ValueError:
            done = False
    if done:
        note = "post-processing: applied by kseg infer"
        if not enabled:
            note += " (run 'kseg infer --no-postprocess' to leave it out)"
        return None, False, note
    if not enabled:
        return None, False, "post-processing: off (--no-postprocess)"
    post = load_postprocess(cfg)
    if post is None or post.identity:
        return None, False, "post-processing: none (no postprocess.json, or nothing to change)"
    if all((directory / f"{i}.probs.npy").is_file() for i in image_ids):
        return post, True, f"post-processing: {cfg.workdir / 'postprocess.json'} applied to the saved probabilities"
    return (
        post,
        False,
        (
            f"post-processing: minimum areas of {cfg.workdir / 'postprocess.json'} applied to the label maps "
            "(its thresholds need probabilities: let kseg infer apply it, or run kseg infer --probs)"
        ),
    )


def _read_postprocessed(path: Path, shape: tuple[int, int], post, use_probs: bool) -> np.ndarray:
    from kseg.postprocess import apply, apply_to_labels

    if post is None:
        return read_prediction(path, shape)
    if use_probs:
        probs_path = path.with_name(f"{path.stem}.probs.npy")
        labels = apply(np.load(probs_path), post)
        if labels.shape != tuple(shape):
            labels = np.asarray(Image.fromarray(labels).resize(shape[::-1], Image.NEAREST))
        return labels
    return apply_to_labels(read_prediction(path, shape), post)


def write_submission(
    cfg: Config,
    out: Path | None = None,
    predictions: Path | None = None,
    on_progress: Progress | None = None,
    postprocess: bool = True,
) -> WriteResult:
    """Encode the predicted label maps into a validated submission file, written atomically.

    Args:
        cfg: The experiment config.
        out: Target file (default ``submission.path``).
        predictions: Folder of ``<image id>.png``/``.npy`` label maps (default ``<workdir>/predictions``).
        on_progress: Optional ``callback(done, total)`` over images read.
        postprocess: Apply ``postprocess.json`` if ``kseg infer`` has not already (``note`` says which).

    Raises:
        SubmissionError: If predictions are missing or the encoded file would not validate (nothing is
            written then).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fmt = load_format(cfg)
    directory = predictions or cfg.predictions_dir
    paths = find_predictions(directory, fmt.image_ids)
    post, use_probs, note = _postprocess_plan(cfg, directory, fmt.image_ids, postprocess)
    timings["format"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    maps: list[np.ndarray] = [None] * len(paths)  # type: ignore[list-item]
    done = 0
    with ThreadPoolExecutor(8) as pool:  # PNG decoding releases the GIL
        futures = [
            pool.submit(_read_postprocessed, p, tuple(s), post, use_probs)
            for p, s in zip(paths, fmt.shapes, strict=True)
        ]
        for i, future in enumerate(futures):
            maps[i] = future.result()
            done += 1
            if on_progress:
                on_progress(done, len(paths))
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    encoded = rle.encode_batch(maps, cfg.n_classes, order=fmt.order)
    masks = [encoded[i][k] for i, k in zip(fmt.row_image.tolist(), fmt.row_class.tolist(), strict=True)]
    data = format_csv(fmt.header, fmt.ids, masks, fmt.empty)
    timings["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = validate_bytes(data, fmt, check_overlap=cfg.submission.check_overlap)
    timings["validate"] = time.perf_counter() - t0
    if not report.ok:  # a bug guard: kseg never writes a file it would reject
        raise SubmissionError(f"the encoded submission failed validation ({report.first()}); nothing was written")
    target = out or cfg.submission.path
    t0 = time.perf_counter()
    atomic_write_bytes(target, data)
    timings["write"] = time.perf_counter() - t0
    return WriteResult(
        path=target,
        n_rows=len(fmt.ids),
        n_images=len(fmt.image_ids),
        n_bytes=len(data),
        empty_rows=sum(1 for m in masks if not m),
        report=report,
        seconds=timings,
        note=note,
    )


# ----------------------------------------------------------------------------------------- validation


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


EXAMPLES = 3


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
    texts: list[str],
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
    numbers, local, bad = rle.parse_rows([texts[r] for r in rows], fmt.empty)
    found.add(
        "not integers",
        rows[bad],
        lambda i: f"line {_line(rows[bad][i])} ({ids[rows[bad][i]]}): {texts[rows[bad][i]][:40]!r}",
    )
    counts = np.bincount(local, minlength=len(rows))
    odd = np.flatnonzero(counts % 2 == 1)
    found.add(
        "odd count", rows[odd], lambda i: f"line {_line(rows[odd][i])} ({ids[rows[odd][i]]}): {counts[odd][i]} numbers"
    )
    keep = counts[local] % 2 == 0
    numbers, local = numbers[keep], local[keep]
    starts, lengths, prow = numbers[0::2], numbers[1::2], rows[local[0::2]]

    def flag(kind: str, hit: np.ndarray, detail: Callable[[int], str]) -> None:
        where = np.flatnonzero(hit)
        found.add(
            kind, prow[where], lambda i: f"line {_line(prow[where[i]])} ({ids[prow[where[i]]]}): {detail(where[i])}"
        )

    flag("not positive", (starts == 0) | (lengths == 0), lambda j: f"start {starts[j]} length {lengths[j]}")
    same = prow[1:] == prow[:-1]
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
    image = image_of_row[prow]
    known = image >= 0
    shape = fmt.shapes[np.maximum(image, 0)]
    size = np.where(known, shape[:, 0] * shape[:, 1], np.iinfo(np.int64).max)
    outside = (starts < 0) | (lengths < 0) | (starts + lengths - 1 > size)

    def outside_detail(j: int) -> str:
        h, w = shape[j]
        if starts[j] < 0 or lengths[j] < 0:
            return f"a number with more than 18 digits, far past the last pixel {h * w} ({h}x{w})"
        return f"run {starts[j]}+{lengths[j]} ends at {starts[j] + lengths[j] - 1} > {h * w} pixels ({h}x{w})"

    flag("outside the mask", outside, outside_detail)

    if check_overlap and not found.rows:
        ends = starts + lengths
        key = np.where(known, image, -1) * (int(size[known].max()) + 1 if known.any() else 1) + starts
        by_pos = np.argsort(key, kind="stable")
        same_image = known[by_pos][1:] & (image[by_pos][1:] == image[by_pos][:-1])
        clash = np.flatnonzero(same_image & (starts[by_pos][1:] < ends[by_pos][:-1]))
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
    return found, (prow, starts, lengths)


RUN_FIXES = {
    "not integers": "masks are 'start length' pairs of positive integers separated by spaces",
    "odd count": "every run needs a start and a length",
    "not positive": "starts count from 1 and lengths are at least 1",
    "starts not ascending": "sort each row's runs by start",
    "overlapping runs": "merge runs that overlap",
    "outside the mask": "runs must end at or before pixel H*W of the image's size",
    "classes overlap": "give each pixel one class (argmax), or set submission.check_overlap: false for "
    "multi-label competitions",
}


def validate_bytes(
    data: bytes, fmt: SubmissionFormat, check_overlap: bool = True, keep_runs: bool = False
) -> ValidationReport:
    """Check a submission's bytes against the competition's format.

    Checks: the header equals the sample's; ids equal the sample's, without duplicates; every mask is
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
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return ValidationReport(0, [Problem("not a CSV", "write a plain comma-separated file", 1, [reason])])
    problems: list[Problem] = []
    header = list(table.columns)
    if header != fmt.header:
        problems.append(
            Problem(
                "header",
                f"write the header exactly as in {fmt.source}",
                1,
                [f"line 1 is {','.join(header)!r} but should be {','.join(fmt.header)!r}"],
            )
        )
        if len(header) < 2:
            return ValidationReport(len(table), problems)
    id_col, mask_col = header[0], header[1]
    ids = table[id_col].tolist()
    n = len(ids)
    index = fmt.row_index()
    dup = np.flatnonzero(table[id_col].duplicated().to_numpy())
    if len(dup):
        problems.append(
            Problem(
                "duplicate ids",
                "keep one row per id",
                len(dup),
                [f"line {_line(r)}: {ids[r]!r} appears again" for r in dup[:EXAMPLES]],
            )
        )
    sample_row = np.array([index.get(x, -1) for x in ids], dtype=np.int64)
    unknown = np.flatnonzero(sample_row < 0)
    if len(unknown):
        problems.append(
            Problem(
                "unknown ids",
                f"use only the ids of {fmt.source}",
                len(unknown),
                [f"line {_line(r)}: {ids[r]!r}" for r in unknown[:EXAMPLES]],
            )
        )
    present = set(ids)
    missing = [x for x in fmt.ids if x not in present]
    if missing:
        problems.append(
            Problem(
                "missing ids",
                f"write one row for every id of {fmt.source}",
                len(missing),
                [repr(x) for x in missing[:EXAMPLES]],
            )
        )

    texts = table[mask_col].tolist()
    image_of_row = np.where(sample_row >= 0, fmt.row_image[np.maximum(sample_row, 0)], -1)
    by_image = np.argsort(image_of_row, kind="stable")  # an image's rows together, for the overlap check
    images_sorted = image_of_row[by_image]
    per_chunk = 8
    cuts = np.searchsorted(images_sorted, np.arange(0, len(fmt.image_ids) + per_chunk, per_chunk))
    cuts = np.unique(np.concatenate([[0], cuts[(cuts > 0) & (cuts < n)], [n]]))
    chunks = [by_image[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]

    def work(rows: np.ndarray):
        return _check_runs(texts, rows, ids, image_of_row, fmt, check_overlap)

    with ThreadPoolExecutor() as pool:
        results = list(pool.map(work, chunks))
    found = _Findings()
    for part, _ in results:
        found.merge(part)
    fixes = dict(RUN_FIXES)
    fixes["outside the mask"] += f" ({fmt.order} order)"
    run_problems = found.problems(fixes)
    for problem in run_problems:
        if problem.kind == "not integers" and any(
            texts[r].strip() in ("-1", "[]", "nan", "None") for r in np.concatenate(found.rows[problem.kind])[:50]
        ):
            problem.fix += (
                f"; if the competition marks empty masks with such a token, set submission.empty_token "
                f"(now {fmt.empty!r})"
            )
    problems += run_problems
    parsed = None
    if keep_runs:
        prow = np.concatenate([runs[0] for _, runs in results]) if results else np.zeros(0, np.int64)
        parsed = pd.DataFrame(
            {
                "row": prow,
                "start": np.concatenate([runs[1] for _, runs in results]) if results else prow,
                "length": np.concatenate([runs[2] for _, runs in results]) if results else prow,
                "sample_row": sample_row[prow],
            }
        )
    return ValidationReport(n, problems, parsed)


def validate_file(
    path: Path, cfg: Config, fmt: SubmissionFormat | None = None, keep_runs: bool = False
) -> ValidationReport:
    """Validate a submission file against ``cfg``'s competition (see ``validate_bytes``)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file {path} does not exist; check the path, or run 'kseg submit'")
    fmt = fmt or load_format(cfg)
    return validate_bytes(path.read_bytes(), fmt, cfg.submission.check_overlap, keep_runs)


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class ScoreResult:
    """The local competition score of a submission.

    Attributes:
        score: Mean over rows of Dice (1 for a row whose prediction and truth are both empty).
        per_class: ``{class: {"dice", "iou", "empty_share", "rows"}}``; ``empty_share`` is the share of the
            class's rows whose true mask is empty.
        rows: Per row: ``ImageID``, class, intersection, predicted and true pixels, Dice.
    """

    score: float
    per_class: dict[str, dict[str, float]]
    rows: pd.DataFrame


def _truth_paths(cfg: Config, fmt: SubmissionFormat, truth_dir: Path | None) -> list[Path]:
    if truth_dir is not None:
        truth_dir = Path(truth_dir)
        if not truth_dir.is_dir():
            raise SubmissionError(f"truth folder {truth_dir} does not exist; pass --truth DIR with <ImageID>.png masks")
        paths = [truth_dir / f"{i}.png" for i in fmt.image_ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SubmissionError(
                f"no true mask {missing[0]} ({len(missing)} of {len(paths)} missing); the truth folder needs "
                "<ImageID>.png for every test image"
            )
        return paths
    if not cfg.data.test_mask_template:
        raise SubmissionError(
            "no true masks to score against: pass --truth DIR (masks named <ImageID>.png) or set "
            "data.test_mask_template"
        )
    try:
        test = list_samples(cfg.data, "test")
    except DataError as exc:
        raise SubmissionError(f"{exc}") from None
    return [Path(p) for p in test["mask"]]


def score_file(path: Path, cfg: Config, truth_dir: Path | None = None) -> ScoreResult:
    """Score a submission file locally, as Kaggle does, against true masks.

    Pixels whose true label is ``data.ignore_index`` are left out (Kaggle's own truth has none).

    Raises:
        SubmissionError: If the file is invalid (Kaggle would reject it) or truth is missing.
    """
    fmt = load_format(cfg)
    report = validate_file(path, cfg, fmt, keep_runs=True)
    if not report.ok:
        raise SubmissionError(
            f"{path} is not a valid submission ({report.first()}); run 'kseg validate {path}' to see every problem"
        )
    truth_paths = _truth_paths(cfg, fmt, truth_dir)
    spec = MaskSpec.from_config(cfg.data)
    with ThreadPoolExecutor(8) as pool:
        truths = list(pool.map(lambda p: read_mask(p, spec), truth_paths))
    for image_id, truth, shape in zip(fmt.image_ids, truths, fmt.shapes, strict=True):
        if truth.shape != tuple(shape):
            raise SubmissionError(
                f"true mask of {image_id!r} is {truth.shape[0]}x{truth.shape[1]} but the submission's masks are "
                f"{shape[0]}x{shape[1]}; check submission.size"
            )
    parsed = report.parsed
    n_rows = len(fmt.ids)
    inter, pred, true = _row_counts(parsed, fmt, truths)
    dice = row_dice(inter, pred, true)
    iou = row_iou(inter, pred, true)
    per_class = {}
    for c, name in enumerate(fmt.classes):
        sel = fmt.row_class == c
        if sel.any():
            per_class[name] = {
                "dice": float(dice[sel].mean()),
                "iou": float(iou[sel].mean()),
                "empty_share": float((true[sel] == 0).mean()),
                "rows": int(sel.sum()),
            }
    rows = pd.DataFrame(
        {
            ID: [fmt.image_ids[i] for i in fmt.row_image],
            "class": fmt.row_class,
            "intersection": inter,
            "pred_pixels": pred,
            "true_pixels": true,
            "dice": dice,
        },
        index=pd.Index(fmt.ids, name="row_id"),
    )
    return ScoreResult(float(dice.mean()) if n_rows else 1.0, per_class, rows)


def score_label_maps(cfg: Config, predictions: Path, truth: Path) -> ScoreResult:
    """Score a folder of predicted label maps (``kseg infer`` output) against a folder of true masks,
    with the competition metric: one row per image and class, Dice = 1 when both are empty.

    Predictions are ``<stem>.png`` class-index maps (colour/overlay files are skipped); true masks are
    files of the same stem in the data set's mask format (index or colour, ``data.palette``).
    """
    predictions, truth = Path(predictions), Path(truth)
    for folder, flag in ((predictions, "--predictions"), (truth, "--truth")):
        if not folder.is_dir():
            raise SubmissionError(f"{flag} {folder} is not a folder; give the folder that holds the masks")
    preds = {p.stem: p for p in sorted(predictions.glob("*.png")) if not p.stem.endswith(("_color", "_overlay"))}
    if not preds:
        raise SubmissionError(f"no predicted label maps (*.png) in {predictions}; run 'kseg infer --out {predictions}'")
    truths = {p.stem: p for p in sorted(truth.iterdir()) if p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp")}
    missing = [stem for stem in preds if stem not in truths]
    if missing:
        raise SubmissionError(
            f"no true mask for prediction {missing[0]!r} in {truth} ({len(missing)} of {len(preds)} missing); "
            "masks must share the predictions' file names"
        )
    spec = MaskSpec.from_config(cfg.data)
    k = len(cfg.data.classes)
    rows = []
    for stem, path in preds.items():
        true = read_mask(truths[stem], spec)
        pred = read_prediction(path, true.shape)
        inter, pred_px, true_px = label_counts(pred, true, k, cfg.data.ignore_index)
        for c in range(k):
            rows.append((stem, c, int(inter[c]), int(pred_px[c]), int(true_px[c])))
    table = pd.DataFrame(rows, columns=[ID, "class", "intersection", "pred_pixels", "true_pixels"])
    table["dice"] = row_dice(table["intersection"], table["pred_pixels"], table["true_pixels"])
    iou = row_iou(table["intersection"], table["pred_pixels"], table["true_pixels"])
    per_class = {}
    for c, name in enumerate(cfg.data.classes):
        sel = (table["class"] == c).to_numpy()
        per_class[name] = {
            "dice": float(table["dice"][sel].mean()),
            "iou": float(iou[sel].mean()),
            "empty_share": float((table["true_pixels"][sel] == 0).mean()),
            "rows": int(sel.sum()),
        }
    return ScoreResult(float(table["dice"].mean()), per_class, table)


def _row_counts(parsed: pd.DataFrame, fmt: SubmissionFormat, truths: list[np.ndarray]) -> np.ndarray:
    """Intersection, predicted and true pixels of every sample row, from runs alone.

    Predicted masks are never drawn: the true label map of each image is itself run-length encoded,
    and the overlap of a predicted run with the true pixels of its class is a difference of cumulative
    counts, looked up with one ``searchsorted`` over all runs of all images.

    Shape:
        Returns ``(3, R)`` int64 for the ``R`` rows of the sample.
    """
    k = len(fmt.classes)
    sizes = fmt.shapes.prod(1)
    planes = k + 1  # one coordinate plane per class, plus one for ignored pixels
    base = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes * planes, out=base[1:])
    t_pos, t_end = [], []
    true_area = np.zeros((len(truths), k), dtype=np.int64)
    for i, truth in enumerate(truths):
        _, start, length, label = rle._runs(truth[None], fmt.order)
        label = label.astype(np.int64)
        plane = np.minimum(label, k)  # the ignore index (>= k by config) goes to the ignore plane
        offset = base[i] + plane * sizes[i]
        t_pos.append(offset + start)
        t_end.append(offset + start + length)
        true_area[i] = np.bincount(label[label < k], weights=length[label < k], minlength=k)[:k]
    t_start = np.concatenate(t_pos) if t_pos else np.zeros(0, np.int64)
    t_stop = np.concatenate(t_end) if t_end else np.zeros(0, np.int64)
    by_pos = np.argsort(t_start, kind="stable")
    t_start, t_stop = t_start[by_pos], t_stop[by_pos]
    cum = np.zeros(len(t_start) + 1, dtype=np.int64)
    np.cumsum(t_stop - t_start, out=cum[1:])

    def covered_before(points: np.ndarray) -> np.ndarray:
        """Number of true pixels (of any plane) at coordinates below each point."""
        j = np.searchsorted(t_stop, points, side="right")
        partial = np.zeros(len(points), dtype=np.int64)
        inside = j < len(t_start)
        partial[inside] = np.clip(points[inside] - t_start[j[inside]], 0, None)
        return cum[j] + partial

    srow = parsed["sample_row"].to_numpy()
    start = parsed["start"].to_numpy() - 1
    length = parsed["length"].to_numpy()
    image = fmt.row_image[srow]
    cls = fmt.row_class[srow]
    lo = base[image] + cls * sizes[image] + start
    hits = covered_before(lo + length) - covered_before(lo)
    lo_ignored = base[image] + k * sizes[image] + start
    on_ignored = covered_before(lo_ignored + length) - covered_before(lo_ignored)
    n = len(fmt.ids)
    inter = np.bincount(srow, weights=hits, minlength=n).astype(np.int64)
    pred = np.bincount(srow, weights=length - on_ignored, minlength=n).astype(np.int64)
    true = true_area[fmt.row_image, fmt.row_class]
    return np.stack([inter, pred, true])


# ------------------------------------------------------------------------------------------ upload


def kaggle_api():
    """An authenticated ``KaggleApi`` (the optional ``kaggle`` extra)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise SubmissionError(
            "uploading needs the kaggle package; install it with pip install 'kseg[kaggle]'"
        ) from None
    api = KaggleApi()
    try:
        api.authenticate()
    except Exception as exc:  # the package raises plain IOError/OSError/ValueError variants
        raise SubmissionError(
            f"Kaggle authentication failed ({exc}); put kaggle.json in ~/.kaggle or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    return api


def upload_submission(path: Path, cfg: Config, competition: str, message: str, api=None) -> ValidationReport:
    """Validate ``path`` and send it to a Kaggle competition; refuses a file that fails validation.

    Args:
        path: The submission file.
        cfg: The experiment config (defines the format).
        competition: The competition's slug, as in its URL.
        message: The submission's description on Kaggle.
        api: An object with ``competition_submit(file_name, message, competition)``; default: the
            ``kaggle`` package's authenticated API.
    """
    report = validate_file(path, cfg)
    if not report.ok:
        raise SubmissionError(
            f"refusing to upload {path}: it is not valid ({report.first()}); run 'kseg validate {path}'"
        )
    if not competition:
        raise SubmissionError("uploading needs --competition SLUG (the name in the competition's URL)")
    api = api or kaggle_api()
    try:
        api.competition_submit(file_name=str(path), message=message, competition=competition)
    except KsegError:
        raise
    except Exception as exc:
        raise SubmissionError(
            f"Kaggle refused the upload to {competition!r} ({exc}); check the slug and that you accepted the rules"
        ) from None
    return report


__all__ = [
    "Problem",
    "ScoreResult",
    "SubmissionFormat",
    "ValidationReport",
    "WriteResult",
    "format_csv",
    "load_format",
    "score_file",
    "upload_submission",
    "validate_bytes",
    "validate_file",
    "write_submission",
]
