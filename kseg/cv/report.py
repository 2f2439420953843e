"""Cross-validation report from the out-of-fold predictions: scores, confusion matrix, worst images.

Everything is computed at the OOF resolution (``data.image_size``), with and without the tuned
post-processing; pictures go to ``<workdir>/report/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kseg.common import Progress
from kseg.config import Config, DataConfig
from kseg.data.images import load_image
from kseg.data.reading import ID, MaskSpec, list_samples
from kseg.errors import TuneError
from kseg.io import atomic_write_text
from kseg.metrics.scores import class_scores, row_dice, row_iou
from kseg.plotting import NO_CLASS_COLOUR, class_colour, colorize, palette_rgb, pyplot, save_figure, to_uint8
from kseg.postprocess import (
    OOFBuilder,
    OOFRun,
    OOFSet,
    PostProcess,
    apply,
    class_table,
    instance_grids,
    load,
    load_oof,
)
from kseg.workspace.oof import read_oof, read_oof_presence
from kseg.workspace.workdir import WorkDir


@dataclass
class Report:
    """The CV figures and where the pictures are."""

    folds: pd.DataFrame  # fold, images, score before / after post-processing
    classes: pd.DataFrame  # class, dice, iou (after), dice_before, empty_share
    overall_before: float
    overall_after: float
    worst: pd.DataFrame  # ImageID, fold, dice
    confusion_png: Path
    worst_png: Path
    post: PostProcess | None
    metric: str = "row_dice"


def _row_counts(oof: OOFSet, post: PostProcess | None, classes: list[str]) -> tuple[np.ndarray, ...]:
    """Intersection, predicted and true pixels per image and class, with the post-processing.

    Shape:
        Each ``(N, K)``.
    """
    n, k = oof.truth_area.shape
    inter, pred = np.zeros((n, k)), np.zeros((n, k))
    for j, name in enumerate(classes):
        area, hits = class_table(oof, j)
        level, min_area = oof.identity[0], 0.0
        params = post.params.get(name) if post is not None else None
        emptied = np.zeros(n, dtype=bool)
        if params is not None:  # a class kept at argmax (threshold 0) may still have a minimum area
            min_area = params.min_area
            if params.threshold > 0:
                level = oof.level(params.threshold)
            if params.gate > 0:
                emptied = area[:, oof.level(params.gate)] < np.maximum(1.0, params.gate_area * oof.n_pixels)
            if params.presence > 0:
                if oof.presence is None:
                    raise TuneError(
                        f"class {name}'s post-processing gates on presence scores, which this run's out-of-fold "
                        "predictions lack (no model.presence_head); run 'kseg tune' again"
                    )
                emptied |= oof.presence[:, j] < params.presence
        emptied |= area[:, level] < min_area * oof.n_pixels
        pred[:, j] = np.where(emptied, 0, area[:, level])
        inter[:, j] = np.where(emptied, 0, hits[:, level])
    return inter, pred, oof.truth_area.astype(np.float64)


def empty_rows(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Rows per class by whether the truth is empty and whether the prediction is: ``both_empty``,
    ``false_positive`` (truth empty, prediction not), ``false_negative`` and ``both_filled``.

    Shape:
        pred, truth ``(N, K)`` pixel counts; each result ``(K,)``."""
    t, p = truth == 0, pred == 0
    return {
        "both_empty": (t & p).sum(0),
        "false_positive": (t & ~p).sum(0),
        "false_negative": (~t & p).sum(0),
        "both_filled": (~t & ~p).sum(0),
    }


