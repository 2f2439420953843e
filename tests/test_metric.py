"""The metric as config (submission.metric): each metric by hand, and every stage that scores follows it
(kseg score on a file and on label maps, the best epoch, kseg tune, kseg report, the blend search)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import fast_config
from PIL import Image
from test_submission import allow_hand_made

from kseg.config import load_config
from kseg.cv.report import cv_report
from kseg.data.split import make_folds
from kseg.metrics.scores import class_scores, metric_score
from kseg.postprocess import tune
from kseg.submission import score_label_maps
from kseg.submission.score import score_file
from kseg.submission.write import write_submission
from kseg.training.train import train_fold

METRICS = ["row_dice", "row_iou", "dataset_iou"]


def _by_hand(
    truths: list[np.ndarray], preds: list[np.ndarray], k: int, metric: str, classes: list[int] | None = None
) -> float:
    """The metric from label maps with plain numpy loops (all pixels scored), over ``classes`` (all)."""
    scored = range(k) if classes is None else classes
    if metric == "dataset_iou":
        ious = []
        for c in scored:
            inter = sum(int(((t == c) & (p == c)).sum()) for t, p in zip(truths, preds, strict=True))
            union = sum(int(((t == c) | (p == c)).sum()) for t, p in zip(truths, preds, strict=True))
            ious.append(inter / union if union else 1.0)
        return float(np.mean(ious))
    rows = []
    for t, p in zip(truths, preds, strict=True):
        for c in scored:
            a, b = t == c, p == c
            if not a.any() and not b.any():
                rows.append(1.0)
            elif metric == "row_dice":
                rows.append(2 * (a & b).sum() / (a.sum() + b.sum()))
            else:
                rows.append((a & b).sum() / (a | b).sum())
    return float(np.mean(rows))


def test_each_metric_on_counts():
    # two images, two classes: (intersection, predicted, true) pixels
    counts = np.array([[[8, 0], [10, 0], [8, 2]], [[0, 90], [0, 100], [0, 90]]])
    assert metric_score(counts, "row_dice")[0] == pytest.approx(np.mean([16 / 18, 0.0, 1.0, 180 / 190]))
    assert metric_score(counts, "row_iou")[0] == pytest.approx(np.mean([8 / 10, 0.0, 1.0, 90 / 100]))
    # pooled: class 0 8 / 10, class 1 90 / (100 + 92 - 90); a small image's miss barely counts
    assert metric_score(counts, "dataset_iou")[0] == pytest.approx(np.mean([8 / 10, 90 / 102]))
    assert class_scores(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), "dataset_iou").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown metric 'f1'; choose one of row_dice, row_iou, dataset_iou"):
        metric_score(counts, "f1")


def test_the_epoch_score_has_the_bits_of_the_mean_row_dice_column():
    """best_score (the metric over the scored classes) is max(val_dice) exactly when every class is scored."""
    from kseg.training.evaluation import summarize, validation_score

    rng = np.random.default_rng(0)
    for n, k in [(4, 5), (7, 12), (54, 5)]:
        counts = rng.integers(0, 1000, (n, 3, k))
        classes = [f"c{j}" for j in range(k)]
        assert validation_score(counts, None, list(range(k)), "row_dice") == summarize(counts, classes)[0]


@pytest.mark.parametrize("metric", METRICS)
def test_score_follows_the_metric(comp, metric):
    rng = np.random.default_rng(5)
    allow_hand_made(comp)
    pred_dir = comp / "work" / "predictions"
    pred_dir.mkdir(parents=True)
    truths, preds = [], []
    for path in sorted((comp / "test_masks").glob("*.png")):
        truth = np.asarray(Image.open(path))
        pred = truth.copy()
        noise = rng.random(truth.shape) < 0.3
        pred[noise] = rng.integers(0, 6, noise.sum())
        Image.fromarray(pred).save(pred_dir / path.name)
        truths.append(truth)
        preds.append(pred)
    cfg = load_config(comp / "kseg.yaml", [f"submission.metric={metric}"])
    write_submission(cfg)
    expected = _by_hand(truths, preds, 6, metric)
    assert score_file(comp / "submissions" / "submission.csv", cfg).score == pytest.approx(expected, abs=1e-12)
    assert score_label_maps(cfg, pred_dir, comp / "test_masks").score == pytest.approx(expected, abs=1e-12)


def test_training_tuning_and_report_follow_the_metric(comp):
    cfg = fast_config(comp, "train.epochs=3", "submission.metric=dataset_iou")
    make_folds(cfg)
    result = train_fold(cfg, 0)
    metrics = pd.read_csv(comp / "work" / "fold0" / "metrics.csv")
    assert result.metric == "dataset_iou"
    assert result.best_epoch == int(metrics["epoch"][metrics["val_score"].idxmax()])
    assert result.best_score == metrics["val_score"].max()
    assert (metrics["val_score"] != metrics["val_dice"]).all()  # another figure than the Dice

    # the stored OOF probabilities (uint8) of the best epoch, their argmax scored by hand
    probs = np.load(comp / "work" / "fold0" / "oof.npy")
    masks = np.load(comp / "work" / "fold0" / "oof_masks.npy")
    expected = _by_hand(list(masks), list(probs.argmax(1)), 6, "dataset_iou")
    assert result.best_score == pytest.approx(expected, abs=0.02)  # validation scored unquantised probabilities

    tuned = tune(cfg)
    assert tuned.post.oof_score_before == pytest.approx(expected, abs=1e-9)
    assert tuned.post.oof_score_after >= tuned.post.oof_score_before
    report = cv_report(cfg)
    assert report.overall_before == pytest.approx(expected, abs=1e-9) and report.metric == "dataset_iou"


def test_cv_scores_only_the_submitted_classes(comp):
    """With submission.classes (Severstal: the defects, not the background), the best epoch, tune and the
    report average those classes only, as the leaderboard does."""
    from kseg.synth.aerial import class_names

    names = class_names(6)
    cfg = fast_config(comp, "train.epochs=2", f"submission.classes=[{names[2]},{names[4]}]")
    assert cfg.scored_classes == [2, 4]
    make_folds(cfg)
    result = train_fold(cfg, 0)
    probs = np.load(comp / "work" / "fold0" / "oof.npy")
    masks = np.load(comp / "work" / "fold0" / "oof_masks.npy")
    expected = _by_hand(list(masks), list(probs.argmax(1)), 6, "row_dice", [2, 4])
    assert expected != pytest.approx(_by_hand(list(masks), list(probs.argmax(1)), 6, "row_dice"), abs=1e-3)
    assert result.best_score == pytest.approx(expected, abs=0.02)
    tuned = tune(cfg)
    assert tuned.post.oof_score_before == pytest.approx(expected, abs=1e-9)
    assert {name: p.threshold for name, p in tuned.post.params.items() if name not in (names[2], names[4])} == {
        name: 0.0 for name in names if name not in (names[2], names[4])
    }
    assert cv_report(cfg).overall_before == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", METRICS)
def test_blend_search_scores_each_weight_vector_by_the_metric(comp, metric):
    from test_blend import _fake_run

    from kseg.cv.blend import search_weights

    cfg = load_config(comp / "kseg.yaml")
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 6, (5, 8, 8)).astype(np.uint8)
    runs = [_fake_run(name, rng.integers(0, 256, (5, 6, 8, 8)).astype(np.uint8), masks, cfg) for name in ("a", "b")]
    search = search_weights(runs, metric)
    scores = search.scores(np.arange(5))
    for c in (0, 3, len(search.grid) - 1):
        w = search.grid[c]
        blended = [np.einsum("r,rkhw->khw", w, np.stack([r.probs[0][i] / 255 for r in runs])) for i in range(5)]
        expected = _by_hand(list(masks), [b.argmax(0) for b in blended], 6, metric)
        assert scores[c] == pytest.approx(expected, abs=1e-9)
    assert search.best == int(np.argmax(scores))
