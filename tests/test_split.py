import numpy as np
import pandas as pd
import pytest
from conftest import scan

from kseg.cli import app
from kseg.config import load_config
from kseg.data.split import (
    assign_folds,
    imbalance,
    make_folds,
    plain_folds,
    stratification_labels,
)
from kseg.errors import SplitError
from kseg.synth.aerial import synth_scene
from kseg.workspace.workdir import WorkDir


@pytest.fixture(scope="module")
def rare_counts() -> np.ndarray:
    """Class pixel counts of 240 synthetic scenes with 12 classes, several of them rare."""
    labels = (synth_scene(np.random.default_rng([7, 0, i]), 32, 48, 12)[1] for i in range(240))
    return np.stack([np.bincount(lab.ravel(), minlength=12) for lab in labels])


def test_every_id_in_exactly_one_fold(comp):
    cfg = load_config(comp / "kseg.yaml")
    result = make_folds(cfg)
    folds = pd.read_csv(cfg.workdir / "folds.csv")
    assert list(folds.columns) == ["ImageID", "fold"]
    ids = pd.read_csv(comp / "train.csv")["ImageID"]
    assert sorted(folds["ImageID"]) == sorted(ids)
    assert folds["ImageID"].is_unique
    assert set(folds["fold"]) == {0, 1, 2}
    assert result.folds.equals(WorkDir(cfg.workdir).read_folds())
    assert (cfg.workdir / "config.yaml").is_file()  # resolved config kept with the outputs


def test_split_is_deterministic_per_seed(comp):
    cfg = load_config(comp / "kseg.yaml")
    first = make_folds(cfg).folds
    assert make_folds(cfg).folds.equals(first)
    other = make_folds(load_config(comp / "kseg.yaml", ["split.seed=123"])).folds
    assert not other["fold"].equals(first["fold"])


def test_group_split_never_crosses_folds(comp):
    train = pd.read_csv(comp / "train.csv")
    train["scene"] = [f"s{i // 3}" for i in range(len(train))]  # 8 scenes of 3 frames
    train.to_csv(comp / "train.csv", index=False)
    cfg = load_config(comp / "kseg.yaml", ["split.group_by=scene", "split.n_folds=4"])
    result = make_folds(cfg)
    merged = train.merge(result.folds, on="ImageID")
    assert (merged.groupby("scene")["fold"].nunique() == 1).all()
    assert set(merged["fold"]) == {0, 1, 2, 3}
    assert result.n_groups == 8


def test_group_fold_assignment_property(rare_counts):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, len(rare_counts))
    folds = assign_folds(rare_counts, 5, seed=1, groups=groups)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == set(range(5))


def test_too_few_groups(comp):
    train = pd.read_csv(comp / "train.csv")
    train["scene"] = ["a", "b"] * 12
    train.to_csv(comp / "train.csv", index=False)
    with pytest.raises(
        SplitError, match="gives 2 groups, fewer than split.n_folds=3; lower split.n_folds to at most 2"
    ):
        make_folds(load_config(comp / "kseg.yaml", ["split.group_by=scene"]))


def test_unknown_group_column(comp):
    with pytest.raises(SplitError, match="split.group_by 'tile' is not a column"):
        make_folds(load_config(comp / "kseg.yaml", ["split.group_by=tile"]))


def test_more_folds_than_images(comp):
    with pytest.raises(SplitError, match="24 training images cannot fill split.n_folds=30"):
        make_folds(load_config(comp / "kseg.yaml", ["split.n_folds=30"]))


def test_stratified_imbalance_well_below_plain_kfold(rare_counts):
    for seed in range(3):
        strat = imbalance(rare_counts, assign_folds(rare_counts, 5, seed), 5)
        plain = np.mean(
            [imbalance(rare_counts, plain_folds(len(rare_counts), 5, 100 * seed + s), 5) for s in range(10)]
        )
        assert strat < 0.75 * plain, (seed, strat, plain)


def test_rare_classes_reach_every_fold(rare_counts):
    folds = assign_folds(rare_counts, 5, seed=0)
    present = rare_counts > 0
    for k in np.flatnonzero(present.sum(0) >= 5):
        assert len(set(folds[present[:, k]])) == 5, k


