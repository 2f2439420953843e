"""``kseg submit``: predicted label maps -> an encoded, validated submission file, written atomically."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kseg import rle
from kseg.bits import class_mask, class_planes
from kseg.common import Progress
from kseg.config import Config
from kseg.errors import SubmissionError
from kseg.io import atomic_write_bytes, remove_stale
from kseg.metrics.instances import components
from kseg.postprocess import NO_CLASS, PostProcess, apply, apply_to_labels
from kseg.postprocess import load as load_postprocess
from kseg.submission.format import SubmissionFormat, format_csv, format_instances, format_rows, load_format
from kseg.submission.predictions import check_manifest, find_predictions
from kseg.submission.validate import ValidationReport
from kseg.workspace.workdir import WorkDir, default_predictions, prediction_file, read_inference_info


def read_prediction(
    path: Path, shape: tuple[int, int], *, n_classes: int = NO_CLASS, resize: bool = False, multilabel: bool = False
) -> np.ndarray:
    """A predicted label map (``.png`` or ``.npy``) of class indices (and ``NO_CLASS`` where post-processing
    left a pixel without one).

    Args:
        path: The file.
        shape: The ``(H, W)`` the submission needs.
        n_classes: Values from here to 254 are refused: they are no class.
        resize: Resize (nearest) a map of another size to ``shape``; otherwise such a map is refused.
        multilabel: The map holds class bitmasks (values ``0 .. 2**n_classes - 1``, 0 for none).

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
    if labels.dtype.kind not in "ui" or (labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0):
        what = f"{labels.dtype} values" if labels.dtype.kind not in "ui" else f"the negative value {int(labels.min())}"
        raise SubmissionError(
            f"prediction {path} holds {what}, but a label map holds class indices (whole numbers from 0); "
            "save the argmax as uint8"
        )
    top = 2**n_classes if multilabel else n_classes  # valid values: below top (multiclass: and NO_CLASS)
    bad = (labels >= top) & ((labels != NO_CLASS) | multilabel)
    if bad.any():
        valid = (
            f"a bitmask of {n_classes} classes is 0-{top - 1}"
            if multilabel
            else f"there are {n_classes} classes (0-{n_classes - 1}, and {NO_CLASS} for none)"
        )
        raise SubmissionError(
            f"prediction {path} has {'value' if multilabel else 'label'} {int(labels[bad].max())} in "
            f"{int(bad.sum())} pixels, but {valid}; predict with this config's classes"
        )
    if labels.shape != tuple(shape):
        if not resize:
            raise SubmissionError(
                f"prediction {path} is {labels.shape[0]}x{labels.shape[1]} but its image needs "
                f"{shape[0]}x{shape[1]}; predict at the image's size (kseg infer does), or set "
                "submission.resize_predictions: true to resize it (nearest)"
            )
        labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize(shape[::-1], Image.Resampling.NEAREST))
    return labels.astype(np.uint8, copy=False)


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
    predictions: Path | None = None  # the folder the label maps came from
    postprocess: str = "none"  # what post-processed them: "kseg infer", "probabilities", "areas", "off", "none"


def _refuse_partial(directory: Path, info: dict | None, partial: bool) -> None:
    """Predictions made with unfinished folds (``kseg infer --partial``) are submitted only with ``partial``."""
    used = (info or {}).get("partial_folds") or []
    if used and not partial:
        raise SubmissionError(
            f"the predictions in {directory} were made with unfinished folds ({'; '.join(used)}; kseg infer "
            "--partial); finish them and predict again, or pass --partial to submit them as they are"
        )


