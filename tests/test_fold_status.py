"""A fold is finished or it is not: readers refuse unfinished folds in one line (--partial goes on and is
recorded), and a fold finished with --resume is read again as usual."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FAST

from kseg.cli import app
from kseg.workspace.folds import fold_status
from kseg.workspace.workdir import WorkDir


def _fold(tmp_path, epochs: int, done_scores: list[float], patience=None, average=None, averaged=None) -> WorkDir:
    work = WorkDir(tmp_path)
    work.fold_dir(0).mkdir(parents=True)
    train = {"epochs": epochs, "patience": patience, "average": average}
    work.fold_config(0).write_text(yaml.safe_dump({"train": train}))
    rows = [{"epoch": i + 1, "val_dice": s, "val_score": s} for i, s in enumerate(done_scores)]
    pd.DataFrame(rows, columns=["epoch", "val_dice", "val_score"]).to_csv(work.fold_dir(0) / "metrics.csv", index=False)
    if averaged is not None:
        (work.fold_dir(0) / "average.json").write_text(json.dumps({"after_epoch": averaged}))
    return work


@pytest.mark.parametrize(
    ("epochs", "scores", "patience", "average", "averaged", "finished", "why"),
    [
        (3, [0.1, 0.2, 0.3], None, None, None, True, "all 3 epoch(s)"),
        (5, [0.1, 0.2], None, None, None, False, "it stopped after epoch 2 of 5"),
        (9, [0.1, 0.5, 0.4, 0.3], 2, None, None, True, "early stop after epoch 4 of 9"),
        (9, [0.1, 0.5, 0.4], 2, None, None, False, "it stopped after epoch 3 of 9"),
        (3, [0.1, 0.2, 0.3], None, 2, None, False, "its checkpoint average (train.average 2) is not done"),
        (3, [0.1, 0.2, 0.3], None, 2, 3, True, "all 3 epoch(s)"),
    ],
)
def test_the_status_of_a_fold_comes_from_its_history(
    tmp_path, epochs, scores, patience, average, averaged, finished, why
):
    status = fold_status(_fold(tmp_path, epochs, scores, patience, average, averaged), 0)
    assert (status.finished, status.why) == (finished, why)


def _flat(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.slow
def test_readers_refuse_an_unfinished_fold_unless_partial(runner, comp, tmp_path):
    sets = [*FAST, "split.n_folds=2", "train.epochs=3", "train.time_limit=0.001"]
    config = ["-c", str(comp / "kseg.yaml"), *[x for s in sets for x in ("--set", s)]]
    assert runner.invoke(app, ["split", *config]).exit_code == 0
    assert runner.invoke(app, ["train", "--fold", "0", *config]).exit_code == 0  # stops after epoch 1 of 3
    fix = (
        "is unfinished: it stopped after epoch 1 of 3; finish it with 'kseg train --fold 0 --resume', or pass --partial"
    )
    for command in (["infer"], ["tune"], ["report"], ["export", "--out", str(tmp_path / "m.kseg")]):
        result = runner.invoke(app, [*command, *config])
        assert result.exit_code == 1 and fix in _flat(result), (command, result.output)
        assert "Traceback" not in result.output
    assert not (comp / "work" / "predictions").exists() and not (tmp_path / "m.kseg").exists()

    assert runner.invoke(app, ["infer", "--partial", *config]).exit_code == 0
    info = json.loads((comp / "work" / "predictions" / "inference.json").read_text())
    assert info["folds"] == [0] and info["partial_folds"] == [f"{comp / 'work'} fold 0"]
    refused = runner.invoke(app, ["submit", *config])
    assert refused.exit_code == 1 and "were made with unfinished folds" in _flat(refused)
    assert not (comp / "submissions" / "submission.csv").exists()
    assert runner.invoke(app, ["submit", "--partial", *config]).exit_code == 0
    log = pd.read_csv(comp / "submissions" / "log.csv", dtype=str, keep_default_na=False)
    assert log["folds"].tolist() == [f"0 (partial: {comp / 'work'} fold 0)"]
    assert runner.invoke(app, ["export", "--partial", "--out", str(tmp_path / "m.kseg"), *config]).exit_code == 0
    images = ["--images", str(comp / "images"), "--out", str(tmp_path / "b")]
    bundled = runner.invoke(app, ["infer", "--bundle", str(tmp_path / "m.kseg"), *images])
    assert bundled.exit_code == 1 and "holds unfinished folds" in _flat(bundled)

    finish = [x for s in [*FAST, "split.n_folds=2", "train.epochs=3"] for x in ("--set", s)]
    done = runner.invoke(app, ["train", "--fold", "0", "--resume", "-c", str(comp / "kseg.yaml"), *finish])
    assert done.exit_code == 0, done.output
    assert fold_status(WorkDir(comp / "work"), 0).finished
    assert runner.invoke(app, ["infer", "-c", str(comp / "kseg.yaml"), *finish]).exit_code == 0


def test_a_fold_of_another_model_is_refused_before_anything_is_written(comp):
    """The folds of a work folder are one ensemble: training fold 1 as FPN beside a UNet fold 0 stops in one
    line naming the fold and the key, before fold1/ exists."""
    from kseg.config import load_config, save_resolved
    from kseg.data.split import make_folds
    from kseg.errors import TrainError
    from kseg.training.train import train_fold

    cfg = load_config(comp / "kseg.yaml", ["model.encoder_name=resnet18"])
    make_folds(cfg)
    work = WorkDir(cfg.workdir)
    work.fold_dir(0).mkdir()
    save_resolved(cfg, work.fold_config(0))
    fpn = load_config(comp / "kseg.yaml", ["model.encoder_name=resnet18", "model.arch=FPN"])
    with pytest.raises(TrainError, match=r"fold 0 of .* with model.arch='Unet' but this training has 'FPN'"):
        train_fold(fpn, 1)
    assert not work.fold_dir(1).exists()
    other = load_config(comp / "kseg.yaml", ["model.encoder_name=resnet18", "data.classes=[a,b,c,d,e,f]"])
    with pytest.raises(TrainError, match="was trained on classes"):
        train_fold(other, 1)


def test_folds_trained_at_different_sizes_are_refused_by_tune(comp):
    from kseg.config import load_config
    from kseg.errors import TuneError
    from kseg.postprocess import load_oof

    cfg = load_config(comp / "kseg.yaml")
    work = WorkDir(cfg.workdir)
    for fold, side in ((0, 8), (1, 4)):
        work.fold_dir(fold).mkdir(parents=True)
        np.save(work.fold_dir(fold) / "oof.npy", np.zeros((2, 6, side, side), np.uint8))
        np.save(work.fold_dir(fold) / "oof_masks.npy", np.zeros((2, side, side), np.uint8))
        pd.DataFrame({"ImageID": [f"a{fold}", f"b{fold}"]}).to_csv(work.fold_dir(fold) / "oof.csv", index=False)
    with pytest.raises(TuneError, match=r"fold 1's out-of-fold maps are 4x4 but fold 0's are 8x8"):
        load_oof(cfg.workdir, cfg.n_classes, cfg.multilabel)
