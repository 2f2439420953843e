"""data.multilabel: classes that overlap (bitmask label maps, one sigmoid per class), from the runs table to
the scored submission; each piece checked against a plain per-class loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kseg.bits import LABEL_THRESHOLD, bit_targets, class_planes, hard_labels, pack_planes
from kseg.config import load_config
from kseg.data.labels import RleSource, read_rle_labels, rle_table
from kseg.data.reading import MaskSpec, decode_mask
from kseg.errors import DataError
from kseg.metrics.scores import label_counts
from kseg.plotting import palette_rgb
from kseg.postprocess import OOFBuilder, apply, tune_oof
from kseg.schema import DataConfig
from kseg.training.losses import build_loss

CLASSES = ["Fish", "Flower", "Gravel", "Sugar"]


def _data(**extra) -> DataConfig:
    return DataConfig(classes=CLASSES, multilabel=True, **extra)


def _random_bits(rng: np.random.Generator, shape=(12, 10), k=4) -> np.ndarray:
    return pack_planes(rng.random((k, *shape)) < 0.4)


def test_planes_and_bitmasks_round_trip():
    rng = np.random.default_rng(0)
    planes = rng.random((4, 9, 7)) < 0.5
    labels = pack_planes(planes)
    assert labels.dtype == np.uint8 and labels.max() < 16
    np.testing.assert_array_equal(class_planes(labels, 4, True), planes)
    labels[0, 0] = 255  # the ignore index belongs to no class
    assert not class_planes(labels, 4, True, ignore_index=255)[:, 0, 0].any()
    targets = bit_targets(torch.from_numpy(labels.astype(np.int64))[None], 4, 255)
    assert targets.shape == (1, 4, 9, 7) and (targets[0, :, 0, 0] == 255).all()
    np.testing.assert_array_equal(targets[0, :, 1:, 1:].numpy(), planes[:, 1:, 1:])


def test_overlapping_runs_decode_into_bitmasks_and_back(tmp_path):
    rng = np.random.default_rng(1)
    truth = {f"im{i}.jpg": _random_bits(rng) for i in range(3)}
    data = _data(root=tmp_path, mask_format="rle", rle={"id_column": "Image_Label"})
    source = RleSource.from_config(data)
    table = rle_table(truth, source)
    assert len(table) == 3 * 4  # wide: every class of every image, none is a background
    table.to_csv(tmp_path / "train.csv", index=False)
    for name, expected in truth.items():
        ref = f"{tmp_path / 'train.csv'}::12x10::{name}"
        np.testing.assert_array_equal(read_rle_labels(ref, source), expected)


def test_overlap_without_multilabel_names_the_rows_and_the_switch(tmp_path):
    pd.DataFrame({"Image_Label": ["a.jpg_Fish", "a.jpg_Flower"], "EncodedPixels": ["1 10", "5 10"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    data = DataConfig(classes=["none", *CLASSES], root=tmp_path, mask_format="rle", rle={"id_column": "Image_Label"})
    with pytest.raises(DataError, match=r"lines 2, 3 .* give one pixel two classes.*data.multilabel: true"):
        read_rle_labels(f"{tmp_path / 'train.csv'}::10x10::a.jpg", RleSource.from_config(data))
    multi = RleSource.from_config(_data(root=tmp_path, mask_format="rle", rle={"id_column": "Image_Label"}))
    labels = read_rle_labels(f"{tmp_path / 'train.csv'}::10x10::a.jpg", multi)
    assert labels.reshape(-1, order="F")[4] == 0b11  # pixel 5: Fish and Flower


def test_index_masks_are_read_as_bitmasks():
    spec = MaskSpec.from_config(_data())
    labels, unknown = decode_mask(np.array([[0, 15], [9, 255]], np.uint8), spec)
    assert unknown == {} and labels.tolist() == [[0, 15], [9, 255]]
    _, unknown = decode_mask(np.array([[16, 1]], np.uint8), spec)
    assert unknown == {16: 1}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"classes": list("abcdefgh")}, "at most 7 classes"),
        ({"mask_format": "color", "palette": ["#000000", "#111111", "#222222", "#333333"]}, "colour masks"),
        ({"ignore_index": 9}, "ignore_index 9 is a class bitmask"),
        ({"mask_format": "rle", "rle": {"background": "Fish"}}, "rle.background has no meaning"),
    ],
)
def test_impossible_multilabel_data_is_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{"classes": CLASSES, "multilabel": True, **extra})


@pytest.mark.parametrize(
    ("key", "value"),
    [("train.augment.copy_paste", "0.5"), ("train.label_smoothing", "0.1"), ("infer.merge", "gmean")],
)
def test_multiclass_only_options_are_refused(comp, key, value):
    from kseg.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{key} does not work with data.multilabel"):
        overrides = ["data.multilabel=true", "data.classes=[a,b,c]", "data.palette=null", f"{key}={value}"]
        load_config(comp / "kseg.yaml", overrides)


def test_label_counts_count_each_class_a_pixel_holds():
    rng = np.random.default_rng(2)
    pred, truth = _random_bits(rng), _random_bits(rng)
    truth[0, :3] = 255
    counts = label_counts(pred, truth, 4, 255, multilabel=True)
    for k in range(4):
        scored = truth != 255
        p, t = (pred >> k) & 1 & scored, (truth >> k) & 1 & scored
        assert counts[:, k].tolist() == [int((p & t).sum()), int(p.sum()), int(t.sum())]


def test_multilabel_losses_are_sigmoid_losses_and_skip_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.from_numpy(np.stack([_random_bits(np.random.default_rng(s), (8, 8)) for s in (3, 4)])).long()
    target[0, 0, :4] = 255
    bce = build_loss({"ce": 1.0}, ignore_index=255, multilabel=4)
    planes = bit_targets(target, 4, 255)
    valid = planes != 255
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach()[valid], planes[valid].float())
    assert float(bce(logits.detach(), target)) == pytest.approx(float(expected), rel=1e-6)
    both = build_loss({"ce": 1.0, "dice": 1.0}, ignore_index=255, multilabel=4)
    moved = logits.detach().clone()
    moved[0, :, 0, :4] += 50  # only ignored pixels change
    assert float(both(moved, target)) == pytest.approx(float(both(logits.detach(), target)), rel=1e-6)
    both(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bce_is_the_multilabel_loss_only():
    from kseg.errors import ConfigError

    with pytest.raises(ConfigError, match="'bce' is the multilabel loss"):
        build_loss({"bce": 1.0}, ignore_index=255)


def _oof(seed: int, n: int = 10) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    probs, truths = [], []
    for _ in range(n):
        truth = _random_bits(rng, (16, 16))
        planes = class_planes(truth, 4, True)
        noise = rng.random((4, 16, 16))
        p = np.where(planes, 0.6 + 0.4 * noise, 0.7 * noise)  # cut at 0.6, not at 0.5
        probs.append((p * 255).round().astype(np.uint8))
        truths.append(truth)
    return probs, truths


def _applied_score(probs, truths, post) -> float:
    counts = np.stack([label_counts(apply(p, post, True), t, 4, 255, True) for p, t in zip(probs, truths, strict=True)])
    inter, pred, true = counts[:, 0], counts[:, 1], counts[:, 2]
    dice = np.where(pred + true > 0, 2 * inter / np.maximum(pred + true, 1), 1.0)
    return float(dice.mean())


def test_tuned_thresholds_score_what_applying_them_scores():
    probs, truths = _oof(5)
    builder = OOFBuilder(4, multilabel=True)
    for i, (p, t) in enumerate(zip(probs, truths, strict=True)):
        builder.add(f"im{i}", i % 2, p, t)
    result = tune_oof(builder.build(), CLASSES)
    post = result.post
    assert post.multilabel and result.oof.thresholds[result.oof.identity[0]] == LABEL_THRESHOLD
    untuned = _applied_score(probs, truths, None)
    assert post.oof_score_before == pytest.approx(untuned, abs=1e-9)  # 0.5 per class is the identity
    assert post.oof_score_after == pytest.approx(_applied_score(probs, truths, post), abs=1e-9)
    assert post.oof_score_after >= post.oof_score_before
    assert any(p.threshold != LABEL_THRESHOLD for p in post.params.values())  # the noise calls for higher cuts


def test_hard_labels_threshold_each_class_on_its_own():
    probs = torch.tensor([[[0.9, 0.2]], [[0.6, 0.7]], [[0.1, 0.4]]])
    assert hard_labels(probs, True).tolist() == [[0b011, 0b010]]
    assert hard_labels(probs, False).tolist() == [[0, 1]]


def test_bitmask_colours_mix_the_classes():
    table = palette_rgb(_data())
    assert table.shape == (16, 3) and table[0].tolist() == [0, 0, 0]
    mixed = (table[1].astype(int) + table[2]) / 2
    assert np.abs(table[3] - mixed).max() <= 1


def test_a_multilabel_submission_may_overlap_and_scores_as_its_masks(comp, tmp_path):
    """Bitmask predictions are encoded one class at a time (rows of one image overlap), validated without
    the overlap check, and scored against bitmask truth masks as a solution file of the same truth scores."""
    from kseg.submission.score import score_file
    from kseg.submission.write import write_submission

    overrides = [
        "data.multilabel=true",
        "data.classes=[a,b,c]",
        "data.palette=null",
        "submission.require_manifest=false",
        "submission.sample=null",
        f"data.test_mask_template={comp / 'truth'}/{{id}}.png",
    ]
    cfg = load_config(comp / "kseg.yaml", overrides)
    rng = np.random.default_rng(6)
    ids = pd.read_csv(comp / "test.csv", dtype=str)["ImageID"].tolist()
    (comp / "pred").mkdir()
    (comp / "truth").mkdir()
    for image_id in ids:
        height, width = np.asarray(Image.open(comp / "images" / f"{image_id}.png")).shape[:2]
        truth = _random_bits(rng, (height, width), 3)
        pred = truth.copy()
        pred[: height // 2] = _random_bits(rng, (height // 2, width), 3)
        Image.fromarray(pred).save(comp / "pred" / f"{image_id}.png")
        Image.fromarray(truth).save(comp / "truth" / f"{image_id}.png")
    written = write_submission(cfg, out=tmp_path / "sub.csv", predictions=comp / "pred", postprocess=False)
    assert written.report.ok and written.n_rows == 3 * len(ids)
    by_masks = score_file(written.path, cfg)
    solution = write_submission(cfg, out=tmp_path / "solution.csv", predictions=comp / "truth", postprocess=False)
    by_solution = score_file(written.path, cfg, truth=solution.path)
    _assert_round_trip(cfg, solution.path, tmp_path)
    assert by_masks.score == pytest.approx(by_solution.score, abs=1e-12)
    assert 0.3 < by_masks.score < 0.99  # half of each image is wrong, half right
    from kseg.submission.validate import validate_file

    plain = load_config(comp / "kseg.yaml", [*overrides[1:]])  # the same classes, one per pixel
    assert [p.kind for p in validate_file(written.path, plain).problems] == ["classes overlap"]


def _assert_round_trip(cfg, path, tmp_path) -> None:
    """A multilabel file decoded into bitmask maps and encoded again is byte-identical."""
    from kseg.submission.format import load_format
    from kseg.submission.validate import validate_file
    from kseg.submission.write import write_submission

    fmt = load_format(cfg.data, cfg.submission)
    parsed = validate_file(path, cfg, keep_runs=True).parsed
    flat = [np.zeros(int(h * w), np.uint8) for h, w in fmt.shapes]  # column order
    for row, runs in parsed.groupby("sample_row"):
        image, k = int(fmt.row_image[row]), int(fmt.row_class[row])
        for start, length in zip(runs["start"], runs["length"], strict=True):
            flat[image][start - 1 : start - 1 + length] |= np.uint8(1 << k)
    folder = tmp_path / "decoded"
    folder.mkdir()
    for image_id, f, (h, w) in zip(fmt.image_ids, flat, fmt.shapes, strict=True):
        Image.fromarray(np.ascontiguousarray(f.reshape(int(w), int(h)).T)).save(folder / f"{image_id}.png")
    again = write_submission(cfg, out=tmp_path / "again.csv", predictions=folder, postprocess=False)
    assert again.path.read_bytes() == path.read_bytes()


def test_pseudo_labels_refuse_multilabel_runs(comp):
    from kseg.training.pseudo import PseudoError, prepare_run

    cfg = load_config(comp / "kseg.yaml", ["data.multilabel=true", "data.classes=[a,b,c]", "data.palette=null"])
    with pytest.raises(PseudoError, match="multilabel runs"):
        prepare_run(cfg)


def test_index_masks_read_as_bitmasks_are_refused_by_the_scan(comp):
    """The synthetic competition's index masks (values 0-5, six classes) under data.multilabel: true: the
    classes of bits 8, 16 and 32 would never appear, and kseg split says why instead of splitting."""
    from typer.testing import CliRunner

    from kseg.cli import app
    from kseg.data.scan import check_bitmask_reading

    out = CliRunner().invoke(app, ["split", "-c", str(comp / "kseg.yaml"), "--set", "data.multilabel=true"])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and "give no pixel to building (bit value 8)" in text and "Traceback" not in text
    assert "set data.multilabel: false" in text and not (comp / "work" / "folds.csv").exists()
    # real bitmasks: every class's bit shows somewhere
    check_bitmask_reading(np.array([5, 0, 3, 9]), CLASSES, "m.png")
    check_bitmask_reading(np.array([5, 7, 3, 0]), CLASSES, "m.png")  # one class absent: not the index pattern
    with pytest.raises(DataError, match=r"no pixel to Gravel \(bit value 4\), Sugar \(bit value 8\)"):
        check_bitmask_reading(np.array([5, 7, 0, 0]), CLASSES, "m.png")
