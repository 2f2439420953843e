"""The presence gate in front of the mask rule (the "triplet" of Kaggle write-ups): applied as written
by hand, tuned on OOF statistics where only a gate can win, reported, and carried from postprocess.json to
the submission, the same from a bundle as from the work folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import copy_comp, fast_config, rule_for_every_class

from kseg.cv.report import empty_rows
from kseg.postprocess import ClassParams, OOFBuilder, PostProcess, apply, tune_oof
from kseg.prediction.ensemble import export_bundle, load_bundle, load_ensemble
from kseg.prediction.infer import competition_test_images, run_inference
from kseg.submission import write_submission


def _by_hand(probs: np.ndarray, params: dict[int, ClassParams]) -> np.ndarray:
    """The gated rule written out with numpy: argmax; a class whose pixels reaching the gate are fewer than
    max(1, gate_area x pixels) leaves the image; the rest keep the class where it reaches the threshold."""
    labels = probs.argmax(0).astype(np.uint8)
    n = probs.shape[1] * probs.shape[2]
    for k, p in params.items():
        mine = labels == k
        if p.gate > 0 and (mine & (probs[k] >= p.gate)).sum() < max(1.0, p.gate_area * n):
            labels[mine] = 255
            continue
        labels[mine & (probs[k] < p.threshold)] = 255
    return labels


def test_the_gate_applied_by_hand_equals_kseg():
    params = {
        1: ClassParams(threshold=0.35, gate=0.6, gate_area=0.002),
        2: ClassParams(threshold=0.3, gate=0.9, gate_area=0.04),  # near the count of such pixels: either way
        3: ClassParams(threshold=0.0, gate=0.97, gate_area=0.01),
    }
    post = PostProcess(["a", "b", "c", "d"], {name: params.get(k, ClassParams()) for k, name in enumerate("abcd")})
    outcomes = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0, 2, (4, 40, 50))
        probs = np.exp(logits) / np.exp(logits).sum(0)
        expected = _by_hand(probs, params)
        assert np.array_equal(apply(probs.astype(np.float32), post), expected)
        outcomes |= {(k, bool((expected == k).any())) for k in (2, 3)}
    assert outcomes == {(2, True), (2, False), (3, True), (3, False)}  # each gate both kept and emptied a class


def test_a_class_below_its_gate_leaves_the_image_and_a_multilabel_plane_too():
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0], probs[1] = 0.3, 0.7
    probs[1, :2, :2] = 0.95  # four strong pixels of class 1
    gated = PostProcess(["a", "b"], {"a": ClassParams(), "b": ClassParams(threshold=0.5, gate=0.9, gate_area=0.1)})
    assert (apply(probs, gated) == 255).all()  # 4 of 64 pixels reach 0.9, fewer than 10%
    gated.params["b"].gate_area = 0.05
    assert (apply(probs, gated) == 1).all()  # 4 >= 3.2: the mask is drawn at 0.5
    multilabel = PostProcess(["a", "b"], {"a": ClassParams(), "b": ClassParams(gate=0.99)}, multilabel=True)
    assert (apply(probs, multilabel, multilabel=True) == 0).all()  # b's bit cleared everywhere; a is below 0.5


def test_a_postprocess_file_from_before_the_gate_reads_as_no_gate():
    old = json.dumps({"classes": ["a", "b"], "params": {"a": {"threshold": 0.0, "min_area": 0.0},
                      "b": {"threshold": 0.5, "min_area": 0.01}}})  # fmt: skip
    post = PostProcess.from_json(old)
    assert post.params["b"] == ClassParams(0.5, 0.01, 0.0, 0.0) and post.gated == []


def _maps_where_only_a_gate_wins(seed: int = 0, n: int = 80) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class 1 is absent from half the images, which show a patch of false alarm at 0.55-0.7; where it is
    present it has a strong core (0.95) and a true fringe at 0.45-0.6, as large as the alarms. A threshold
    high enough to drop the alarms drops the fringe; a gate at the core's level drops the alarms and keeps
    the fringe.
    Returns ``(uint8 probabilities (2, H, W), truth)`` per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = np.zeros((32, 32), np.uint8)
        p1 = np.full((32, 32), 0.1)
        if i % 2:  # a thing of 6x6 to 16x16 pixels: a quarter of it strong, the rest a fringe
            size = int(rng.integers(6, 17))
            y, x = rng.integers(0, 33 - size, 2)
            truth[y : y + size, x : x + size] = 1
            p1[y : y + size, x : x + size] = rng.uniform(0.45, 0.6, (size, size))
            p1[y : y + size // 2, x : x + size // 2] = 0.95
        else:  # a false alarm as large as the things: no minimum area tells them apart
            size = int(rng.integers(6, 17))
            y, x = rng.integers(0, 33 - size, 2)
            p1[y : y + size, x : x + size] = rng.uniform(0.55, 0.7, (size, size))
        out.append((np.round(np.stack([1 - p1, p1]) * 255).astype(np.uint8), truth))
    return out


def _oof(maps: list[tuple[np.ndarray, np.ndarray]]):
    builder = OOFBuilder(2)
    for i, (probs, truth) in enumerate(maps):
        builder.add(f"im{i}", i % 3, probs, truth)
    return builder.build()


def test_tuning_finds_the_gate_where_no_threshold_and_area_can_win():
    oof = _oof(_maps_where_only_a_gate_wins())
    plain = tune_oof(oof, ["background", "thing"], scored=[1], gates=False)
    gated = tune_oof(oof, ["background", "thing"], scored=[1])
    rule = gated.post.params["thing"]
    assert (
        rule.gate >= 0.7 and rule.threshold < 0.55 and gated.post.gated == ["thing"]
    )  # above the alarms, below the fringe
    assert gated.class_after["thing"] > plain.class_after["thing"] + 0.05
    assert gated.class_holdout_gain["thing"] > plain.class_holdout_gain["thing"]
    right, wrong = gated.gate_rows["thing"]
    assert right == 40 and wrong == 0  # every false-alarm image emptied, no true one
    assert plain.post.gated == [] and plain.gate_rows == {}


def test_the_reported_score_of_a_gate_is_the_score_of_applying_it():
    """The histograms' verdict equals the pixels': the in-sample score tune reports for the gated rule is
    what applying it to every OOF map and scoring pixel by pixel gives."""
    maps = _maps_where_only_a_gate_wins(seed=1)
    result = tune_oof(_oof(maps), ["background", "thing"], scored=[1])
    assert result.post.gated == ["thing"]
    scores = []
    for probs, truth in maps:
        pred, true = apply(probs, result.post) == 1, truth == 1
        both = pred.sum() + true.sum()
        scores.append(1.0 if both == 0 else 2 * (pred & true).sum() / both)
    assert result.class_after["thing"] == pytest.approx(np.mean(scores), abs=1e-12)


def test_rows_by_empty_truth_and_empty_prediction():
    pred = np.array([[0, 5], [3, 0], [0, 0], [2, 2], [0, 1]])
    truth = np.array([[0, 4], [0, 1], [7, 0], [1, 0], [0, 9]])
    rows = empty_rows(pred, truth)
    assert rows["both_empty"].tolist() == [2, 1]
    assert rows["false_positive"].tolist() == [1, 1]
    assert rows["false_negative"].tolist() == [1, 1]
    assert rows["both_filled"].tolist() == [1, 2]


def test_images_below_the_gate_get_empty_rows_and_a_bundle_submits_the_same_bytes(trained_template, tmp_path):
    root = copy_comp(trained_template, tmp_path)
    cfg = fast_config(root)
    images = competition_test_images(cfg.data)
    written = {}
    for gate in (0.999, 0.01):
        rule_for_every_class(root, gate=gate)
        run_inference(load_ensemble(cfg), images, tmp_path / f"pred{gate}", "flip")
        out = fast_config(root, f"submission.predictions={tmp_path / f'pred{gate}'}",
                          f"submission.path={tmp_path / f'sub{gate}.csv'}")  # fmt: skip
        written[gate] = pd.read_csv(write_submission(out).path, keep_default_na=False)
    assert (written[0.999]["EncodedPixels"] == "").all()  # no class of any image reaches 0.999
    assert (written[0.01]["EncodedPixels"] != "").any()

    rule_for_every_class(root, gate=0.6)
    bundle = export_bundle(cfg, tmp_path / "m.kseg", [0, 1, 2])
    paths = {}
    for name, ensemble in (("work", load_ensemble(cfg)), ("bundle", load_bundle(bundle))):
        assert ensemble.post is not None and ensemble.post.gated  # the gate travels in the bundle
        run_inference(ensemble, images, tmp_path / name, "flip")
        out = fast_config(root, f"submission.predictions={tmp_path / name}", f"submission.path={tmp_path / name}.csv")
        paths[name] = write_submission(out).path
    assert paths["work"].read_bytes() == paths["bundle"].read_bytes()
