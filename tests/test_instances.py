"""One submission row per instance (submission.rows: instances) and the F-beta metric over IoU thresholds
(submission.metric: instance_fbeta), checked against hand-computed values and plain loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kseg.config import load_config
from kseg.data.labels import RleSource, read_rle_labels
from kseg.errors import ConfigError
from kseg.metrics.instances import IOU_THRESHOLDS, components, fbeta, iou_matrix, mask_fbeta
from kseg.schema import DataConfig
from kseg.workspace.oof import write_oof_truth
from kseg.workspace.workdir import WorkDir

INSTANCES = [
    "data.classes=[sea,ship]",
    "data.palette=null",
    "submission.sample=null",
    "submission.classes=[ship]",
    "submission.id_format='{id}'",
    "submission.rows=instances",
    "submission.metric=instance_fbeta",
    "submission.require_manifest=false",
]


def _ships(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """A label map (0 sea, 1 ship) with ``count`` separate boxes on a grid of cells."""
    label = np.zeros(shape, dtype=np.uint8)
    cells = [(y, x) for y in range(0, shape[0] - 8, 10) for x in range(0, shape[1] - 8, 10)]
    for j in rng.permutation(len(cells))[:count]:
        y, x = cells[j]
        label[y : y + int(rng.integers(3, 8)), x : x + int(rng.integers(3, 8))] = 1
    return label


def test_fbeta_by_hand():
    truth = np.zeros((30, 30), bool)
    truth[0:10, 0:10] = truth[20:30, 20:30] = True
    pred = np.zeros_like(truth)
    pred[0:8, 0:10] = True  # IoU 0.8 with the first ship; the second is missed
    # thresholds 0.50-0.75 (6 of 10): TP 1, FN 1, FP 0 -> F2 = 5 / (5 + 4) ; 0.80-0.95: nothing matches
    assert mask_fbeta(pred, truth, beta=2) == pytest.approx(0.6 * 5 / 9)
    assert mask_fbeta(pred, truth, beta=1) == pytest.approx(0.6 * 2 / 3)
    assert mask_fbeta(truth, truth) == 1.0
    assert mask_fbeta(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert mask_fbeta(pred, np.zeros_like(truth)) == 0.0 and mask_fbeta(np.zeros_like(truth), truth) == 0.0
    assert len(IOU_THRESHOLDS) == 10 and IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[-1] == 0.95


def test_a_split_prediction_is_one_hit_and_one_false_positive():
    truth_ids = np.array([[1, 1, 1, 1]])
    pred_ids = np.array([[1, 1, 1, 2]])
    iou = iou_matrix(truth_ids, 1, pred_ids, 2)
    np.testing.assert_allclose(iou, [[0.75, 0.25]])
    # up to 0.70 (5 thresholds): TP 1, FP 1 -> 5 / (5 + 1); above: TP 0, FN 1, FP 2 -> 0
    assert fbeta(iou, 2.0) == pytest.approx(0.5 * 5 / 6)


def test_components_are_eight_connected():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]], bool)
    ids, count = components(mask)
    assert count == 2 and ids[0, 0] == ids[1, 1] != ids[3, 0]


def test_a_long_table_without_a_class_column_is_one_row_per_instance(tmp_path):
    table = pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "EncodedPixels": ["1 3", "11 2", ""]}
    )  # two ships in a, none in b
    table.to_csv(tmp_path / "ships.csv", index=False)
    data = DataConfig(
        classes=["sea", "ship"], root=tmp_path, mask_format="rle", rle={"csv": "ships.csv", "form": "long"}
    )
    source = RleSource.from_config(data)
    a = read_rle_labels(f"{tmp_path / 'ships.csv'}::4x4::a.jpg", source)
    assert a.reshape(-1, order="F").tolist()[:13] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert not read_rle_labels(f"{tmp_path / 'ships.csv'}::4x4::b.jpg", source).any()
    with pytest.raises(ValueError, match="needs rle.class_column"):
        DataConfig(classes=["sea", "ship", "boat"], mask_format="rle", rle={"form": "long"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["submission.metric=instance_fbeta"], "set submission.rows: instances"),
        (["submission.id_format='{id}'"], "has no class field"),
    ],
)
def test_inconsistent_instance_settings_are_refused(comp, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(comp / "kseg.yaml", overrides)


def _write_maps(folder, maps: dict[str, np.ndarray]) -> None:
    folder.mkdir()
    for image_id, label in maps.items():
        Image.fromarray(label).save(folder / f"{image_id}.png")


def test_instance_rows_round_trip_and_score_as_by_hand(comp, tmp_path):
    """Truth written in the instance layout, read back and written again is byte-identical; a submission
    scores against it (and against the truth masks) as per-row F2 computed by hand."""
    from kseg.submission.score import score_file
    from kseg.submission.validate import validate_file
    from kseg.submission.write import write_submission

    cfg = load_config(comp / "kseg.yaml", [*INSTANCES, f"data.test_mask_template={comp / 'truth'}/{{id}}.png"])
    rng = np.random.default_rng(0)
    ids = pd.read_csv(comp / "test.csv", dtype=str)["ImageID"].tolist()
    shape = np.asarray(Image.open(comp / "images" / f"{ids[0]}.png")).shape[:2]
    truth = {i: _ships(rng, shape, int(rng.integers(0, 4))) for i in ids}
    pred = {}
    for i, label in truth.items():
        moved = np.roll(label, int(rng.integers(0, 2)), axis=1)  # a ship shifted by a pixel loses some IoU
        pred[i] = np.maximum(moved, _ships(rng, shape, int(rng.integers(0, 2))) * (rng.random() < 0.5))
    _write_maps(comp / "truth", truth)
    _write_maps(comp / "pred", pred)
    solution = write_submission(cfg, out=tmp_path / "solution.csv", predictions=comp / "truth", postprocess=False)
    table = pd.read_csv(solution.path, dtype=str, keep_default_na=False)
    assert len(table) == sum(max(1, components(t == 1)[1]) for t in truth.values())  # a row per ship, or one empty

    parsed = validate_file(solution.path, cfg, keep_runs=True).parsed
    flat = {i: np.zeros(shape[0] * shape[1], np.uint8) for i in ids}  # pixels in column order
    for (_, image_row), runs in parsed.groupby(["row", "sample_row"]):
        for start, length in zip(runs["start"], runs["length"], strict=True):
            flat[ids[image_row]][start - 1 : start - 1 + length] = 1
    _write_maps(comp / "rebuilt", {i: np.ascontiguousarray(f.reshape(shape[1], shape[0]).T) for i, f in flat.items()})
    again = write_submission(cfg, out=tmp_path / "again.csv", predictions=comp / "rebuilt", postprocess=False)
    assert again.path.read_bytes() == solution.path.read_bytes()

    submitted = write_submission(cfg, out=tmp_path / "sub.csv", predictions=comp / "pred", postprocess=False)
    by_hand = np.mean([mask_fbeta(pred[i] == 1, truth[i] == 1, 2.0) for i in ids])
    by_solution = score_file(submitted.path, cfg, truth=solution.path)
    assert by_solution.score == pytest.approx(by_hand, abs=1e-12) and 0.1 < by_hand < 0.95
    assert score_file(submitted.path, cfg).score == pytest.approx(by_hand, abs=1e-12)  # truth masks' components


def test_instances_of_one_image_may_not_overlap(comp, tmp_path):
    from kseg.submission.validate import validate_file

    cfg = load_config(comp / "kseg.yaml", INSTANCES)
    ids = pd.read_csv(comp / "test.csv", dtype=str)["ImageID"].tolist()
    rows = [(i, "") for i in ids[1:]] + [(ids[0], "1 5"), (ids[0], "20 3"), (ids[0], "4 3")]
    pd.DataFrame(rows, columns=["ImageID", "EncodedPixels"]).to_csv(tmp_path / "s.csv", index=False)
    report = validate_file(tmp_path / "s.csv", cfg)
    assert [p.kind for p in report.problems] == ["classes overlap"]
    pd.DataFrame(rows[:-1], columns=["ImageID", "EncodedPixels"]).to_csv(tmp_path / "s.csv", index=False)
    assert validate_file(tmp_path / "s.csv", cfg).ok  # an id repeats once per instance


def test_tuning_under_fbeta_scores_what_applying_the_choice_scores(comp):
    """Fake OOF files: the tuned threshold and minimum area, applied to the probabilities and scored as
    instances by hand, give the tuner's figures."""
    from kseg.postprocess import apply, tune

    cfg = load_config(comp / "kseg.yaml", INSTANCES)
    rng = np.random.default_rng(3)
    truths, probs = [], []
    for n in range(12):
        truth = _ships(rng, (40, 40), n % 4)
        noise = rng.random((40, 40))
        ship = np.where(truth == 1, 0.55 + 0.45 * noise, 0.65 * noise**3)  # stray pixels just above 0.5
        probs.append((np.stack([1 - ship, ship]) * 255).round().astype(np.uint8))
        truths.append(truth)
    work = WorkDir(cfg.workdir)
    work.fold_dir(0).mkdir(parents=True)
    np.save(work.oof(0), np.stack(probs))
    write_oof_truth(
        work, 0, np.stack(truths), pd.DataFrame({"ImageID": [f"im{i}" for i in range(12)], "height": 40, "width": 40})
    )
    result = tune(cfg)
    post = result.post
    assert set(result.class_before) == {"ship"}  # sea has no rows: not scored, not tuned

    def scored(p) -> float:
        return float(np.mean([mask_fbeta(apply(pr, p) == 1, t == 1) for pr, t in zip(probs, truths, strict=True)]))

    assert post.oof_score_before == pytest.approx(scored(None), abs=1e-12)
    assert post.oof_score_after == pytest.approx(scored(post), abs=1e-12)
    assert post.oof_score_after > post.oof_score_before  # the stray pixels are false positives worth removing


def test_blends_refuse_the_instance_metric(comp, tmp_path):
    from kseg.cv.blend import BlendError, blend_runs

    cfg = load_config(comp / "kseg.yaml", INSTANCES)
    with pytest.raises(BlendError, match="instance_fbeta does not use"):
        blend_runs(cfg, [tmp_path / "a", tmp_path / "b"])