def test_stratification_labels_bins_areas_of_present_classes():
    counts = np.array([[100, 0], [90, 10], [50, 50], [10, 90], [100, 0], [70, 30]])
    labels = stratification_labels(counts, area_bins=3)
    # presence of class 0 is constant (dropped); presence of class 1; 3 area bins of each class
    assert labels.shape == (6, 7)
    assert labels[:, 0].tolist() == [0, 1, 1, 1, 0, 1]
    assert labels[:, 1:4].sum(1).tolist() == [1] * 6  # class 0: every image in one bin
    assert labels[:, 4:].sum(1).tolist() == [0, 1, 1, 1, 0, 1]  # class 1: only where present
    assert labels[3, 4:].tolist() == [0, 0, 1]  # the largest share of class 1 is in the top bin


def test_scan_is_cached_and_rescans_changed_files(comp):
    cfg = load_config(comp / "kseg.yaml")
    first = scan(cfg)
    assert first.n_scanned == 24
    second = scan(cfg)
    assert second.n_scanned == 0
    pd.testing.assert_frame_equal(first.table, second.table)
    mask = comp / "masks" / "img_0002.png"
    mask.write_bytes(mask.read_bytes())
    import os

    os.utime(mask, ns=(1, 1))
    third = scan(cfg)
    assert third.n_scanned == 1
    pd.testing.assert_frame_equal(first.table, third.table)
    # a different mask decoding invalidates everything
    assert scan(load_config(comp / "kseg.yaml", ["data.unknown_labels=ignore"])).n_scanned == 24


def test_scan_in_parallel_matches_serial(comp_template, tmp_path):
    from kseg.synth.aerial import make_competition

    make_competition(tmp_path, n_train=80, n_test=1, height=32, width=32, n_classes=4, seed=1)
    serial = scan(load_config(tmp_path / "kseg.yaml", ["split.workers=1", f"workdir={tmp_path / 'w1'}"]))
    parallel = scan(load_config(tmp_path / "kseg.yaml", ["split.workers=2", f"workdir={tmp_path / 'w2'}"]))
    pd.testing.assert_frame_equal(serial.table, parallel.table)
    assert serial.class_pixels.sum() == 80 * 32 * 32


def test_damaged_cache_is_rebuilt(comp):
    cfg = load_config(comp / "kseg.yaml")
    scan(cfg)
    (cfg.workdir / "class_pixels.csv").write_text("garbage\n\x00\x01")
    assert scan(cfg).n_scanned == 24


def test_cli_split_prints_table_and_imbalance(runner, comp, monkeypatch):
    monkeypatch.chdir(comp)
    result = runner.invoke(app, ["split", "--set", "split.n_folds=4"])
    assert result.exit_code == 0, result.output
    assert "4 folds of 24 images" in result.output
    assert "imbalance" in result.output and "plain KFold" in result.output
    assert "vegetation" in result.output
    assert pd.read_csv(comp / "work" / "folds.csv")["fold"].nunique() == 4


def test_cli_split_bad_mask_one_line_and_nothing_written(runner, comp):
    (comp / "masks" / "img_0001.png").write_bytes(b"\x89PNG broken")
    result = runner.invoke(app, ["split", "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 1
    assert "error: mask" in result.output and "img_0001.png cannot be read" in result.output
    assert "Traceback" not in result.output
    assert not (comp / "work" / "folds.csv").exists()


def test_real_dubai_split_by_tile(dubai, tmp_path):
    from pathlib import Path

    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "dubai-aerial.yaml", [f"data.root={dubai}", f"workdir={tmp_path}"]
    )
    result = make_folds(cfg)
    tiles = result.folds["ImageID"].str.extract(r"^(Tile_\d+)_")[0]
    assert (result.folds.groupby(tiles)["fold"].nunique() == 1).all()
    assert result.n_groups == 6  # Tile 7 is held out by data.exclude
    assert len(result.folds) == 54


def test_a_new_split_under_trained_folds_is_refused_unless_it_keeps_every_fold(comp):
    """Trained folds come from folds.csv: a split that moves images would validate their models on images
    they trained on, so it is refused; the same split again, or a split after the folds are gone, is not."""
    cfg = load_config(comp / "kseg.yaml")
    first = make_folds(cfg).folds
    work = WorkDir(cfg.workdir)
    work.fold_dir(0).mkdir()
    (work.fold_dir(0) / "config.yaml").write_text("trained: yes\n")
    assert make_folds(cfg).folds.equals(first)  # the same settings: the same folds, kept
    before = work.folds_csv.read_bytes()
    with pytest.raises(SplitError, match=r"has trained folds \(0\) and this split changes the fold of \d+ image"):
        make_folds(load_config(comp / "kseg.yaml", ["split.seed=7"]))
    assert work.folds_csv.read_bytes() == before
    (work.fold_dir(0) / "config.yaml").unlink()
    assert not make_folds(load_config(comp / "kseg.yaml", ["split.seed=7"])).folds.equals(first)
