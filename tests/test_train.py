import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, copy_comp, fast_config

from kseg.cli import app
from kseg.errors import ConfigError, ModelError, TrainError
from kseg.training.train import train_fold


@pytest.fixture(scope="module")
def split_comp(split_template, tmp_path_factory) -> Iterator[Path]:
    root = copy_comp(split_template, tmp_path_factory.mktemp("train"), folds=())
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # checkpoints: free the disk after the module


@pytest.fixture(scope="module")
def trained(split_comp):
    """Fold 0 trained for 4 epochs."""
    return train_fold(fast_config(split_comp, "train.epochs=4", resnet18=True), 0)


def _copy(split_comp: Path, tmp_path: Path) -> Path:
    return copy_comp(split_comp, tmp_path, folds=())


@pytest.mark.slow
def test_loss_falls_and_validation_dice_rises(trained):
    m = trained.metrics
    assert len(m) == 4
    assert m["train_loss"].iloc[-1] < m["train_loss"].iloc[0]
    assert m["val_loss"].iloc[-1] < m["val_loss"].iloc[0]
    assert m["val_dice"].max() > m["val_dice"].iloc[0]
    assert trained.best_score == m["val_dice"].max()
    assert trained.precision == "fp32" and trained.device == "cpu"


@pytest.mark.slow
def test_outputs_exist_and_load(trained, split_comp):
    d = trained.dir
    for name in (
        "best.pt",
        "last.pt",
        "metrics.csv",
        "curves.png",
        "config.yaml",
        "oof.npy",
        "oof_masks.npy",
        "oof.csv",
    ):
        assert (d / name).is_file(), name
    assert not (d / "oof.npy.next").exists() and not (d / "commit.json").exists()
    best = torch.load(d / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] == trained.best_epoch
    for key in ("model", "config", "classes", "history", "best_score"):
        assert key in best
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)  # resuming reads last.pt only
    last = torch.load(d / "last.pt", map_location="cpu", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "config", "history"):
        assert key in last
    assert (d / "best.pt").stat().st_size < (d / "last.pt").stat().st_size / 2
    metrics = pd.read_csv(d / "metrics.csv")
    assert list(metrics.columns[:5]) == ["epoch", "lr", "train_loss", "val_loss", "val_dice"]
    assert {"dice_car", "iou_car"} <= set(metrics.columns)
    oof = np.load(d / "oof.npy", mmap_mode="r")
    ids = pd.read_csv(d / "oof.csv")
    folds = pd.read_csv(split_comp / "work" / "folds.csv")
    assert sorted(ids["ImageID"]) == sorted(folds.loc[folds["fold"] == 0, "ImageID"])
    assert oof.shape == (len(ids), 6, 64, 96) and oof.dtype == np.uint8
    assert np.abs(oof.astype(int).sum(1) - 255).max() <= 6  # probabilities, rounded to 1/255
    masks = np.load(d / "oof_masks.npy")
    assert masks.shape == (len(ids), 64, 96) and masks.max() < 6


@pytest.mark.slow
def test_best_checkpoint_reproduces_the_reported_score(trained, split_comp):
    """The best weights, predicted through the same path, give the metrics file's best Dice."""
    from kseg.data.reading import MaskSpec
    from kseg.models.build import build_model
    from kseg.prediction.predictor import Predictor
    from kseg.training.evaluation import evaluate, summarize
    from kseg.training.losses import loss_from_config
    from kseg.training.train import fold_tables

    cfg = fast_config(split_comp, resnet18=True)
    model, _ = build_model(cfg.model, 6)
    model.load_state_dict(torch.load(trained.dir / "best.pt", weights_only=False)["model"])
    model.eval()
    _, val, _ = fold_tables(cfg.data, cfg.workdir, 0)
    _, counts = evaluate(
        Predictor.from_config([model], cfg, torch.device("cpu")),
        val,
        MaskSpec.from_config(cfg.data),
        loss_from_config(cfg),
    )
    assert summarize(counts, cfg.data.classes)[0] == pytest.approx(trained.best_score, abs=1e-12)


