"""kseg blend: weights searched on out-of-fold predictions, used by infer and export."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST as SHARED
from conftest import fast_config
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.cv.blend import BlendError, RunOOF, blend_runs, check_compatible, search_weights, weight_grid
from kseg.data.split import make_folds
from kseg.errors import InferError
from kseg.metrics.scores import row_dice
from kseg.prediction.ensemble import export_bundle, load_bundle, load_ensemble
from kseg.training.train import train_fold

FAST = [*SHARED, "train.epochs=2"]


def _cfg(root: Path, *more: str):
    return fast_config(root, "train.epochs=2", *more)


@pytest.fixture(scope="module")
def two_runs(comp_template, tmp_path_factory) -> Iterator[Path]:
    """A synthetic competition with two runs on the same folds: a UNet in work/, an FPN in work_fpn/."""
    root = tmp_path_factory.mktemp("blend") / "comp"
    shutil.copytree(comp_template, root)
    make_folds(_cfg(root))
    (root / "work_fpn").mkdir()
    shutil.copy(root / "work" / "folds.csv", root / "work_fpn" / "folds.csv")
    for fold in range(3):
        train_fold(_cfg(root), fold)
        train_fold(_cfg(root, f"workdir={root / 'work_fpn'}", "model.arch=FPN", "train.seed=7"), fold)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # checkpoints: free the disk after the module


def _copy(two_runs: Path, tmp_path: Path) -> Path:
    root = tmp_path / "comp"
    shutil.copytree(two_runs, root)
    return root


def _oof_score(work: Path) -> float:
    """Mean row Dice of a run's OOF argmax, counted here with numpy alone."""
    rows = []
    for fold in sorted(p for p in work.glob("fold[0-9]*") if p.is_dir()):
        probs, masks = np.load(fold / "oof.npy"), np.load(fold / "oof_masks.npy")
        for p, m in zip(probs, masks, strict=True):
            pred = p.argmax(0)
            k = p.shape[0]
            scored = m < k
            for c in range(k):
                t, q = (m == c) & scored, (pred == c) & scored
                rows.append(row_dice(np.array([(t & q).sum()]), np.array([q.sum()]), np.array([t.sum()]))[0])
    return float(np.mean(rows))


def _fake_run(path: str, probs: np.ndarray, masks: np.ndarray, cfg) -> RunOOF:
    ids = [f"im{i}" for i in range(len(probs))]
    folds = pd.DataFrame({"ImageID": ids, "fold": [0] * len(ids)})
    return RunOOF(Path(path), cfg, folds, {0: probs}, {0: masks}, {0: ids})


def test_weight_grid_covers_the_simplex_and_every_single_run():
    grid = weight_grid(3)
    assert len(grid) == 66 and np.allclose(grid.sum(1), 1)
    for r in range(3):
        assert any(np.array_equal(row, np.eye(3)[r]) for row in grid)
    assert len(weight_grid(2)) == 11 and len(weight_grid(5)) == 126  # coarser steps beyond four runs


def test_two_runs_right_on_different_images_blend_to_a_better_score(comp):
    """Run A is right (confidently) on images 0-3 and wrong (weakly) on 4-7; run B the reverse: only a blend
    is right everywhere, and the search finds it."""
    cfg = load_config(comp / "kseg.yaml")
    k = cfg.n_classes
    masks = np.zeros((8, 8, 8), dtype=np.uint8)
    masks[:, :4] = 1

    def run(right: range) -> np.ndarray:
        probs = np.zeros((8, k, 8, 8), dtype=np.uint8)
        for i in range(8):
            truth, wrong = masks[i], (masks[i] + 1) % k
            level_true, level_wrong = (230, 25) if i in right else (100, 155)
            for c in range(k):
                probs[i, c][truth == c] = level_true
                probs[i, c][wrong == c] = level_wrong
        return probs

    a, b = _fake_run("a", run(range(4)), masks, cfg), _fake_run("b", run(range(4, 8)), masks, cfg)
    search = search_weights([a, b])
    everything = search.scores(np.arange(8))
    singles = [everything[search.single(r)] for r in range(2)]
    best = everything[search.best]
    assert best == pytest.approx(1.0) and max(singles) < 0.9
    assert 0 < search.grid[search.best][0] < 1


