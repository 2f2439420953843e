"""kseg pseudo: fold f's labels from fold f's model only, never in validation, a set share per batch."""

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST as SHARED
from conftest import RESNET18, copy_comp, fast_config
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.data.images import load_image
from kseg.data.split import fold_tables, make_folds, with_pseudo_rows
from kseg.errors import TrainError
from kseg.prediction.ensemble import load_ensemble
from kseg.prediction.infer import run_predictor
from kseg.training.dataset import mixed_order
from kseg.training.train import train_fold

FAST = [*SHARED, *RESNET18, "train.epochs=1"]  # pseudo-labels need models that learned: resnet18


def _cfg(root: Path, *more: str):
    return fast_config(root, "train.epochs=1", *more, resnet18=True)


@pytest.fixture(scope="module")
def trained(split_template, tmp_path_factory) -> Iterator[Path]:
    """Folds 0-2 trained one epoch each with resnet18 (fold f with seed f, so the folds' models differ)."""
    root = copy_comp(split_template, tmp_path_factory.mktemp("pseudo"))
    for fold in range(3):
        train_fold(_cfg(root, f"train.seed={fold}"), fold)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # checkpoints: free the disk after the module


def test_every_batch_holds_the_set_share_of_pseudo_labelled_images():
    generator = torch.Generator().manual_seed(0)
    order = mixed_order(10, 3, batch_size=4, share=0.25, repeat=2, generator=generator)
    n = 13
    batches = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert all(sum(i % n >= 10 for i in b) == 1 for b in batches[:-1])
    real = Counter(i % n for i in order if i % n < 10)
    assert real == {i: 2 for i in range(10)}  # each labelled image `repeat` times, as without pseudo-labels
    assert len(set(order)) == len(order)  # distinct indices: distinct augmentation seeds
    half = mixed_order(10, 3, batch_size=4, share=0.5, repeat=1, generator=generator)
    assert all(sum(i % n >= 10 for i in half[j : j + 4]) == 2 for j in range(0, len(half) - 4, 4))


def test_a_training_image_cannot_be_pseudo_labelled(comp):
    cfg = load_config(comp / "kseg.yaml", FAST)
    make_folds(cfg)
    train, val, _ = fold_tables(cfg.data, cfg.workdir, 0)
    with pytest.raises(TrainError, match="is also a training image"):
        with_pseudo_rows(train, val, val[["ImageID", "image"]].assign(mask="x.png", ImageID="other"))
    rows = with_pseudo_rows(train, val, pd.DataFrame({"ImageID": ["t1"], "image": ["/x/t1.png"], "mask": ["m"]}))
    assert rows["pseudo"].tolist() == [False] * len(train) + [True]


@pytest.mark.slow
def test_each_fold_trains_on_its_own_models_labels_and_validates_on_real_masks(runner, trained, tmp_path):
    root = tmp_path / "comp"
    shutil.copytree(trained, root)
    args = ["pseudo", "-c", str(root / "kseg.yaml"), "--threshold", "0.25", "--share", "0.25"]
    for item in FAST:
        args += ["--set", item]
    result = runner.invoke(app, [*args, "--fold", "1"])
    assert result.exit_code == 0, result.output
    new = root / "work-pseudo"
    labels = new / "pseudo" / "fold1"
    info = json.loads((labels / "pseudo.json").read_text())
    assert info["source"] == str(root / "work" / "fold1" / "best.pt") and len(info["images"]) == 8
    assert (new / "folds.csv").read_bytes() == (root / "work" / "folds.csv").read_bytes()

    # the labels are fold 1's model's confident argmax, and no other fold's
    cfg = _cfg(root)
    image_id = info["images"][0]
    image = load_image(root / "images" / f"{image_id}.png")

    def labels_of(fold: int) -> np.ndarray:
        probs = next(iter(run_predictor(load_ensemble(cfg, [fold], use_blend=False), "none").predict([image])))
        top, label = probs.max(0)
        return np.where(top.numpy() >= 0.25, label.numpy(), 255)

    written = np.asarray(Image.open(labels / f"{image_id}.png"))
    assert np.array_equal(written, labels_of(1))
    assert not np.array_equal(written, labels_of(0))
    assert (written == 255).any() or info["kept"] == 1.0

    # validation stays the real fold: the OOF rows are fold 1's own images with their true masks
    oof = pd.read_csv(new / "fold1" / "oof.csv")
    folds = pd.read_csv(root / "work" / "folds.csv")
    assert sorted(oof["ImageID"]) == sorted(folds.loc[folds["fold"] == 1, "ImageID"])
    assert np.array_equal(np.load(new / "fold1" / "oof_masks.npy"), np.load(root / "work" / "fold1" / "oof_masks.npy"))

    again = runner.invoke(app, [*args, "--fold", "1"])
    assert again.exit_code == 0 and "reused" in again.output


def test_bad_threshold_is_one_line(runner, comp):
    result = runner.invoke(app, ["pseudo", "-c", str(comp / "kseg.yaml"), "--threshold", "1.5"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "'pseudo.threshold' in --threshold 1.5:" in text and "give it another value" in text
    assert "--set" not in text and "Traceback" not in result.output


def test_pseudo_writes_only_into_new_or_earlier_pseudo_runs(runner, trained, tmp_path):
    root = tmp_path / "comp"
    shutil.copytree(trained, root)
    args = ["pseudo", "-c", str(root / "kseg.yaml"), *sum((["--set", s] for s in FAST), [])]
    other = root / "runb"
    (other / "fold0").mkdir(parents=True)
    (other / "fold0" / "best.pt").write_bytes(b"another run's weights")
    for target in (other, root / "images"):
        result = runner.invoke(app, [*args, "--out", str(target), "--fold", "0"])
        assert result.exit_code == 1 and "is not a run kseg pseudo made" in " ".join(result.output.split())
    assert (other / "fold0" / "best.pt").read_bytes() == b"another run's weights"
    assert not (root / "images" / "folds.csv").exists() and not (root / "images" / "pseudo").exists()


@pytest.mark.parametrize("bad", [["--fold", "7"], ["--images", "EMPTY"]])
def test_pseudo_that_fails_on_its_arguments_leaves_no_folder(runner, comp, tmp_path, bad):
    assert runner.invoke(app, ["split", "-c", str(comp / "kseg.yaml")]).exit_code == 0
    (tmp_path / "EMPTY").mkdir()
    bad = [str(tmp_path / "EMPTY") if b == "EMPTY" else b for b in bad]
    result = runner.invoke(app, ["pseudo", "-c", str(comp / "kseg.yaml"), "--out", str(tmp_path / "new"), *bad])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not (tmp_path / "new").exists()


def test_a_single_fold_resumes_by_the_same_rule_in_train_and_pseudo(runner, trained, tmp_path):
    """``--resume`` on one fold without its last.pt stops with the fix in both commands (pseudo started
    over silently before); among several folds, one never started starts."""
    from kseg.training.train import resumes

    root = tmp_path / "comp"
    shutil.copytree(trained, root)
    args = ["pseudo", "-c", str(root / "kseg.yaml"), *sum((["--set", s] for s in FAST), [])]
    result = runner.invoke(app, [*args, "--out", str(root / "new"), "--fold", "0", "--resume"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "no checkpoint to resume" in text and "without --resume" in text
    assert "Traceback" not in result.output
    assert resumes(root / "new", 0, True, several=False)
    assert not resumes(root / "new", 0, True, several=True) and not resumes(root / "new", 0, False, several=False)
    assert resumes(root / "work", 0, True, several=True)  # fold 0 of the source run has its last.pt
