"""Bad input, tried as a hostile user would: one sentence naming the value and the fix, a non-zero exit,
no traceback, no half-written output, and no silent change of the user's data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.data.reading import read_image
from kseg.data.split import make_folds
from kseg.errors import DataError, TrainError
from kseg.training.train import train_fold

FAST = ["model.encoder_name=resnet18", "data.image_size=[64,64]", "train.batch_size=4", "train.epochs=1"]


def _one_error_line(result) -> str:
    text = " ".join(result.output.split())
    assert result.exit_code != 0, result.output
    assert text.count("error:") == 1 and "Traceback" not in result.output, result.output
    return text[text.index("error:") :]  # progress notes may come before the one error line


def test_16_bit_images_are_scaled_by_the_stated_rule_not_saturated(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 5140]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 128], [255, 4, 20]])  # value / 257, rounded
    assert (image[..., 0] == image[..., 2]).all()  # grey to RGB


def test_float_images_are_refused_in_one_line(tmp_path):
    Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f.tif has floating-point pixels.*save the array as .npy"):
        read_image(tmp_path / "f.tif")


def test_config_given_as_a_folder(runner, tmp_path):
    text = _one_error_line(runner.invoke(app, ["split", "-c", str(tmp_path)]))
    assert "is a folder; give the config file itself" in text and "kseg.yaml" in text


def test_submit_out_naming_a_folder_names_that_folder(runner, comp):
    from test_submission import hand_made_predictions

    hand_made_predictions(comp)
    (comp / "elsewhere").mkdir()
    text = _one_error_line(
        runner.invoke(app, ["submit", "-c", str(comp / "kseg.yaml"), "--out", str(comp / "elsewhere")])
    )
    assert "is a folder, not a file" in text and str(comp / "elsewhere") in text and ".tmp" not in text
    assert list((comp / "elsewhere").iterdir()) == []


def test_bands_are_one_based_in_the_hint(runner, tmp_path):
    text = _one_error_line(
        runner.invoke(app, ["tile", str(tmp_path / "a.tif"), "--out", str(tmp_path), "--bands", "x,y"])
    )
    assert "e.g. 4,3,2" in text and "0,1,2" not in text


def test_an_empty_test_set_is_an_error_like_an_empty_folder(runner, comp, tmp_path):
    pd.DataFrame({"ImageID": []}).to_csv(comp / "test.csv", index=False)
    make_folds(load_config(comp / "kseg.yaml"))
    train_fold(load_config(comp / "kseg.yaml", [*FAST, "runtime.num_workers=0"]), 0)
    text = _one_error_line(runner.invoke(app, ["infer", "-c", str(comp / "kseg.yaml")]))
    assert "lists no images" in text and "--images DIR" in text
    assert not (comp / "work" / "predictions").exists()


@pytest.mark.parametrize("command, extra", [("tile", "kseg[geo]"), ("submit", "kseg[kaggle]")])
def test_help_text_keeps_the_extras_names(runner, command, extra):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and extra in result.output


@pytest.mark.slow
def test_an_unreadable_image_in_a_loader_worker_is_one_line(runner, comp):
    make_folds(load_config(comp / "kseg.yaml"))
    (comp / "images" / "img_0003.png").write_bytes(b"\x89PNG broken")
    args = ["train", "-c", str(comp / "kseg.yaml"), "--set", "runtime.num_workers=1"]
    for item in FAST:
        args += ["--set", item]
    for fold in ("0", "1", "2"):  # the broken image trains in two of the three folds
        result = runner.invoke(app, [*args, "--fold", fold])
        if result.exit_code != 0:
            break
    text = _one_error_line(result)
    assert "img_0003.png cannot be read" in text and "DataLoader worker" not in text


def test_validate_cuts_a_huge_value_and_says_its_length(runner, comp):
    sample = (comp / "sample_submission.csv").read_text().splitlines()
    bad = sample[:]
    bad[1] = bad[1].split(",")[0] + "," + "x" * 100_000  # one malformed 100 kB mask
    (comp / "bad.csv").write_text("\n".join(bad) + "\n")
    result = runner.invoke(app, ["validate", str(comp / "bad.csv"), "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 1
    assert "100,000 characters" in " ".join(result.output.split()) and len(result.output) < 5000


def test_resume_with_fewer_epochs_than_done_says_what_to_do(comp):
    make_folds(load_config(comp / "kseg.yaml"))
    cfg = load_config(comp / "kseg.yaml", [*FAST, "runtime.num_workers=0", "train.epochs=2"])
    fold_dir = comp / "work" / "fold0"
    fold_dir.mkdir(parents=True)
    (fold_dir / ".best.pt.k1ll3d.tmp").write_bytes(b"x" * 1000)  # what a SIGKILL mid-save leaves
    (fold_dir / "oof.npy.partial").write_bytes(b"x")
    train_fold(cfg, 0)
    assert not (fold_dir / ".best.pt.k1ll3d.tmp").exists() and not (fold_dir / "oof.npy.partial").exists()
    fewer = load_config(comp / "kseg.yaml", [*FAST, "runtime.num_workers=0", "train.epochs=1"])
    with pytest.raises(TrainError, match=r"has already trained 2 epochs but train.epochs is 1; .*above 2"):
        train_fold(fewer, 0, resume=True)
    assert torch.load(comp / "work" / "fold0" / "last.pt", weights_only=False)["epoch"] == 2


def test_a_failed_checkpoint_write_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    from kseg.models import checkpoint

    def full_disk(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="is the disk full") as caught:
        checkpoint.save_checkpoint(tmp_path / "best.pt", {"epoch": 1})
    assert caught.value.filename == str(tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_a_full_disk_for_the_oof_array_is_one_error_not_a_bus_error(runner, comp, monkeypatch):
    """The OOF memory map's blocks are reserved up front: on a full disk that reservation fails with a
    sentence, where writing the sparse map would have killed the process with SIGBUS."""
    import errno
    import os

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    config = str(comp / "kseg.yaml")
    assert runner.invoke(app, ["split", "-c", config]).exit_code == 0
    overrides = [x for item in [*FAST, "train.num_workers=0"] for x in ("--set", item)]
    text = _one_error_line(runner.invoke(app, ["train", "-c", config, "--fold", "0", *overrides]))
    assert "oof.npy" in text and "no space left on the disk" in text and "free some space" in text
    fold = comp / "work" / "fold0"
    assert not list(fold.glob("oof.npy*")) and not (fold / "best.pt").exists()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (IsADirectoryError(21, "Is a directory", "out"), "out is a folder, not a file; give a file's name"),
        (NotADirectoryError(20, "Not a directory", "a.csv/b"), "a.csv/b: a part of this path is a file"),
        (FileNotFoundError(2, "No such file or directory", "gone.png"), "gone.png does not exist; check the path"),
        (PermissionError(13, "Permission denied", "/root/x"), "/root/x: permission denied; write somewhere you may"),
        (OSError(28, "No space left on device", "big.npy"), "no space left on the disk while writing big.npy"),
    ],
)
def test_operating_system_errors_name_the_path_first_and_the_fix_last(capsys, exc, expected):
    from kseg.render.core import os_error

    os_error(exc)
    text = " ".join(capsys.readouterr().err.split())
    assert text.startswith("error: ") and expected in text and text.count("error:") == 1


def test_a_file_given_as_the_predictions_folder_and_a_wrong_test_mask_key_are_named(runner, comp):
    config = ["-c", str(comp / "kseg.yaml")]
    text = _one_error_line(runner.invoke(app, ["submit", *config, "--predictions", str(comp / "kseg.yaml")]))
    assert "is a file, not a folder; give the folder 'kseg infer' wrote" in text
    solution = comp / "sample_submission.csv"
    moved = ["--set", "data.test_mask_template=nowhere/{id}.png"]
    text = _one_error_line(runner.invoke(app, ["score", str(solution), *config, *moved]))
    assert "check data.test_mask_template ('nowhere/{id}.png')" in text
