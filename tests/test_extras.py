"""Training extras: CutMix, class-aware copy-paste, pixel metrics, TensorBoard and W&B hooks."""

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kseg.config import load_config
from kseg.data.split import make_folds
from kseg.errors import DataError, TrainError
from kseg.metrics.scores import pixel_metrics
from kseg.training.dataset import copy_paste, cutmix, paste_classes
from kseg.training.train import train_fold

FAST = ["train.num_workers=0", "train.batch_size=4", "model.encoder_name=resnet18", "train.epochs=1"]


def _batch(b: int = 4, h: int = 16, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel of sample i holds value i in the image and label i in the mask."""
    ids = torch.arange(b)
    images = ids.view(b, 1, 1, 1).expand(b, 3, h, w).float().clone()
    masks = ids.view(b, 1, 1).expand(b, h, w).clone()
    return images, masks


def test_cutmix_pastes_one_box_of_another_sample_with_its_labels():
    torch.manual_seed(0)
    images, masks = _batch()
    out_i, out_m = cutmix(images, masks, 1.0)
    assert torch.equal(out_i[:, 0].long(), out_m)  # every pixel's label came with its image value
    assert torch.equal(images, _batch()[0])  # inputs untouched
    for i in range(4):
        foreign = out_m[i] != i
        assert foreign.any() and len(out_m[i][foreign].unique()) == 1  # one partner, not itself
        ys, xs = torch.nonzero(foreign, as_tuple=True)
        box = foreign[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all()  # a rectangle
    same_i, same_m = cutmix(images, masks, 0.0)
    assert torch.equal(same_i, images) and torch.equal(same_m, masks)


def test_copy_paste_moves_a_chosen_class_with_its_pixels():
    images = torch.zeros(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[1, 2:5, 3:7] = 3
    images[1, :, 2:5, 3:7] = 1.0
    masks[1, 6, 6] = 2  # present in sample 1 but not chosen for pasting
    out_i, out_m = copy_paste(images, masks, 1.0, [3])
    assert torch.equal(out_m[0] == 3, masks[1] == 3) and (out_i[0, :, masks[1] == 3] == 1).all()
    assert (out_m[0] != 2).all()
    assert torch.equal(out_m[1], masks[1])  # sample 0 has no class 3 to give
    same_i, same_m = copy_paste(images, masks, 1.0, [4])  # absent everywhere: nothing changes
    assert torch.equal(same_m, masks) and torch.equal(same_i, images)


def test_paste_classes_default_and_by_name(comp):
    cfg = load_config(comp / "kseg.yaml")
    pixels = np.array([1000, 500, 40, 30, 200, 1])
    classes = cfg.data.classes
    assert paste_classes(None, classes, pixels) == [2, 3, 5]  # below the median share
    assert paste_classes(None, classes, None) == [1, 2, 3, 4, 5]
    named = load_config(comp / "kseg.yaml", ["train.augment.copy_paste_classes=[car, water]"])
    assert paste_classes(named.train.augment.copy_paste_classes, classes, pixels) == [5, 4]
    bad = load_config(comp / "kseg.yaml", ["train.augment.copy_paste_classes=[boat]"])
    with pytest.raises(DataError, match="names 'boat', which is not in data.classes"):
        paste_classes(bad.train.augment.copy_paste_classes, classes, pixels)


def test_pixel_metrics_by_hand():
    # one image, 3 classes: class 0 predicted 10 px (8 right) of 9 true; class 1 predicted 2 (1 right) of 3;
    # class 2 never predicted and never true
    counts = np.array([[[8, 1, 0], [10, 2, 0], [9, 3, 0]]])
    accuracy, precision, recall = pixel_metrics(counts)
    assert accuracy == pytest.approx(9 / 12)
    np.testing.assert_allclose(precision, [0.8, 0.5, 1.0])
    np.testing.assert_allclose(recall, [8 / 9, 1 / 3, 1.0])


@pytest.fixture
def split_copy(comp_template, tmp_path) -> Path:
    root = tmp_path / "comp"
    shutil.copytree(comp_template, root)
    make_folds(load_config(root / "kseg.yaml", FAST))
    return root


@pytest.mark.slow
def test_training_with_mixing_metrics_and_tensorboard(split_copy):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(
        split_copy / "kseg.yaml",
        [
            *FAST,
            "train.epochs=2",
            "train.augment.cutmix=0.5",
            "train.augment.copy_paste=0.5",
            "train.log=[tensorboard]",
        ],
    )
    notes = []
    result = train_fold(cfg, 0, on_note=notes.append)
    assert any(n.startswith("copy-paste classes:") for n in notes)
    metrics = pd.read_csv(result.dir / "metrics.csv")
    for column in ("val_pixel_accuracy", "precision_road", "recall_car", "dice_water", "iou_building"):
        assert column in metrics and metrics[column].between(0, 1).all(), column
    events = EventAccumulator(str(result.dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/train", "loss/val", "val/dice", "val/pixel_accuracy", "precision/road", "recall/car"} <= set(tags)
    assert [e.step for e in events.Scalars("val/dice")] == [1, 2]
    assert events.Scalars("val/dice")[-1].value == pytest.approx(metrics["val_dice"].iloc[-1], rel=1e-6)


@pytest.mark.slow
def test_wandb_hook_sends_every_epoch(split_copy, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = load_config(
        split_copy / "kseg.yaml", [*FAST, "train.epochs=2", "train.log=[wandb]", "train.wandb_mode=offline"]
    )
    train_fold(cfg, 1)
    assert len(calls["init"]) == 1 and calls["init"][0]["mode"] == "offline" and calls["finish"] == 1
    assert calls["init"][0]["config"]["train"]["epochs"] == 2
    assert [step for step, _ in calls["log"]] == [1, 2] and "val/dice" in calls["log"][0][1]


def test_missing_tracker_packages_are_one_clear_error(split_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = load_config(split_copy / "kseg.yaml", [*FAST, "train.log=[tensorboard]"])
    with pytest.raises(TrainError, match=r"tensorboard package is not installed; run pip install"):
        train_fold(cfg, 0)
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config(split_copy / "kseg.yaml", [*FAST, "train.log=[wandb]"])
    with pytest.raises(TrainError, match=r"wandb package is not installed"):
        train_fold(cfg, 0)