def test_resume_equals_an_uninterrupted_run(split_comp, tmp_path):
    straight = _copy(split_comp, tmp_path / "a")
    interrupted = _copy(split_comp, tmp_path / "b")
    full = train_fold(fast_config(straight, "train.epochs=3"), 1)

    def stop_after_two(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(fast_config(interrupted, "train.epochs=3"), 1, on_epoch=stop_after_two)
    assert len(pd.read_csv(interrupted / "work" / "fold1" / "metrics.csv")) == 2
    resumed = train_fold(fast_config(interrupted, "train.epochs=3"), 1, resume=True)
    a = pd.read_csv(straight / "work" / "fold1" / "metrics.csv")
    b = pd.read_csv(interrupted / "work" / "fold1" / "metrics.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert resumed.best_score == full.best_score
    sa = torch.load(straight / "work" / "fold1" / "last.pt", weights_only=False)["model"]
    sb = torch.load(interrupted / "work" / "fold1" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # raising train.epochs trains on from where the run stopped
    more = train_fold(fast_config(interrupted, "train.epochs=4"), 1, resume=True)
    assert more.epochs_done == 4
    grown = pd.read_csv(interrupted / "work" / "fold1" / "metrics.csv")
    pd.testing.assert_frame_equal(grown.iloc[:2], a.iloc[:2], check_exact=True)


@pytest.mark.slow
def test_early_stopping(split_comp, tmp_path):
    root = _copy(split_comp, tmp_path)
    result = train_fold(fast_config(root, "train.epochs=6", "train.patience=1", "train.lr=1e-7"), 0)
    assert result.stopped_early and result.epochs_done < 6


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["train.optimizer=sgd", "train.scheduler=onecycle", "train.accumulate=2", "train.clip_grad=1.0"],
        ["train.scheduler=plateau", "train.loss={focal: 1.0, lovasz: 0.5}", "train.label_smoothing=0.1"],
        [
            "train.class_weights=sqrt_inverse",
            "train.sampling=rare",
            "train.crop=random_crop",
            "data.image_size=[32,32]",
            "train.augment.shift_scale_rotate=0.5",
            "train.augment.coarse_dropout=0.5",
            "infer.mode=tile",
        ],
        ["model.arch=FPN", "train.scheduler=none", "train.amp=bf16"],
    ],
)
def test_configuration_variants_train(split_comp, tmp_path, extra):
    root = _copy(split_comp, tmp_path)
    result = train_fold(fast_config(root, "train.epochs=1", *extra), 2)
    assert np.isfinite(result.metrics[["train_loss", "val_loss", "val_dice"]].to_numpy()).all()


@pytest.mark.slow
def test_multispectral_input(split_comp, tmp_path):
    root = _copy(split_comp, tmp_path)
    for path in (root / "images").glob("*.png"):  # four bands: RGB plus a synthetic near-infrared
        rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(path))
        np.save(path.with_suffix(".npy"), np.concatenate([rgb, rgb[..., 1:2]], axis=2))
    cfg = fast_config(
        root,
        "train.epochs=1",
        "model.in_channels=4",
        "data.image_template=images/{id}.npy",
        "data.mean=[0.5,0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25,0.25]",
    )
    assert np.isfinite(train_fold(cfg, 0).best_score)


@pytest.mark.slow
def test_local_encoder_weights_offline(split_comp, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "resnet18-imagenet.pth"
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), weights)
    root = _copy(split_comp, tmp_path)
    cfg = fast_config(root, "train.epochs=1", "train.lr=1e-9", f"model.encoder_weights={weights}", resnet18=True)
    result = train_fold(cfg, 0)
    assert str(weights) in result.weights_from
    trained = torch.load(result.dir / "last.pt", weights_only=False)["model"]
    # lr 1e-9: one epoch barely moves the weights, which started as the file's
    assert torch.allclose(trained["encoder.layer1.0.conv1.weight"], reference.layer1[0].conv1.weight, atol=1e-6)


def test_imagenet_weights_offline_is_a_clear_error(split_comp, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root = _copy(split_comp, tmp_path)
    with pytest.raises(
        ModelError, match="could not download 'imagenet' weights.*set model.encoder_weights to the local"
    ):
        train_fold(fast_config(root, "model.encoder_weights=imagenet", resnet18=True), 0)


@pytest.mark.slow
def test_weights_that_do_not_fit(split_comp, tmp_path):
    import torchvision

    weights = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), weights)
    with pytest.raises(ModelError, match="do not fit encoder 'resnet18'"):
        train_fold(fast_config(_copy(split_comp, tmp_path), f"model.encoder_weights={weights}", resnet18=True), 0)


def test_missing_folds(comp):
    with pytest.raises(Exception, match="folds.csv does not exist; run 'kseg split' first"):
        train_fold(fast_config(comp), 0)


def test_fold_out_of_range(split_comp):
    with pytest.raises(TrainError, match="fold 7 does not exist: folds.csv has folds 0-2"):
        train_fold(fast_config(split_comp, resnet18=True), 7)  # (the module trains fold 0 with resnet18)


def test_resume_without_checkpoint(split_comp, tmp_path):
    with pytest.raises(TrainError, match="no checkpoint to resume: .*last.pt does not exist"):
        train_fold(fast_config(_copy(split_comp, tmp_path)), 0, resume=True)


