"""The presence head (``model.presence_head``): smp's classification head trained with a BCE term on
"class in the crop", its scores kept with the out-of-fold predictions, searched by ``kseg tune`` as a gate
in front of the mask rule, and applied by infer, submit, bundles and blends."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_comp, fast_config, rule_for_every_class
from PIL import Image
from torch import nn

from kseg.config import ModelConfig
from kseg.cv.blend import RunOOF, blended_statistics
from kseg.errors import InferError, ModelError, SubmissionError, TuneError
from kseg.models.build import build_model, presence_params
from kseg.models.checkpoint import checkpoint_mismatch, load_checkpoint
from kseg.postprocess import ClassParams, OOFBuilder, PostProcess, apply, tune, tune_oof
from kseg.prediction.ensemble import export_bundle, load_bundle, load_ensemble
from kseg.prediction.infer import competition_test_images, run_inference
from kseg.prediction.predictor import PredictOptions, Predictor
from kseg.submission import write_submission
from kseg.training.losses import build_loss, presence_targets
from kseg.workspace.workdir import WorkDir

HEAD = ["model.presence_head=true"]


def _tiny(head: bool = True, classes: int = 3) -> nn.Module:
    cfg = ModelConfig(arch="Unet", encoder_name="tu-test_resnet", encoder_weights=None, presence_head=head)
    return build_model(cfg, classes)[0].eval()


def test_the_head_gives_one_logit_per_class_and_its_loss_is_bce_on_presence_in_the_crop():
    model = _tiny()
    masks, labels = model(torch.randn(2, 3, 64, 64))
    assert masks.shape == (2, 3, 64, 64) and labels.shape == (2, 3)
    assert not isinstance(_tiny(head=False)(torch.randn(1, 3, 32, 32)), tuple)

    target = torch.full((2, 64, 64), 0, dtype=torch.long)
    target[0, :4, :4] = 2
    target[1, :, 32:] = 255  # ignored pixels count for no class
    target[1, 0, 0] = 1
    assert presence_targets(target, 3, False).tolist() == [[1, 0, 1], [1, 1, 0]]
    bits = torch.zeros((1, 3, 8, 8))
    bits[0, 1, 2, 2], bits[0, 2] = 1, 255  # multilabel: 0/1 per class, the ignore index elsewhere
    assert presence_targets(bits, 3, True).tolist() == [[0, 1, 0]]

    plain = build_loss({"ce": 1.0}, ignore_index=255)
    weighted = build_loss({"ce": 1.0}, ignore_index=255, presence_weight=0.5)
    expected = plain(masks, target) + 0.5 * nn.functional.binary_cross_entropy_with_logits(
        labels, presence_targets(target, 3, False)
    )
    torch.testing.assert_close(weighted((masks, labels), target), expected)
    assert set(weighted.parts) == {"ce", "presence"}
    torch.testing.assert_close(weighted(masks, target), plain(masks, target))  # validation: mask logits only
    bits_loss = build_loss({"ce": 1.0}, ignore_index=255, multilabel=3, presence_weight=1.0)
    torch.testing.assert_close(
        bits_loss((masks, labels), target) - build_loss({"ce": 1.0}, ignore_index=255, multilabel=3)(masks, target),
        nn.functional.binary_cross_entropy_with_logits(labels, presence_targets(bit_planes(target), 3, True)),
    )


def bit_planes(target: torch.Tensor) -> torch.Tensor:
    from kseg.bits import bit_targets

    return bit_targets(target, 3, 255)


def test_an_architecture_without_a_head_and_a_double_head_are_refused_in_one_sentence():
    class NoHead(nn.Module):
        def __init__(self, encoder_name: str, classes: int):
            super().__init__()

    with pytest.raises(ModelError, match=r"smp.NoHead builds no classification head.*presence_head: false"):
        presence_params(ModelConfig(presence_head=True), NoHead, 3)
    assert presence_params(ModelConfig(), NoHead, 3) == {}
    double = ModelConfig(presence_head=True, params={"aux_params": {"classes": 3}})
    with pytest.raises(ModelError, match="remove aux_params from model.params"):
        build_model(double.model_copy(update={"encoder_weights": None}), 3)


def test_a_checkpoint_from_before_the_head_reads_as_headless():
    old = {"config": {"model": {"arch": "Unet", "encoder_name": "r", "in_channels": 3}}, "classes": ["a"]}
    assert checkpoint_mismatch(old, ModelConfig(arch="Unet", encoder_name="r"), ["a"], False) is None
    with_head = ModelConfig(arch="Unet", encoder_name="r", presence_head=True)
    assert "model.presence_head=False but the config says True" in checkpoint_mismatch(old, with_head, ["a"], False)


def _by_hand(probs: np.ndarray, presence: np.ndarray, params: dict[int, ClassParams]) -> np.ndarray:
    """The head rule written out with numpy: argmax; a class whose presence score is below its presence
    threshold leaves the image; the rest keep it where it reaches the threshold, if its area is enough."""
    labels = probs.argmax(0).astype(np.uint8)
    n = probs.shape[1] * probs.shape[2]
    for k, p in params.items():
        mine = labels == k
        if presence[k] < p.presence:
            labels[mine] = 255
            continue
        labels[mine & (probs[k] < p.threshold)] = 255
        if (labels == k).sum() < p.min_area * n:
            labels[labels == k] = 255
    return labels


def test_the_head_rule_applied_by_hand_equals_kseg_and_each_gate_keeps_and_empties():
    params = {1: ClassParams(0.35, 0.01, presence=0.5), 2: ClassParams(0.0, 0.0, presence=0.3)}
    post = PostProcess(list("abc"), {name: params.get(k, ClassParams()) for k, name in enumerate("abc")})
    outcomes = set()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0, 2, (3, 30, 40))
        probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
        presence = rng.uniform(0, 1, 3).astype(np.float32)
        expected = _by_hand(probs, presence, params)
        assert np.array_equal(apply(probs, post, presence=presence), expected)
        assert np.array_equal(apply(probs, post, presence=torch.from_numpy(presence)), expected)
        outcomes |= {(k, bool((expected == k).any())) for k in (1, 2)}
    assert outcomes == {(1, True), (1, False), (2, True), (2, False)}
    multilabel = PostProcess(
        list("abc"), {"a": ClassParams(), "b": ClassParams(presence=0.5), "c": ClassParams()}, multilabel=True
    )
    probs = np.full((3, 4, 4), 0.9, np.float32)
    assert (apply(probs, multilabel, True, np.array([1, 0.4, 1])) == 0b101).all()  # b's bit cleared
    assert (apply(probs, multilabel, True, np.array([1, 0.6, 1])) == 0b111).all()
    with pytest.raises(TuneError, match="has none.*presence head"):
        apply(probs, post)


def _oof_where_only_the_head_knows(n: int = 80, heads: bool = True):
    """Class 1's masks look the same in every image (a patch at 0.7), true in half of them; only the
    presence scores (0.8 where true, 0.2 where not) tell them apart."""
    builder = OOFBuilder(2)
    for i in range(n):
        truth = np.zeros((16, 16), np.uint8)
        p1 = np.full((16, 16), 0.1)
        p1[4:10, 4:10] = 0.7
        if i % 2:
            truth[4:10, 4:10] = 1
        probs = np.round(np.stack([1 - p1, p1]) * 255).astype(np.uint8)
        presence = np.array([1.0, 0.8 if i % 2 else 0.2], np.float32) if heads else None
        builder.add(f"im{i}", i % 3, probs, truth, presence)
    return builder.build()


def test_tuning_finds_the_head_gate_where_no_mask_rule_can_win():
    with_head = tune_oof(_oof_where_only_the_head_knows(), ["background", "thing"], scored=[1])
    rule = with_head.post.params["thing"]
    assert 0.2 < rule.presence <= 0.8 and with_head.post.needs_presence
    assert with_head.class_after["thing"] == pytest.approx(1.0)
    assert with_head.class_holdout_gain["thing"] > 0.4
    assert with_head.gate_rows["thing"] == (40, 0)  # every empty image emptied, no true one
    headless = tune_oof(_oof_where_only_the_head_knows(heads=False), ["background", "thing"], scored=[1])
    assert not headless.post.needs_presence and headless.class_after["thing"] == pytest.approx(0.5)
    no_gates = tune_oof(_oof_where_only_the_head_knows(), ["background", "thing"], scored=[1], gates=False)
    assert not no_gates.post.needs_presence


def test_presence_is_merged_over_views_and_models_and_is_the_mask_maximum_without_a_head():
    torch.manual_seed(0)
    head, plain = _tiny(), _tiny(head=False)
    options = PredictOptions(image_size=(32, 32), channels_last=False)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = Predictor([head], options, torch.device("cpu"))._prepare(image)[None]
    with torch.no_grad():
        flips = [head(x)[1].sigmoid(), head(x.flip(-1))[1].sigmoid()]
        masks = plain(x).softmax(1)
    predictor = Predictor([head, plain], options, torch.device("cpu"), tta="hflip", model_weights=[3.0, 1.0])
    assert predictor.has_presence and not Predictor([plain], options, torch.device("cpu")).has_presence
    _, presence = next(predictor.predict_scored([image]))
    flipped = plain(x.flip(-1)).softmax(1).amax((2, 3))
    expected = (3 * (flips[0] + flips[1]) + masks.amax((2, 3)) + flipped) / 8
    torch.testing.assert_close(presence, expected[0], atol=1e-5, rtol=0)


def test_tile_mode_takes_the_highest_presence_of_the_windows():
    torch.manual_seed(1)
    model = _tiny()
    options = PredictOptions(image_size=(32, 32), mode="tile", tile_overlap=0.0, channels_last=False)
    predictor = Predictor([model], options, torch.device("cpu"))
    image = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    _, presence = next(predictor.predict_scored([image]))
    tensor = predictor._prepare(image[:, :32])[None], predictor._prepare(image[:, 32:])[None]
    with torch.no_grad():
        windows = torch.cat([model(t)[1].sigmoid() for t in tensor])
    torch.testing.assert_close(presence, windows.amax(0), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def headed_template(split_template, tmp_path_factory):
    """``split_template`` with folds 0-2 trained one epoch with a presence head (``copy_comp`` it)."""
    from kseg.training.train import train_fold

    root = tmp_path_factory.mktemp("headed") / "comp"
    shutil.copytree(split_template, root)
    for fold in range(3):
        train_fold(fast_config(root, *HEAD, "train.epochs=1", f"train.seed={fold}"), fold)
    return root


def test_a_headed_run_keeps_presence_with_its_oof_and_tune_reads_it(headed_template, tmp_path):
    root = copy_comp(headed_template, tmp_path)
    work = WorkDir(root / "work")
    presence = np.load(work.oof_presence(0))
    assert presence.shape == (len(np.load(work.oof(0))), 6) and ((presence > 0) & (presence < 1)).all()
    saved = load_checkpoint(work.best(0))
    assert any(key.startswith("classification_head.") for key in saved["model"])
    result = tune(fast_config(root, *HEAD))
    assert result.oof is not None and result.oof.presence is not None and result.oof.presence.shape[1] == 6


def test_images_below_the_presence_gate_get_empty_rows_and_a_bundle_submits_the_same_bytes(headed_template, tmp_path):
    root = copy_comp(headed_template, tmp_path)
    cfg = fast_config(root, *HEAD)
    images = competition_test_images(cfg.data)
    written = {}
    for gate in (0.999, 0.01):
        rule_for_every_class(root, presence=gate)
        run_inference(load_ensemble(cfg), images, tmp_path / f"pred{gate}", "flip")
        out = fast_config(root, *HEAD, f"submission.predictions={tmp_path / f'pred{gate}'}",
                          f"submission.path={tmp_path / f'sub{gate}.csv'}")  # fmt: skip
        written[gate] = pd.read_csv(write_submission(out).path, keep_default_na=False)
    assert (written[0.999]["EncodedPixels"] == "").all()  # no presence score reaches 0.999
    assert (written[0.01]["EncodedPixels"] != "").any()

    ensemble = load_ensemble(cfg)
    run_inference(ensemble, images, tmp_path / "probs", "flip", postprocess=False, outputs=_probs())
    median = float(np.median(np.stack([np.load(p) for p in sorted((tmp_path / "probs").glob("*.presence.npy"))])))
    rule_for_every_class(root, presence=median)  # some rows gated, some not
    bundle = export_bundle(cfg, tmp_path / "m.kseg", [0, 1, 2])
    paths = {}
    for name, source in (("work", load_ensemble(cfg)), ("bundle", load_bundle(bundle))):
        assert source.post is not None and source.post.needs_presence  # the head gate travels in the bundle
        run_inference(source, images, tmp_path / name, "flip")
        out = fast_config(
            root, *HEAD, f"submission.predictions={tmp_path / name}", f"submission.path={tmp_path / name}.csv"
        )
        paths[name] = write_submission(out).path
    assert paths["work"].read_bytes() == paths["bundle"].read_bytes()
    submitted = pd.read_csv(paths["work"], keep_default_na=False)
    assert 0 < (submitted["EncodedPixels"] == "").sum() < len(submitted)
    from_probs = fast_config(root, *HEAD, f"submission.predictions={tmp_path / 'probs'}",
                             f"submission.path={tmp_path / 'from_probs.csv'}")  # fmt: skip
    rows = pd.read_csv(write_submission(from_probs).path, keep_default_na=False).set_index("ImageID")
    below = {
        f"{path.name.split('.')[0]}_{k}": bool(score < median)
        for path in (tmp_path / "probs").glob("*.presence.npy")
        for k, score in enumerate(np.load(path))
    }
    assert all(rows.loc[row, "EncodedPixels"] == "" for row, gated in below.items() if gated)  # the saved scores
    assert any(rows.loc[row, "EncodedPixels"] != "" for row, gated in below.items() if not gated)


def _probs():
    from kseg.prediction.infer import OutputOptions

    return OutputOptions(probs=True)


def test_a_head_gate_without_head_scores_is_refused_by_infer_and_submit(trained_template, tmp_path):
    root = copy_comp(trained_template, tmp_path)
    cfg = fast_config(root)
    images = competition_test_images(cfg.data)
    run_inference(load_ensemble(cfg), images, tmp_path / "probs", "none", postprocess=False, outputs=_probs())
    rule_for_every_class(root, presence=0.5)
    with pytest.raises(InferError, match="presence head's score, which these models do not have"):
        run_inference(load_ensemble(cfg), images, tmp_path / "pred", "none")
    out = fast_config(root, f"submission.predictions={tmp_path / 'probs'}", f"submission.path={tmp_path / 's.csv'}")
    with pytest.raises(SubmissionError, match=r"presence.npy is missing"):
        write_submission(out)
    assert not (tmp_path / "s.csv").exists()


def test_a_blend_counts_a_headless_run_with_its_mask_maximum():
    k, size = 2, (4, 4)
    rng = np.random.default_rng(0)

    def run(presence: bool) -> RunOOF:
        probs = rng.integers(0, 256, (3, k, *size), dtype=np.uint8)
        scores = rng.uniform(0, 1, (3, k)).astype(np.float32) if presence else None
        masks = np.zeros((3, *size), np.uint8)
        cfg = SimpleNamespace(n_classes=k)
        return RunOOF(Path("run"), cfg, pd.DataFrame(), {0: probs}, {0: masks}, {0: ["a", "b", "c"]}, {0: scores})  # type: ignore[arg-type]

    headed, headless = run(True), run(False)
    oof = blended_statistics([headed, headless], np.array([0.25, 0.75])).build()
    expected = 0.25 * headed.presence[0] + 0.75 * headless.probs[0].reshape(3, k, -1).max(2) / 255
    np.testing.assert_allclose(oof.presence, expected, atol=1e-6)
    neither = blended_statistics([run(False), run(False)], np.array([0.5, 0.5])).build()
    assert neither.presence is None


def test_an_averaged_headed_fold_keeps_its_presence_and_a_headless_retraining_drops_it(split_template, tmp_path):
    from kseg.training.train import train_fold

    root = copy_comp(split_template, tmp_path)
    work = WorkDir(root / "work")
    train_fold(fast_config(root, *HEAD, "train.epochs=2", "train.average=2", "train.average_rule=last"), 0)
    assert work.average_json(0).is_file()  # kept or not, best.pt's OOF files come with presence scores
    presence = np.load(work.oof_presence(0))
    assert presence.shape == (len(np.load(work.oof(0))), 6)
    train_fold(fast_config(root, "train.epochs=1"), 0)  # the same fold again, without the head
    assert work.oof(0).is_file() and not work.oof_presence(0).exists()
    assert tune(fast_config(root)).oof.presence is None


def test_a_multilabel_run_trains_a_head_and_tunes_its_gates(split_template, tmp_path):
    """One sigmoid per class (the masks' values read as class bitmasks) with a head: trained, its scores
    kept with the OOF predictions, searched, and applied by inference."""
    from kseg.training.train import train_fold

    root = copy_comp(split_template, tmp_path)
    multilabel = [*HEAD, "data.multilabel=true", "data.classes=[a,b,c]", "data.palette=null", "train.epochs=1"]
    cfg = fast_config(root, *multilabel)
    train_fold(cfg, 0)
    work = WorkDir(root / "work")
    assert np.load(work.oof_presence(0)).shape == (len(np.load(work.oof(0))), 3)
    result = tune(cfg)
    assert result.oof is not None and result.oof.presence is not None and result.post.multilabel
    images = competition_test_images(cfg.data)
    set_bits = {}
    for presence in (0.001, 0.999):
        rule_for_every_class(root, *multilabel, presence=presence)
        run_inference(load_ensemble(cfg), images, tmp_path / str(presence), "none")
        labels = [np.asarray(Image.open(p)) for p in sorted((tmp_path / str(presence)).glob("*.png"))]
        set_bits[presence] = sum(int((m > 0).sum()) for m in labels)
    assert set_bits[0.001] > 0 and set_bits[0.999] == 0  # every class gated out: no bit set
