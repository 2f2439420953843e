import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.errors import KsegError
from kseg.synth.aerial import class_names, make_competition, synth_scene


def test_writes_a_kaggle_style_competition(comp_template):
    root = comp_template
    train = pd.read_csv(root / "train.csv")
    test = pd.read_csv(root / "test.csv")
    assert list(train.columns) == ["ImageID"] and len(train) == 24
    assert list(test.columns) == ["ImageID"] and len(test) == 8
    sample = pd.read_csv(root / "sample_submission.csv", keep_default_na=False)
    assert list(sample.columns) == ["ImageID", "EncodedPixels"]
    assert len(sample) == 8 * 6
    assert sample["ImageID"][:6].tolist() == [f"{test['ImageID'][0]}_{k}" for k in range(6)]
    for image_id in train["ImageID"]:
        image = Image.open(root / "images" / f"{image_id}.png")
        mask = Image.open(root / "masks" / f"{image_id}.png")
        assert image.mode == "RGB" and image.size == (96, 64)
        assert mask.mode == "L" and mask.size == (96, 64)
    for image_id in test["ImageID"]:
        assert (root / "test_masks" / f"{image_id}.png").is_file()
        assert not (root / "masks" / f"{image_id}.png").exists()
    cfg = load_config(root / "kseg.yaml")
    assert cfg.data.classes == class_names(6)
    assert cfg.model.encoder_weights is None


def test_classes_vary_between_images_and_some_are_rare(comp_template):
    masks = [np.asarray(Image.open(p)) for p in sorted((comp_template / "masks").glob("*.png"))]
    present = np.stack([np.bincount(m.ravel(), minlength=6) > 0 for m in masks])
    assert (present.sum(1) >= 3).mean() > 0.5  # several classes per image
    assert not present[:, 1:].all(0).any()  # every non-background class is missing somewhere
    assert present[:, 1:].any(0).all()  # and present somewhere
    area = np.stack([np.bincount(m.ravel(), minlength=6) for m in masks]).sum(0)
    assert area.min() / area.sum() < 0.01  # a rare, small class (cars)


def test_deterministic_per_seed_and_independent_of_counts(tmp_path):
    a = make_competition(tmp_path / "a", n_train=3, n_test=2, seed=5)
    b = make_competition(tmp_path / "b", n_train=5, n_test=1, seed=5)
    c = make_competition(tmp_path / "c", n_train=3, n_test=2, seed=6)
    for name in ("images/img_0000.png", "masks/img_0002.png", "test_masks/test_0000.png"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    assert (a.root / "images/img_0000.png").read_bytes() != (c.root / "images/img_0000.png").read_bytes()


@pytest.mark.parametrize("n_classes", [2, 12, 15])
def test_scene_uses_only_its_classes(n_classes):
    seen = set()
    for i in range(30):
        image, label = synth_scene(np.random.default_rng([0, 0, i]), 40, 56, n_classes)
        assert image.shape == (40, 56, 3) and label.shape == (40, 56)
        seen |= set(np.unique(label).tolist())
    assert seen <= set(range(n_classes))
    assert len(seen) >= min(n_classes, 8)


def test_config_size_is_rounded_to_a_multiple_of_32(tmp_path):
    make_competition(tmp_path, n_train=1, n_test=1, height=50, width=70)
    assert load_config(tmp_path / "kseg.yaml").data.image_size == (64, 96)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"n_classes": 1}, "--classes 1"), ({"n_train": 0}, "at least one"), ({"height": 4}, "too small")],
)
def test_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(KsegError, match=fragment):
        make_competition(tmp_path, **kwargs)


def test_cli_synth(runner, tmp_path):
    result = runner.invoke(
        app,
        [
            "synth",
            str(tmp_path / "c"),
            "--train",
            "4",
            "--test",
            "2",
            "--classes",
            "3",
            "--height",
            "32",
            "--width",
            "48",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 4 train + 2 test images, 3 classes" in result.output
    assert len(pd.read_csv(tmp_path / "c" / "sample_submission.csv")) == 6


def test_cli_synth_bad_argument_is_one_line(runner, tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), "--classes", "300"])
    assert result.exit_code == 1
    assert "error: --classes 300 is out of range" in result.output
    assert "Traceback" not in result.output


def test_cli_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "split"):
        assert command in result.output
