import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.data.split import make_folds
from kseg.metrics.scores import label_counts, row_dice
from kseg.postprocess import ClassParams, PostProcess, TuneError, apply, apply_to_labels, load, tune

K = 6


def plant_oof(root: Path, speckles: bool, seed: int = 0) -> None:
    """Write fold*/oof.* as kseg train would, from the true masks: confident and mostly right, plus
    (optionally) small specks of classes absent from the image at middling confidence."""
    cfg = load_config(root / "kseg.yaml")
    folds = make_folds(cfg).folds
    rng = np.random.default_rng(seed)
    for f in sorted(folds["fold"].unique()):
        ids = folds.loc[folds["fold"] == f, "ImageID"].tolist()
        truths = [np.asarray(Image.open(root / "masks" / f"{i}.png")) for i in ids]
        probs = np.zeros((len(ids), K, 64, 96), np.float32)
        for n, truth in enumerate(truths):
            logits = rng.normal(0, 1, (K, 64, 96)) + 4 * np.eye(K)[truth].transpose(2, 0, 1)
            if speckles:
                for k in set(range(1, K)) - set(np.unique(truth).tolist()):
                    for _ in range(3):
                        y, x = rng.integers(0, 60), rng.integers(0, 92)
                        logits[k, y : y + 2, x : x + 2] += 6  # wins the argmax, but not by much
            e = np.exp(logits - logits.max(0))
            probs[n] = e / e.sum(0)
        d = root / "work" / f"fold{f}"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "oof.npy", np.round(probs * 255).astype(np.uint8))
        np.save(d / "oof_masks.npy", np.stack(truths).astype(np.uint8))
        pd.DataFrame({"ImageID": ids, "height": 64, "width": 96}).to_csv(d / "oof.csv", index=False)
        (d / "config.yaml").write_text("train:\n  epochs: 1\n")  # a finished one-epoch run, as readers check
        pd.DataFrame({"epoch": [1], "val_dice": [0.5], "val_score": [0.5]}).to_csv(d / "metrics.csv", index=False)


def brute_force_score(root: Path, post: PostProcess | None) -> float:
    """Apply the post-processing to every OOF map and score it pixel by pixel: no histograms."""
    scores = []
    for d in sorted((root / "work").glob("fold[0-9]*")):
        probs = np.load(d / "oof.npy")
        masks = np.load(d / "oof_masks.npy")
        for p, truth in zip(probs, masks, strict=True):
            inter, pred, true = label_counts(apply(p, post), truth, K)
            scores.append(row_dice(inter, pred, true))
    return float(np.mean(scores))


@pytest.fixture
def speckled(comp) -> Path:
    plant_oof(comp, speckles=True)
    return comp


def test_tuning_raises_the_score_on_speckled_predictions(speckled):
    result = tune(load_config(speckled / "kseg.yaml"))
    post = result.post
    assert post.oof_score_after > post.oof_score_before + 0.05
    assert result.holdout_after > result.holdout_before  # the gain survives data it was not tuned on
    assert any(p.min_area > 0 or p.threshold > 0 for p in post.params.values())


def test_reported_scores_equal_pixelwise_application(speckled):
    post = tune(load_config(speckled / "kseg.yaml")).post
    assert brute_force_score(speckled, None) == pytest.approx(post.oof_score_before, abs=1e-12)
    assert brute_force_score(speckled, post) == pytest.approx(post.oof_score_after, abs=1e-12)


def test_the_report_applies_minimum_areas_of_argmax_classes_as_submissions_do(speckled):
    """A class kept at argmax (threshold 0) may still have a minimum area: kseg report empties its rows too."""
    from kseg.cv.report import cv_report
    from kseg.workspace.workdir import WorkDir

    cfg = load_config(speckled / "kseg.yaml")
    names = list(cfg.data.classes)
    params = {names[1]: ClassParams(0.0, 0.02), names[2]: ClassParams(0.0, 0.02), names[3]: ClassParams(0.6, 0.002)}
    post = PostProcess(names, params)
    WorkDir(cfg.workdir).write_postprocess(post.to_json())
    expected = brute_force_score(speckled, post)
    assert expected > brute_force_score(speckled, None) + 0.01  # the areas matter here
    assert cv_report(cfg).overall_after == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tuning_never_lowers_the_in_sample_score(comp, seed):
    plant_oof(comp, speckles=seed % 2 == 0, seed=seed)
    post = tune(load_config(comp / "kseg.yaml"), seed=seed).post
    assert post.oof_score_after >= post.oof_score_before


def test_clean_predictions_keep_the_identity(comp):
    plant_oof(comp, speckles=False)
    for d in (comp / "work").glob("fold[0-9]*"):  # perfect probabilities: nothing to gain
        masks = np.load(d / "oof_masks.npy")
        np.save(d / "oof.npy", (np.eye(K)[masks].transpose(0, 3, 1, 2) * 255).astype(np.uint8))
    post = tune(load_config(comp / "kseg.yaml")).post
    assert post.identity and post.oof_score_after == post.oof_score_before == 1.0