def _postprocess_plan(
    workdir: Path,
    classes: list[str],
    multilabel: bool,
    directory: Path,
    info: dict | None,
    image_ids: list[str],
    enabled: bool,
) -> tuple[PostProcess | None, bool, str, str]:
    """How ``write_submission`` post-processes the label maps in ``directory`` (``info``: its
    ``inference.json``): returns ``(PostProcess or None, use probabilities, note, short label for the
    submission log)``."""
    if info is not None and info.get("postprocess") is not None:
        note = "post-processing: applied by kseg infer"
        if not enabled:
            note += " (run 'kseg infer --no-postprocess' to leave it out)"
        return None, False, note, "kseg infer"
    if not enabled:
        return None, False, "post-processing: off (--no-postprocess)", "off"
    post = load_postprocess(workdir, classes, multilabel)
    if post is None or post.identity:
        return None, False, "post-processing: none (no postprocess.json, or nothing to change)", "none"
    tuned = WorkDir(workdir).postprocess_json
    if all(prediction_file(directory, i, "probs").is_file() for i in image_ids):
        lacking = None
        if post.needs_presence:  # head gates: every image needs its presence scores too
            lacking = next((i for i in image_ids if not prediction_file(directory, i, "presence").is_file()), None)
        if lacking is not None:
            raise SubmissionError(
                f"{tuned} gates classes {', '.join(post.gated)} on the presence head's score, but "
                f"{prediction_file(directory, lacking, 'presence')} is missing (the predictions come from models "
                "without model.presence_head); predict with the run that was tuned, or run 'kseg tune' on this one"
            )
        return post, True, f"post-processing: {tuned} applied to the saved probabilities", "probabilities"
    return (
        post,
        False,
        (
            f"post-processing: minimum areas of {tuned} applied to the label maps "
            "(its thresholds and gates need probabilities: let kseg infer apply it, or run kseg infer --probs)"
        ),
        "areas",
    )


def _read_postprocessed(
    path: Path,
    shape: tuple[int, int],
    post: PostProcess | None,
    use_probs: bool,
    classes: tuple[int, bool],
    resize: bool,
) -> np.ndarray:
    n_classes, multilabel = classes
    if post is not None and use_probs:
        presence = np.load(path.with_name(f"{path.stem}.presence.npy")) if post.needs_presence else None
        labels = apply(np.load(path.with_name(f"{path.stem}.probs.npy")), post, multilabel, presence)
        if labels.shape != tuple(shape):
            labels = np.asarray(Image.fromarray(labels).resize(shape[::-1], Image.Resampling.NEAREST))
        return labels
    labels = read_prediction(path, shape, n_classes=n_classes, resize=resize, multilabel=multilabel)
    return labels if post is None else apply_to_labels(labels, post, multilabel)


def _read_maps(
    fmt: SubmissionFormat,
    paths: dict[str, Path],
    post: PostProcess | None,
    use_probs: bool,
    classes: tuple[int, bool],
    resize: bool,
    on_progress: Progress | None,
) -> list[np.ndarray]:
    """Every test image's label map at its submission size, in threads (PNG decoding releases the GIL);
    an image without a prediction (``paths`` lacks it) gets an empty map. ``classes``: (count, multilabel)."""
    none = 0 if classes[1] else NO_CLASS
    maps: list[np.ndarray] = []
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_read_postprocessed, paths[i], tuple(s), post, use_probs, classes, resize)
            if i in paths
            else None
            for i, s in zip(fmt.image_ids, fmt.shapes, strict=True)
        ]
        for future, shape in zip(futures, fmt.shapes, strict=True):
            maps.append(future.result() if future is not None else np.full(tuple(shape), none, np.uint8))
            if on_progress:
                on_progress(len(maps), len(futures))
    return maps


def encode_maps(maps: list[np.ndarray], n_classes: int, multilabel: bool, order: rle.Order) -> list[list[bytes]]:
    """The runs of every class of every map (``encoded[image][class]``); multilabel maps are bitmasks,
    each class's plane encoded on its own."""
    if not multilabel:
        return rle.encode_batch(maps, n_classes, order=order)
    planes = [plane.view(np.uint8) for m in maps for plane in class_planes(m, n_classes, True)]
    flat = rle.encode_batch(planes, 2, order=order)
    return [[flat[i * n_classes + k][1] for k in range(n_classes)] for i in range(len(maps))]


def encode_instances(maps: list[np.ndarray], fmt: SubmissionFormat, multilabel: bool) -> list[list[bytes]]:
    """The runs of each connected instance (8-connected component) of every grid row's mask, in threads."""

    def one(row: int) -> list[bytes]:
        label_map = maps[int(fmt.row_image[row])]
        k = int(fmt.row_class[row])
        ids, count = components(class_mask(label_map, k, multilabel))
        return rle.encode_batch([ids], count + 1, order=fmt.order, threads=1)[0][1:] if count else []

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(fmt.ids))))