@pytest.mark.slow
def test_blend_scores_runs_as_numpy_does_and_never_below_the_best(runner, two_runs, tmp_path):
    root = _copy(two_runs, tmp_path)
    cfg = _cfg(root)
    result = blend_runs(cfg, [root / "work", root / "work_fpn"])
    expected = [_oof_score(root / "work"), _oof_score(root / "work_fpn")]
    assert result.run_scores == pytest.approx(expected, abs=1e-9)
    assert result.score >= max(result.run_scores)
    assert sum(result.weights) == pytest.approx(1.0)
    info = json.loads((root / "work" / "blend.json").read_text())
    assert info["format"] == "kseg-blend" and info["images"] == 24
    assert [r["weight"] for r in info["runs"]] == result.weights
    assert set(info["blend"]) >= {"oof", "oof_tuned", "holdout_blend", "holdout_best_run"}
    assert info["blend"]["oof_tuned"] >= info["blend"]["oof"] - 1e-9  # tuning includes the identity

    shown = runner.invoke(app, ["blend", str(root / "work"), str(root / "work_fpn"), "-c", str(root / "kseg.yaml")])
    assert shown.exit_code == 0, shown.output
    assert "held-out halves" in shown.output and "blend" in shown.output


@pytest.mark.slow
def test_infer_and_export_use_the_blend(runner, two_runs, tmp_path):
    root = _copy(two_runs, tmp_path)
    work, fpn = root / "work", root / "work_fpn"
    args = ["-c", str(root / "kseg.yaml"), *sum((["--set", s] for s in FAST), [])]
    blend_runs(_cfg(root), [work, fpn])
    info = json.loads((work / "blend.json").read_text())
    info["runs"][0]["weight"], info["runs"][1]["weight"] = 0.3, 0.7  # a mix, whatever the search chose
    info["postprocess"] = None
    (work / "blend.json").write_text(json.dumps(info))

    out = {}
    for name, extra in (
        ("blend", []),
        ("a", ["--no-blend"]),
        ("b", ["--no-blend", "--set", f"workdir={fpn}", "--set", "model.arch=FPN"]),
    ):
        target = tmp_path / name
        result = runner.invoke(app, ["infer", *args, *extra, "--probs", "--out", str(target)])
        assert result.exit_code == 0, result.output
        out[name] = target
    assert "blend of 2 runs" in json.loads((out["blend"] / "inference.json").read_text())["source"]
    for image in sorted(out["blend"].glob("*.probs.npy"))[:3]:
        mixed = np.load(image).astype(float)
        expected = 0.3 * np.load(out["a"] / image.name) + 0.7 * np.load(out["b"] / image.name)
        assert np.abs(mixed - expected).max() <= 1.0  # each file is rounded to 1/255

    bundle = export_bundle(_cfg(root), tmp_path / "blend.kseg")
    ensemble = load_bundle(bundle)
    assert len(ensemble.members) == 2 and [w for _, w in ensemble.members] == [0.3, 0.7]
    images = tmp_path / "test_images"
    images.mkdir()
    for path in sorted((root / "images").glob("test_*.png")):
        shutil.copy(path, images / path.name)
    result = runner.invoke(
        app, ["infer", "--bundle", str(bundle), "--images", str(images), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    some = sorted(out["blend"].glob("test_*.png"))[0]
    assert np.array_equal(np.asarray(Image.open(some)), np.asarray(Image.open(tmp_path / "c" / some.name)))

    with pytest.raises(InferError, match="blends every fold of its runs"):
        load_ensemble(_cfg(root), folds=[0])
    shutil.rmtree(fpn)
    with pytest.raises(InferError, match="no longer exists"):
        load_ensemble(_cfg(root))


@pytest.mark.slow
def test_runs_that_do_not_match_are_refused(runner, two_runs, tmp_path):
    root = _copy(two_runs, tmp_path)
    work, fpn = root / "work", root / "work_fpn"
    base = ["blend", "-c", str(root / "kseg.yaml")]

    single = runner.invoke(app, [*base, str(work)])
    assert single.exit_code == 1 and "at least two runs" in single.output
    nothing = runner.invoke(app, [*base, str(work), str(root / "nowhere")])
    assert nothing.exit_code == 1 and "does not exist" in nothing.output

    folds = pd.read_csv(fpn / "folds.csv")
    folds["fold"] = (folds["fold"] + 1) % 3
    folds.to_csv(fpn / "folds.csv", index=False)
    moved = runner.invoke(app, [*base, str(work), str(fpn)])
    assert moved.exit_code == 1 and "put images in different folds" in moved.output
    assert "Traceback" not in moved.output and not (work / "blend.json").exists()

    a_file = runner.invoke(app, [*base, str(work), str(root / "kseg.yaml")])
    assert a_file.exit_code == 1 and "is a file, not a folder" in a_file.output

    shutil.copy(work / "folds.csv", fpn / "folds.csv")
    table = fpn / "fold1" / "oof.csv"
    table.rename(table.with_suffix(".bak"))
    no_table = runner.invoke(app, [*base, str(work), str(fpn)])
    text = " ".join(no_table.output.split())
    assert no_table.exit_code == 1 and "fold 1 has no oof.csv" in text and "oof.npy" not in text
    table.with_suffix(".bak").rename(table)
    probs = fpn / "fold1" / "oof.npy"
    with probs.open("r+b") as f:
        f.truncate(probs.stat().st_size // 2)
    cut = runner.invoke(app, [*base, str(work), str(fpn)])
    text = " ".join(cut.output.split())
    assert cut.exit_code == 1 and "oof.npy is damaged, perhaps truncated" in text and "kseg train --fold 1" in text
    tune = runner.invoke(app, ["tune", "-c", str(root / "kseg.yaml"), "--set", f"workdir={fpn}"])
    assert tune.exit_code == 1 and "oof.npy is damaged, perhaps truncated" in " ".join(tune.output.split())

    (fpn / "fold0" / "oof.npy").unlink()
    missing = runner.invoke(app, [*base, str(work), str(fpn)])
    assert missing.exit_code == 1 and "fold 0 has no oof.npy" in " ".join(missing.output.split())


def test_other_classes_are_refused(comp):
    cfg = load_config(comp / "kseg.yaml")
    other = load_config(comp / "kseg.yaml", ["data.classes=[a,b]", "data.palette=null"])
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    a = _fake_run("a", np.zeros((2, cfg.n_classes, 4, 4), np.uint8), masks, cfg)
    b = _fake_run("b", np.zeros((2, 2, 4, 4), np.uint8), masks, other)
    with pytest.raises(BlendError, match="has classes"):
        check_compatible([a, b])
    c = _fake_run("c", np.zeros((2, cfg.n_classes, 4, 4), np.uint8), masks, cfg)
    c.folds.loc[0, "ImageID"] = "elsewhere"
    with pytest.raises(BlendError, match="hold different image ids"):
        check_compatible([a, c])


@pytest.mark.slow
def test_a_blend_pins_its_checkpoints(runner, two_runs, tmp_path):
    root = _copy(two_runs, tmp_path)
    work, fpn = root / "work", root / "work_fpn"
    args = ["-c", str(root / "kseg.yaml"), *sum((["--set", s] for s in FAST), [])]
    twice = runner.invoke(app, ["blend", *args, str(work), str(root / "work") + "/"])
    assert twice.exit_code == 1 and f"run {work} is given twice; give each run once" in " ".join(twice.output.split())
    blend_runs(_cfg(root), [work, fpn])
    pins = json.loads((work / "blend.json").read_text())["runs"][1]["checkpoints"]
    assert sorted(pins) == ["0", "1", "2"] and all(len(d) == 64 for d in pins.values())
    assert runner.invoke(app, ["infer", *args, "--out", str(tmp_path / "ok")]).exit_code == 0

    shutil.copy(fpn / "fold0" / "best.pt", fpn / "fold1" / "best.pt")  # fold 1 replaced after the blend
    for command in (["infer", "--out", str(tmp_path / "changed")], ["export", "--out", str(tmp_path / "m.kseg")]):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert f"blends fold 1 of run {fpn}, whose best.pt has changed since" in text and "kseg blend' again" in text
    result = runner.invoke(app, ["submit", *args, "--predictions", str(tmp_path / "ok")])
    assert result.exit_code == 1 and "has changed since" in result.output
    assert not (root / "submissions" / "submission.csv").exists()  # refused before writing: file and log together
    (fpn / "fold1" / "best.pt").unlink()
    result = runner.invoke(app, ["infer", *args, "--out", str(tmp_path / "gone")])
    assert result.exit_code == 1 and "whose best.pt is gone" in result.output