def test_json_round_trip(speckled):
    cfg = load_config(speckled / "kseg.yaml")
    post = tune(cfg).post
    again = load(cfg.workdir, list(cfg.data.classes), cfg.multilabel)
    assert again == post
    assert PostProcess.from_json(post.to_json()) == post
    (cfg.workdir / "postprocess.json").write_text("{not json")
    with pytest.raises(TuneError, match="is not a kseg post-processing file"):
        load(cfg.workdir, list(cfg.data.classes), cfg.multilabel)


def test_apply_semantics():
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 0.9
    probs[1, :2, :2] = 0.95  # class 1: 4 pixels, confident
    probs[2, 3, 3] = 0.95  # class 2: 1 pixel, confident
    probs[2, 3, 0] = 0.6  # class 2: 1 pixel, not confident (0.6 < 0.9 of class 0: not argmax)
    post = PostProcess(["a", "b", "c"], {"b": ClassParams(0.0, 0.3), "c": ClassParams(0.9, 0.0)})
    labels = apply(probs, post)
    assert (labels[:2, :2] == 255).all()  # 4 of 16 pixels < 30%: the row is emptied
    assert labels[3, 3] == 2  # above its threshold
    assert (apply(probs, None) == probs.argmax(0)).all()
    assert (apply_to_labels(probs.argmax(0).astype(np.uint8), post)[:2, :2] == 255).all()


def test_no_oof_is_a_clear_error(comp):
    with pytest.raises(TuneError, match="no out-of-fold predictions .*run 'kseg train' first"):
        tune(load_config(comp / "kseg.yaml"))


def test_cli_tune_and_report(runner, speckled):
    result = runner.invoke(app, ["tune", "-c", str(speckled / "kseg.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "in-sample" in result.output and "tuned on one half and scored on the other" in result.output
    result = runner.invoke(app, ["report", "-c", str(speckled / "kseg.yaml")])
    assert result.exit_code == 0, result.output
    report = speckled / "work" / "report"
    for name in ("confusion.png", "worst.png", "folds.csv", "classes.csv"):
        assert (report / name).is_file()
    folds = pd.read_csv(report / "folds.csv")
    assert set(folds["fold"]) == {0, 1, 2}
    assert (folds["score_postprocessed"] >= folds["score"] - 0.05).all()


def test_submit_applies_the_areas_and_infer_records_it(speckled, tmp_path):
    from kseg.submission import score_file, write_submission

    cfg = load_config(speckled / "kseg.yaml", ["submission.require_manifest=false"])  # label maps by hand
    tune(cfg)
    pred = speckled / "work" / "predictions"
    pred.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for path in (speckled / "test_masks").glob("*.png"):  # right, but with specks of absent classes
        labels = np.asarray(Image.open(path)).copy()
        for k in set(range(1, K)) - set(np.unique(labels).tolist()):
            y, x = rng.integers(0, 62), rng.integers(0, 94)
            labels[y : y + 2, x : x + 2] = k
        Image.fromarray(labels).save(pred / path.name)
    plain = write_submission(cfg, out=tmp_path / "plain.csv", postprocess=False)
    assert "off" in plain.note
    tuned = write_submission(cfg, out=tmp_path / "tuned.csv")
    assert "minimum areas" in tuned.note
    assert score_file(tmp_path / "tuned.csv", cfg).score > score_file(tmp_path / "plain.csv", cfg).score
    # predictions that kseg infer already post-processed are left alone
    (pred / "inference.json").write_text(json.dumps({"postprocess": {"classes": []}}))
    again = write_submission(cfg, out=tmp_path / "again.csv")
    assert "post-processing: applied by kseg infer" in again.note.splitlines()
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


@pytest.mark.slow
def test_infer_applies_postprocessing_and_says_so(runner, comp_template, tmp_path):
    from kseg.training.train import train_fold

    root = tmp_path / "comp"
    shutil.copytree(comp_template, root)
    fast = ["train.num_workers=0", "model.encoder_name=resnet18", "train.epochs=1", "train.batch_size=4"]
    cfg = load_config(root / "kseg.yaml", fast)
    make_folds(cfg)
    train_fold(cfg, 0)
    post = PostProcess(list(cfg.data.classes), {c: ClassParams(0.0, 0.5) for c in cfg.data.classes})
    (cfg.workdir / "postprocess.json").write_text(post.to_json())
    args = ["infer", "-c", str(root / "kseg.yaml")] + [x for item in fast for x in ("--set", item)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "post-processing: tuned thresholds and minimum areas applied" in result.output
    info = json.loads((cfg.workdir / "predictions" / "inference.json").read_text())
    assert info["postprocess"]["params"]["car"]["min_area"] == 0.5
    label = np.asarray(Image.open(cfg.workdir / "predictions" / "test_0000.png"))
    assert (np.bincount(label.ravel(), minlength=256)[:6] < 0.5 * label.size).all() or (label == 255).any()
    result = runner.invoke(app, [*args, "--no-postprocess"])
    assert result.exit_code == 0 and "post-processing: off (--no-postprocess)" in result.output
    assert json.loads((cfg.workdir / "predictions" / "inference.json").read_text())["postprocess"] is None