def proven_valid(data: bytes, fmt: SubmissionFormat) -> ValidationReport:
    """The validation of a file ``write_submission`` built, without reading its text back: what
    ``validate_bytes`` would check holds by construction. Its header and ids are the format's own (the
    sample's, in its order), every mask was encoded by ``kseg.rle`` from a label map of its image's
    submission size whose values were checked (so runs are ascending, disjoint and inside ``H x W``, and an
    argmax map gives a pixel one class). The header and the row count are checked here, as a guard on the
    construction; ``kseg validate`` reads any file back whole.

    Raises:
        SubmissionError: If the guard fails (a bug: nothing is written).
    """
    header, _, rest = data.partition(b"\n")
    rows = rest.count(b"\n")
    expected = format_csv(fmt.header, [], [], fmt.empty, [] if fmt.cells is not None else None).rstrip(b"\n")
    if header != expected or (not fmt.nonempty and not fmt.instances and rows != len(fmt.ids)):
        raise SubmissionError(f"the encoded submission has header {header[:80]!r} and {rows} rows; nothing was written")
    return ValidationReport(rows)


def write_submission(
    cfg: Config,
    out: Path | None = None,
    predictions: Path | None = None,
    on_progress: Progress | None = None,
    postprocess: bool = True,
    fill_empty: bool = False,
    partial: bool = False,
) -> WriteResult:
    """Encode the predicted label maps into a validated submission file, written atomically.

    Args:
        cfg: The experiment config.
        out: Target file (default ``submission.path``).
        predictions: Folder of ``<image id>.png``/``.npy`` label maps (default ``<workdir>/predictions``).
        on_progress: Optional ``callback(done, total)`` over images read.
        postprocess: Apply ``postprocess.json`` if ``kseg infer`` has not already (``note`` says which).
        fill_empty: Submit empty masks for test images ``kseg infer`` skipped (see ``check_manifest``).
        partial: Accept predictions made with unfinished folds (``kseg infer --partial``).

    Raises:
        SubmissionError: If predictions are missing or the encoded file would not validate (nothing is
            written then).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fmt = load_format(cfg.data, cfg.submission)
    directory = predictions or default_predictions(cfg.submission.predictions, cfg.workdir)
    info = read_inference_info(directory)
    _refuse_partial(directory, info, partial)
    required = cfg.submission.require_manifest
    empty, checked = check_manifest(directory, fmt.image_ids, required=required, fill_empty=fill_empty)
    predicted = [i for i in fmt.image_ids if i not in empty]
    paths = dict(zip(predicted, find_predictions(directory, predicted), strict=True))
    post, use_probs, note, label = _postprocess_plan(
        cfg.workdir, list(cfg.data.classes), cfg.multilabel, directory, info, predicted, postprocess
    )
    note = f"{checked}\n{note}"
    timings["format"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    resize = cfg.submission.size != "original" or cfg.submission.resize_predictions  # the config asks for it
    maps = _read_maps(fmt, paths, post, use_probs, (cfg.n_classes, cfg.multilabel), resize, on_progress)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if fmt.instances:
        per_row = encode_instances(maps, fmt, cfg.multilabel)
        masks = [m for found in per_row for m in found]
        data = format_instances(fmt, per_row)
        empty_rows = sum(1 for found in per_row if not found)
    else:
        encoded = encode_maps(maps, cfg.n_classes, cfg.multilabel, fmt.order)
        masks = [encoded[i][k] for i, k in zip(fmt.row_image.tolist(), fmt.row_class.tolist(), strict=True)]
        data = format_rows(fmt, masks)
        empty_rows = 0 if fmt.nonempty else sum(1 for m in masks if not m)
    timings["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = proven_valid(data, fmt)
    timings["validate"] = time.perf_counter() - t0
    target = out or cfg.submission.path
    remove_stale(Path(target).parent, target=Path(target).name)  # a killed earlier submit's temporary file
    t0 = time.perf_counter()
    atomic_write_bytes(target, data)
    timings["write"] = time.perf_counter() - t0
    return WriteResult(
        path=target,
        n_rows=report.n_rows,
        n_images=len(fmt.image_ids),
        n_bytes=len(data),
        empty_rows=empty_rows,
        report=report,
        seconds=timings,
        note=note,
        predictions=Path(directory),
        postprocess=label,
    )
