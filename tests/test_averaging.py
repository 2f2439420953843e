"""Checkpoint averaging (train.average) and the time budget (train.time_limit)."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import FAST, copy_comp, fast_config
from torch import nn

from kseg.cli import app
from kseg.errors import ConfigError
from kseg.models.averaging import (
    AverageResult,
    average_weights,
    best_is_average,
    epochs_to_average,
    recalibrate_batchnorm,
)
from kseg.training.train import train_fold


@pytest.fixture(scope="module")
def split_comp(split_template, tmp_path_factory) -> Iterator[Path]:
    root = copy_comp(split_template, tmp_path_factory.mktemp("avg"), folds=())
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # checkpoints: free the disk after the module


def _copy(split_comp: Path, tmp_path: Path) -> Path:
    return copy_comp(split_comp, tmp_path, folds=())


def test_epochs_to_average():
    history = [{"epoch": e, "val_dice": d} for e, d in [(1, 0.2), (2, 0.5), (3, 0.4), (4, 0.5), (5, 0.1)]]
    assert epochs_to_average(history, 2, "best") == [2, 4]
    assert epochs_to_average(history, 3, "best") == [2, 3, 4]
    assert epochs_to_average(history, 2, "last") == [4, 5]
    assert epochs_to_average(history[:1], 3, "best") == [1]


def test_average_weights_is_the_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    mean = average_weights([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))
    assert mean["n"].item() == 7 and mean["w"].dtype == torch.float32
    with pytest.raises(ValueError):
        average_weights([])


def test_batchnorm_statistics_are_measured_again():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    nn.init.constant_(model[0].weight, 1.0)
    batches = [(torch.full((2, 1, 4, 4), 5.0), None), (torch.full((2, 1, 4, 4), 7.0), None)]
    used = recalibrate_batchnorm(model, iter(batches), torch.device("cpu"))
    assert used == 2
    assert model[1].running_mean.item() == pytest.approx(6.0)  # the mean over both batches, not a momentum blend
    assert model.training
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1)), iter(batches), torch.device("cpu")) == 0


def test_average_larger_than_epochs_is_refused(split_comp):
    with pytest.raises(ConfigError, match="average 5 asks for more epochs than train.epochs 3"):
        fast_config(split_comp, "train.epochs=3", "train.average=5")
    with pytest.raises(ConfigError, match="time_limit"):
        fast_config(split_comp, "train.time_limit=-3")


def _evaluate(cfg, state_dict, fold):
    from kseg.data.reading import MaskSpec
    from kseg.data.split import fold_tables
    from kseg.models.build import build_model
    from kseg.prediction.predictor import Predictor
    from kseg.training.evaluation import evaluate, summarize
    from kseg.training.losses import loss_from_config

    model, _ = build_model(cfg.model.model_copy(update={"encoder_weights": None}), cfg.n_classes)
    model.load_state_dict(state_dict)
    model.eval()
    _, val, _ = fold_tables(cfg.data, cfg.workdir, fold)
    predictor = Predictor.from_config([model], cfg, torch.device("cpu"))
    _, counts = evaluate(predictor, val, MaskSpec.from_config(cfg.data), loss_from_config(cfg))
    return summarize(counts, cfg.data.classes)[0]


def test_average_is_validated_kept_when_best_and_survives_a_time_limit(split_comp, tmp_path):
    """The average of the k best epochs is validated like an epoch and becomes best.pt only when it beats
    every epoch; a run stopped by train.time_limit and resumed ends with the same files."""
    straight = _copy(split_comp, tmp_path / "a")
    stopped = _copy(split_comp, tmp_path / "b")
    extra = ["train.epochs=4", "train.average=2"]
    full = train_fold(fast_config(straight, *extra, resnet18=True), 1)
    fold = straight / "work" / "fold1"
    metrics = pd.read_csv(fold / "metrics.csv")
    best_two = sorted(metrics.sort_values(["val_dice", "epoch"], ascending=[False, True])["epoch"][:2])
    assert sorted(p.name for p in fold.glob("epoch*.pt")) == [f"epoch{e:03d}.pt" for e in best_two]
    info = json.loads((fold / "average.json").read_text())
    assert info["epochs"] == best_two and info["after_epoch"] == 4 and info["bn_batches"] > 0
    assert full.average is not None and full.average.score == info["score"]
    assert info["best_epoch_score"] == metrics["val_dice"].max()

    snapshots = [torch.load(fold / f"epoch{e:03d}.pt", weights_only=False)["model"] for e in best_two]
    best = torch.load(fold / "best.pt", weights_only=False)
    cfg = fast_config(straight, *extra, resnet18=True)
    if info["kept"]:  # the average: its weights, and the score average.json reports for it
        assert best["averaged_epochs"] == best_two and full.best_score == info["score"] > metrics["val_dice"].max()
        for key in ("encoder.conv1.weight", "segmentation_head.0.weight"):
            assert torch.allclose(best["model"][key], (snapshots[0][key] + snapshots[1][key]) / 2, atol=1e-6)
        assert _evaluate(cfg, best["model"], 1) == pytest.approx(info["score"], abs=1e-12)
    else:  # the best epoch stays; the average scored no better
        assert "averaged_epochs" not in best and best["epoch"] == full.best_epoch
        assert info["score"] <= metrics["val_dice"].max() == full.best_score

    # the same run under a time limit that passes during the first epoch: one epoch, resumable
    first = train_fold(fast_config(stopped, *extra, "train.time_limit=0.001", resnet18=True), 1)
    assert first.stopped_by_time and first.epochs_done == 1 and first.average is None
    assert not (stopped / "work" / "fold1" / "average.json").exists()
    resumed = train_fold(fast_config(stopped, *extra, resnet18=True), 1, resume=True)
    assert not resumed.stopped_by_time
    other = stopped / "work" / "fold1"
    pd.testing.assert_frame_equal(metrics, pd.read_csv(other / "metrics.csv"), check_exact=True)
    assert json.loads((other / "average.json").read_text()) == info
    again = torch.load(other / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(best["model"][k], again[k]) for k in again)

    # a resume of a finished run does not average again; a lost average.json is made again, the same
    (other / "average.json").unlink()
    train_fold(fast_config(stopped, *extra, resnet18=True), 1, resume=True)
    assert json.loads((other / "average.json").read_text()) == info


@pytest.mark.slow
def test_cli_time_limit_stops_cleanly_and_resume_finishes_every_fold(runner, split_comp, tmp_path):
    root = _copy(split_comp, tmp_path)
    args = ["train", "-c", str(root / "kseg.yaml"), "--fold", "all"]
    for item in [*FAST, "train.epochs=2"]:
        args += ["--set", item]
    stopped = runner.invoke(app, [*args, "--set", "train.time_limit=0.001"])
    assert stopped.exit_code == 0, stopped.output
    assert "time limit reached" in stopped.output and "kseg train --fold all --resume" in stopped.output
    assert len(pd.read_csv(root / "work" / "fold0" / "metrics.csv")) == 1
    assert not (root / "work" / "fold1").exists()
    finished = runner.invoke(app, [*args, "--resume"])
    assert finished.exit_code == 0, finished.output
    assert "CV (mean of fold bests)" in finished.output
    for f in range(3):
        assert len(pd.read_csv(root / "work" / f"fold{f}" / "metrics.csv")) == 2


def test_best_label_names_what_best_pt_holds_and_old_files_still_read():
    history = [{"epoch": 1, "val_score": 0.2}, {"epoch": 2, "val_score": 0.3}]
    old = {"epochs": [1, 2], "rule": "last", "score": 0.5, "best_epoch_score": 0.3, "kept": True}
    old |= {"bn_batches": 1, "after_epoch": 2, "figures": {}}
    earlier = AverageResult.from_json(old)  # written before 'previous' existed
    assert earlier is not None and earlier.previous is None and earlier.best_label(2) == "average of 1,2"
    # epochs 3 and 4 did not beat the earlier average: best.pt is still that average
    longer = [*history, {"epoch": 3, "val_score": 0.45}, {"epoch": 4, "val_score": 0.4}]
    assert best_is_average(earlier, 0.5, longer)
    lost = AverageResult([3, 4], "last", 0.42, 0.5, False, 1, 4, {}, previous=[1, 2])
    assert lost.best_label(3) == "average of 1,2"
    # an epoch beat the earlier average: best.pt is that epoch
    beaten = [*history, {"epoch": 3, "val_score": 0.6}]
    assert not best_is_average(earlier, 0.6, beaten)
    assert AverageResult([2, 3], "last", 0.5, 0.6, False, 1, 3, {}).best_label(3) == "3"
    assert not best_is_average(AverageResult([1, 2], "last", 0.2, 0.3, False, 1, 2, {}), 0.3, history)


def test_resume_with_more_epochs_builds_the_schedule_a_short_run_had_none_of(split_comp, tmp_path):
    """Two epochs of one step each are too few for a one-cycle schedule (none is made); resumed to four
    epochs, the schedule is built on the restored optimiser (it raised KeyError 'initial_lr' before), and a
    new average that does not beat the earlier one leaves best.pt naming the earlier one."""
    root = _copy(split_comp, tmp_path)
    extra = ["train.batch_size=64", "train.scheduler=onecycle", "train.average=2", "train.average_rule=last"]
    first = train_fold(fast_config(root, "train.epochs=2", *extra), 0)
    assert first.average is not None and first.average.epochs == [1, 2]
    more = train_fold(fast_config(root, "train.epochs=4", *extra), 0, resume=True)
    assert more.epochs_done == 4 and more.average is not None and more.average.epochs == [3, 4]
    best = torch.load(root / "work" / "fold0" / "best.pt", weights_only=True)
    held = best.get("averaged_epochs")
    if more.average.kept:
        assert held == [3, 4]
    elif first.average.kept and more.average.previous:
        assert held == [1, 2] == more.average.previous and more.average.best_label(more.best_epoch) == "average of 1,2"
    else:
        assert held is None and more.average.best_label(more.best_epoch) == str(more.best_epoch)
