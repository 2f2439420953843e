"""The competition metric computed locally (``submission.metric``), against true masks or a solution file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kseg import rle
from kseg.bits import class_planes
from kseg.config import Config, DataConfig
from kseg.data.reading import ID, MaskSpec, list_samples, read_mask
from kseg.errors import DataError, SubmissionError
from kseg.metrics.instances import mask_fbeta
from kseg.metrics.scores import class_scores, label_counts, row_dice, row_iou
from kseg.submission.format import SubmissionFormat, load_format
from kseg.submission.instance import component_runs, instance_scores
from kseg.submission.solution import IGNORED, coverage, read_solution, run_overlaps
from kseg.submission.validate import validate_file
from kseg.submission.write import read_prediction


@dataclass
class ScoreResult:
    """The local competition score of a submission.

    Attributes:
        score: ``submission.metric``: by default the mean over rows of Dice (1 for a row whose prediction and
            truth are both empty).
        per_class: ``{class: {"dice", "iou", "empty_share", "rows"}}``; ``empty_share`` is the share of the
            class's rows whose true mask is empty.
        rows: Per row: ``ImageID``, class, intersection, predicted and true pixels, Dice.
        by_usage: Against a solution file with a ``Usage`` column: the score of each part (``Public``,
            ``Private``); ``Ignored`` rows are left out of every figure.
    """

    score: float
    per_class: dict[str, dict[str, float]]
    rows: pd.DataFrame
    metric: str = "row_dice"
    by_usage: dict[str, float] = field(default_factory=dict)


def _truth_paths(data: DataConfig, fmt: SubmissionFormat, truth_dir: Path | None) -> list[Path]:
    if truth_dir is not None:
        truth_dir = Path(truth_dir)
        if not truth_dir.is_dir():
            raise SubmissionError(
                f"truth folder {truth_dir} does not exist; pass --truth DIR with <ImageID>.png masks, "
                "or --truth SOLUTION.csv"
            )
        paths = [truth_dir / f"{i}.png" for i in fmt.image_ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SubmissionError(
                f"no true mask {missing[0]} ({len(missing)} of {len(paths)} missing); the truth folder needs "
                "<ImageID>.png for every test image"
            )
        return paths
    if not data.test_mask_template:
        raise SubmissionError(
            "no true masks to score against: pass --truth DIR (masks named <ImageID>.png), --truth SOLUTION.csv "
            "or set data.test_mask_template"
        )
    try:
        test = list_samples(data, "test")
    except DataError as exc:
        raise SubmissionError(f"{exc}") from None
    return [Path(p) for p in test["mask"]]


def is_solution(truth: Path | None) -> bool:
    """Whether ``--truth`` names a solution file (a CSV in the submission's layout), not a folder of masks."""
    return truth is not None and not Path(truth).is_dir() and (Path(truth).is_file() or Path(truth).suffix == ".csv")


def _truth_maps(data: DataConfig, fmt: SubmissionFormat, truth_dir: Path | None) -> list[np.ndarray]:
    """The true label maps of the test images, checked against the submission's mask sizes."""
    truth_paths = _truth_paths(data, fmt, truth_dir)
    spec = MaskSpec.from_config(data)
    with ThreadPoolExecutor(8) as pool:
        truths = list(pool.map(lambda p: read_mask(p, spec), truth_paths))
    for image_id, truth, shape in zip(fmt.image_ids, truths, fmt.shapes, strict=True):
        if truth.shape != tuple(shape):
            raise SubmissionError(
                f"true mask of {image_id!r} is {truth.shape[0]}x{truth.shape[1]} but the submission's masks are "
                f"{shape[0]}x{shape[1]}; check submission.size"
            )
    return truths


def score_file(path: Path, cfg: Config, truth: Path | None = None) -> ScoreResult:
    """Score a submission file locally, as Kaggle does.

    Args:
        path: The submission.
        cfg: The experiment config (format and metric).
        truth: A folder of true masks ``<ImageID>.png``, or a solution file in the submission's own layout
            (``read_solution``); default ``submission.solution``, else ``data.test_mask_template``. Pixels
            of a true mask whose label is ``data.ignore_index`` are left out (Kaggle's own truth has none).

    Raises:
        SubmissionError: If the file is invalid (Kaggle would reject it) or truth is missing.
    """
    fmt = load_format(cfg.data, cfg.submission)
    report = validate_file(path, cfg, fmt, keep_runs=True)
    if not report.ok:
        raise SubmissionError(
            f"{path} is not a valid submission ({report.first()}); run 'kseg validate {path}' to see every problem"
        )
    assert report.parsed is not None
    usage = np.full(len(fmt.ids), "", dtype=object)
    if truth is None and cfg.submission.solution is not None:
        truth = cfg.data.root / cfg.submission.solution
    bits = (cfg.multilabel, cfg.data.ignore_index)
    if truth is not None and is_solution(truth):
        true_runs, usage = read_solution(Path(truth), fmt, cfg.overlap_check)
        counts = run_overlaps(report.parsed, true_runs, fmt)
    else:
        truths = _truth_maps(cfg.data, fmt, truth)
        counts = _row_counts(report.parsed, fmt, truths, bits)
        true_runs = component_runs(truths, fmt, bits) if cfg.submission.metric == "instance_fbeta" else None
    fbeta = None
    if cfg.submission.metric == "instance_fbeta":
        fbeta = instance_scores(report.parsed, true_runs, fmt, cfg.submission.beta)
    return _file_result(counts, fmt, cfg.submission.metric, usage, fbeta)


def _file_result(
    counts: np.ndarray, fmt: SubmissionFormat, metric: str, usage: np.ndarray, fbeta: np.ndarray | None = None
) -> ScoreResult:
    """The score, per class and per ``Usage`` part, of a file's ``(3, R)`` row counts (``Ignored`` rows
    out); ``fbeta``: each row's instance F-beta, which the ``instance_fbeta`` metric averages."""
    keep = usage != IGNORED
    fbeta = None if fbeta is None else fbeta[keep]
    inter, pred, true = (c[keep] for c in counts)
    row_class, row_image, usage = fmt.row_class[keep], fmt.row_image[keep], usage[keep]
    dice = row_dice(inter, pred, true)
    iou = row_iou(inter, pred, true)
    per_class = {}
    for c, name in enumerate(fmt.classes):
        sel = row_class == c
        if sel.any():
            per_class[name] = {
                "dice": float(dice[sel].mean()),
                "iou": float(iou[sel].mean()),
                "empty_share": float((true[sel] == 0).mean()),
                "rows": int(sel.sum()),
            }
            if fbeta is not None:
                per_class[name]["fbeta"] = float(fbeta[sel].mean())
    rows = pd.DataFrame(
        {
            ID: [fmt.image_ids[i] for i in row_image],
            "class": row_class,
            "intersection": inter,
            "pred_pixels": pred,
            "true_pixels": true,
            "dice": dice,
        },
        index=pd.Index(np.asarray(fmt.ids, dtype=object)[keep], name="row_id"),
    )
    if fbeta is not None:
        rows["fbeta"] = fbeta

    def score(part: np.ndarray) -> float:
        if fbeta is not None:
            return float(fbeta[part].mean()) if part.any() else 1.0
        return rows_metric(metric, inter[part], pred[part], true[part], row_class[part])

    by_usage = {str(part): score(usage == part) for part in sorted(set(usage.tolist()) - {""})}
    if by_usage:
        rows["usage"] = usage
    return ScoreResult(score(np.ones(len(inter), dtype=bool)), per_class, rows, metric, by_usage)


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
        pred = read_prediction(path, true.shape, n_classes=k, multilabel=cfg.multilabel)
        inter, pred_px, true_px = label_counts(pred, true, k, cfg.data.ignore_index, cfg.multilabel)
        if cfg.submission.metric == "instance_fbeta":
            planes = (
                class_planes(pred, k, cfg.multilabel),
                class_planes(true, k, cfg.multilabel, cfg.data.ignore_index),
            )
            fbeta = _map_fbeta(*planes, true != cfg.data.ignore_index, cfg.submission.beta, cfg.scored_classes)
        else:
            fbeta = {}
        for c in cfg.scored_classes:
            rows.append((stem, c, int(inter[c]), int(pred_px[c]), int(true_px[c]), fbeta.get(c, np.nan)))
    table = pd.DataFrame(rows, columns=[ID, "class", "intersection", "pred_pixels", "true_pixels", "fbeta"])
    table["dice"] = row_dice(table["intersection"], table["pred_pixels"], table["true_pixels"])
    iou = row_iou(table["intersection"], table["pred_pixels"], table["true_pixels"])
    per_class = {}
    for c in cfg.scored_classes:
        sel = (table["class"] == c).to_numpy()
        per_class[cfg.data.classes[c]] = {
            "dice": float(table["dice"][sel].mean()),
            "iou": float(iou[sel].mean()),
            "empty_share": float((table["true_pixels"][sel] == 0).mean()),
            "rows": int(sel.sum()),
        }
        if cfg.submission.metric == "instance_fbeta":
            per_class[cfg.data.classes[c]]["fbeta"] = float(table["fbeta"][sel].mean())
    inter, pred_px, true_px = (table[c].to_numpy() for c in ("intersection", "pred_pixels", "true_pixels"))
    if cfg.submission.metric == "instance_fbeta":
        score = float(table["fbeta"].mean()) if len(table) else 1.0
    else:
        table = table.drop(columns="fbeta")
        score = rows_metric(cfg.submission.metric, inter, pred_px, true_px, table["class"].to_numpy())
    return ScoreResult(score, per_class, table, cfg.submission.metric)


def _map_fbeta(
    pred_planes: np.ndarray, true_planes: np.ndarray, scored: np.ndarray, beta: float, classes: list[int]
) -> dict[int, float]:
    """Each of ``classes``' instance F-beta of one image (class planes ``(K, H, W)``; ``scored``: the pixels
    that count), instances as connected components."""
    return {c: mask_fbeta(pred_planes[c], true_planes[c], beta, scored) for c in classes}


def rows_metric(metric: str, inter: np.ndarray, pred: np.ndarray, true: np.ndarray, row_class: np.ndarray) -> float:
    """The metric over submission rows (any classes, any number of rows each): row metrics average the
    rows; ``dataset_iou`` pools each class's rows, then averages the classes. No rows score 1."""
    if len(inter) == 0:
        return 1.0
    if metric != "dataset_iou":
        return float(class_scores(inter, pred, true, metric))
    classes = np.unique(row_class)
    return float(
        np.mean(
            [class_scores(inter[row_class == c], pred[row_class == c], true[row_class == c], metric) for c in classes]
        )
    )


def _truth_runs(truth: np.ndarray, k: int, order: rle.Order, bits: tuple[bool, int]) -> tuple[np.ndarray, ...]:
    """``(plane, start, length)`` of the runs of one true map: planes ``0 .. k-1`` hold each class's pixels,
    plane ``k`` the ignored ones. ``bits``: (multilabel, ignore index); a multilabel pixel may be in several
    class planes."""
    multilabel, ignore_index = bits
    if not multilabel:
        _, start, length, label = rle.runs(truth[None], order)
        return np.minimum(label.astype(np.int64), k), start, length  # the ignore index (>= k) to plane k
    stack = np.concatenate([class_planes(truth, k, True, ignore_index), (truth == ignore_index)[None]])
    plane, start, length, label = rle.runs(stack.view(np.uint8), order)
    on = label == 1
    return plane[on].astype(np.int64), start[on], length[on]


def _row_counts(
    parsed: pd.DataFrame, fmt: SubmissionFormat, truths: list[np.ndarray], bits: tuple[bool, int] = (False, 255)
) -> np.ndarray:
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
        plane, start, length = _truth_runs(truth, k, fmt.order, bits)
        offset = base[i] + plane * sizes[i]
        t_pos.append(offset + start)
        t_end.append(offset + start + length)
        true_area[i] = np.bincount(plane[plane < k], weights=length[plane < k], minlength=k)[:k]
    t_start = np.concatenate(t_pos) if t_pos else np.zeros(0, np.int64)
    t_stop = np.concatenate(t_end) if t_end else np.zeros(0, np.int64)
    covered_before = coverage(t_start, t_stop)

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