@pytest.mark.slow
def test_resume_with_another_model_is_refused(trained, split_comp):
    with pytest.raises(TrainError, match="model.encoder_name='resnet18' but the config says 'resnet34'"):
        train_fold(fast_config(split_comp, "model.encoder_name=resnet34", resnet18=True), 0, resume=True)


def test_unknown_loss_name(split_comp):
    with pytest.raises(ConfigError, match="train.loss names 'dise', which is no loss; choose from ce, bce, dice"):
        train_fold(fast_config(split_comp, "train.loss={dise: 1.0}"), 0)


def test_cli_unknown_architecture_is_one_line(runner, split_comp):
    result = runner.invoke(app, ["train", "-c", str(split_comp / "kseg.yaml"), "--set", "model.arch=Unett"])
    assert result.exit_code == 1
    assert "model.arch 'Unett' is not an smp architecture (did you mean Unet" in result.output
    assert "Traceback" not in result.output


def test_cli_bad_fold_value(runner, split_comp):
    result = runner.invoke(app, ["train", "-c", str(split_comp / "kseg.yaml"), "--fold", "x"])
    assert result.exit_code == 1 and "--fold 'x' is neither a fold number nor 'all'" in result.output


@pytest.mark.slow
def test_cli_trains_all_folds(runner, split_comp, tmp_path):
    root = _copy(split_comp, tmp_path)
    args = ["train", "-c", str(root / "kseg.yaml"), "--fold", "all"]
    for item in [*FAST, "train.epochs=1"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "CV (mean of fold bests)" in result.output
    for f in range(3):
        assert (root / "work" / f"fold{f}" / "best.pt").is_file()


def test_two_process_gloo_training(split_comp, tmp_path):
    """The same command under torchrun: DistributedDataParallel with two gloo processes on the CPU."""
    root = _copy(split_comp, tmp_path)
    sets = []
    for item in [*FAST, "train.epochs=2", "train.batch_size=2"]:
        sets += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--master-port=29533",
            "-m",
            "kseg",
            "train",
            "-c",
            str(root / "kseg.yaml"),
            "--fold",
            "0",
            *sets,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 processes" in run.stdout + run.stderr
    metrics = pd.read_csv(root / "work" / "fold0" / "metrics.csv")
    assert len(metrics) == 2 and np.isfinite(metrics["val_dice"]).all()
    assert (root / "work" / "fold0" / "best.pt").is_file()


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(split_comp, tmp_path):
    """train.ema: the averaged weights are what validation scores and inference loads; resume is exact."""
    from kseg.data.reading import MaskSpec
    from kseg.models.build import build_model
    from kseg.prediction.predictor import Predictor
    from kseg.training.evaluation import evaluate, summarize
    from kseg.training.losses import loss_from_config
    from kseg.training.train import fold_tables

    straight = _copy(split_comp, tmp_path / "a")
    interrupted = _copy(split_comp, tmp_path / "b")
    full = train_fold(fast_config(straight, "train.epochs=3", "train.ema=0.9"), 1)
    last = torch.load(straight / "work" / "fold1" / "last.pt", weights_only=False)
    assert last["ema_decay"] == 0.9 and last["ema_updates"] > 0
    assert any(not torch.equal(last["model"][k], last["raw_model"][k]) for k in last["model"])
    state = torch.load(straight / "work" / "fold1" / "best.pt", weights_only=False)
    assert state["ema_decay"] == 0.9 and "raw_model" not in state  # inference loads the EMA weights only

    cfg = fast_config(straight, "train.ema=0.9")
    model, _ = build_model(cfg.model, 6)
    model.load_state_dict(state["model"])
    model.eval()
    _, val, _ = fold_tables(cfg.data, cfg.workdir, 1)
    _, counts = evaluate(
        Predictor.from_config([model], cfg, torch.device("cpu")),
        val,
        MaskSpec.from_config(cfg.data),
        loss_from_config(cfg),
    )
    assert summarize(counts, cfg.data.classes)[0] == pytest.approx(full.best_score, abs=1e-12)

    def stop_after_two(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(fast_config(interrupted, "train.epochs=3", "train.ema=0.9"), 1, on_epoch=stop_after_two)
    with pytest.raises(TrainError, match="trained with train.ema 0.9 and the config says None"):
        train_fold(fast_config(interrupted, "train.epochs=3"), 1, resume=True)
    train_fold(fast_config(interrupted, "train.epochs=3", "train.ema=0.9"), 1, resume=True)
    a = torch.load(straight / "work" / "fold1" / "last.pt", weights_only=False)
    b = torch.load(interrupted / "work" / "fold1" / "last.pt", weights_only=False)
    for key in ("model", "raw_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(straight / "work" / "fold1" / "metrics.csv"),
        pd.read_csv(interrupted / "work" / "fold1" / "metrics.csv"),
        check_exact=True,
    )