def cv_report(cfg: Config, worst: int = 6, on_progress: Progress | None = None) -> Report:
    """Per-fold and overall OOF scores (``submission.metric``), per-class Dice / IoU, confusion matrix and
    worst images (by their mean row Dice)."""
    post = load(cfg.workdir, list(cfg.data.classes), cfg.multilabel)
    fbeta = None
    if cfg.submission.metric == "instance_fbeta":  # one pass over the OOF files for both kinds of figures
        builder = OOFBuilder(cfg.n_classes, cfg.multilabel)
        found = instance_grids(OOFRun.from_config(cfg), cfg.submission.beta, on_progress, builder)
        oof = builder.build()
        fbeta = found.image_scores(None), found.image_scores(post)
    else:
        oof = load_oof(cfg.workdir, cfg.n_classes, cfg.multilabel, on_progress)
    classes = list(cfg.data.classes)
    metric = cfg.submission.metric
    raw = _row_counts(oof, None, classes)
    inter, pred, truth = _row_counts(oof, post, classes)
    before, after = row_dice(*raw), row_dice(inter, pred, truth)
    iou = row_iou(inter, pred, truth)

    def score(counts: tuple[np.ndarray, ...], rows: np.ndarray) -> float:
        if fbeta is not None:  # counts is raw (before) or not
            return float(fbeta[0 if counts is raw else 1][rows].mean()) if rows.any() else 1.0
        i, p, t = (c[rows] for c in counts)
        return float(class_scores(i, p, t, metric)[cfg.scored_classes].mean())

    folds = pd.DataFrame(
        [
            {
                "fold": int(f),
                "images": int((oof.folds == f).sum()),
                "score": score(raw, oof.folds == f),
                "score_postprocessed": score((inter, pred, truth), oof.folds == f),
            }
            for f in np.unique(oof.folds)
        ]
    )
    everything = np.ones(len(oof.ids), dtype=bool)
    per_class = pd.DataFrame(
        {
            "class": classes,
            "dice_before": before.mean(0),
            "dice": after.mean(0),
            "iou": iou.mean(0),
            "empty_share": (truth == 0).mean(0),
            **empty_rows(pred, truth),
        }
    )
    per_image = after.mean(1)
    order = np.argsort(per_image, kind="stable")[:worst]
    worst_table = pd.DataFrame({ID: [oof.ids[i] for i in order], "fold": oof.folds[order], "dice": per_image[order]})
    out = WorkDir(cfg.workdir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "folds.csv", folds.to_csv(index=False))
    atomic_write_text(out / "classes.csv", per_class.to_csv(index=False))
    confusion_png = _plot_confusion(oof.confusion, classes, out / "confusion.png")
    worst_png = _plot_worst(cfg.data, cfg.workdir, cfg.model.in_channels, worst_table, post, out / "worst.png")
    return Report(
        folds,
        per_class,
        score(raw, everything),
        score((inter, pred, truth), everything),
        worst_table,
        confusion_png,
        worst_png,
        post,
        metric,
    )


def _plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    plt = pyplot()
    share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted (argmax)", ylabel="true", title="out-of-fold confusion (share of each true class)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if share[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{100 * share[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path, tight=True)


def _rgb(colour: Any) -> tuple[float, float, float]:
    return float(colour[0]) / 255, float(colour[1]) / 255, float(colour[2]) / 255


def _plot_worst(
    data: DataConfig, workdir: Path, channels: int, worst: pd.DataFrame, post: PostProcess | None, path: Path
) -> Path:
    """The worst out-of-fold images of ``workdir`` (``channels``: ``model.in_channels``): image, truth, prediction."""
    import cv2
    from matplotlib.patches import Patch

    plt = pyplot()
    work = WorkDir(workdir)
    samples = list_samples(data, "train").set_index(ID)
    palette = palette_rgb(data)
    height, width = data.image_size
    rows = max(1, len(worst))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.9 * rows), squeeze=False)
    spec = MaskSpec.from_config(data)
    for r, item in enumerate(worst.itertuples(index=False)):
        image_id, fold, dice = item
        oof_probs, oof_masks, table = read_oof(work, fold)
        i = int(np.flatnonzero(table[ID].to_numpy() == image_id)[0])
        probs, truth = oof_probs[i], oof_masks[i]
        needs = post is not None and post.needs_presence
        scores = read_oof_presence(work, fold, tuple(oof_probs.shape[:2])) if needs else None
        image = load_image(samples.loc[image_id, "image"], channels)[..., :3]
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        image = to_uint8(image)
        pred = apply(np.asarray(probs), post, data.multilabel, None if scores is None else scores[i])
        truth = np.where(truth < spec.n_values, truth, 255).astype(np.uint8)
        for c, (picture, title) in enumerate(
            [
                (image, f"{image_id} (fold {fold})"),
                (colorize(truth, palette, NO_CLASS_COLOUR), "truth"),
                (colorize(pred, palette, NO_CLASS_COLOUR), f"prediction: Dice {dice:.3f}"),
            ]
        ):
            axes[r, c].imshow(picture)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    handles = [
        Patch(color=_rgb(class_colour(palette, k, data.multilabel)), label=name) for k, name in enumerate(data.classes)
    ]
    handles.append(Patch(color=_rgb(NO_CLASS_COLOUR), label="ignored / no class"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("worst out-of-fold images (mean row Dice)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return save_figure(fig, path, tight=True)


__all__ = ["Report", "cv_report"]
