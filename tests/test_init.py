"""kseg init through the command line: each competition shape from its download to a validated submission
with the written config, the Dubai download against configs/dubai-aerial.yaml, overwriting, --json, and
bad downloads (one line, exit 1, no kseg.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, REPO
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.planning.compare import compare_configs
from kseg.planning.stage import run_init

STYLES = ["drone", "severstal", "clouds", "instances", "tgs", "carvana"]
# the CPU-sized run of an init-written config: a small encoder without weights, tiny images, two folds
TINY = [*FAST, "model.encoder_weights=null", "train.epochs=2", "split.n_folds=2", "data.image_size=[32,64]"]
DUBAI_CLASSES = "building=#3C1098,land=#8429F6,road=#6EC1E4,vegetation=#FEDD3A,water=#E2A929"


def _cli(runner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"kseg {' '.join(args[:2])}: {result.output}"
    return result.output


def _refused(runner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return " ".join(result.output.split())


def _download(runner, tmp_path: Path, style: str, **size: int) -> tuple[Path, Path]:
    """A style's competition with its own config moved aside as the reference."""
    comp = tmp_path / style
    n = {"train": 10, "test": 4, "height": 32, "width": 64, **size}
    _cli(runner, "synth", str(comp), "--style", style, *[x for k, v in n.items() for x in (f"--{k}", str(v))])
    reference = comp / "reference.yaml"
    shutil.move(comp / "kseg.yaml", reference)
    return comp, reference


def _flagged(result) -> set[str]:
    return {d.key for d in result.plan.flagged}


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_each_shape_runs_from_kseg_init_to_a_valid_submission(runner, tmp_path, style):
    comp, reference = _download(runner, tmp_path, style)
    out = _cli(runner, "init", str(comp))
    assert "what kseg init found" in out and (comp / "kseg.yaml").is_file()
    result = run_init(comp, out=tmp_path / "again.yaml")  # the same decisions, read back as data (cached files)
    ref_overrides = ["submission.solution=solution.csv"] if style == "drone" else []  # the style leaves it unnamed
    compared = compare_configs(load_config(comp / "kseg.yaml"), load_config(reference, ref_overrides), _flagged(result))
    assert compared.wrong == [], compared.details
    assert len(compared.right) >= 25  # every key a download decides, less the flagged names
    config = ["-c", str(comp / "kseg.yaml"), *[x for item in TINY for x in ("--set", item)]]
    for command in (["split"], ["train", "--fold", "all"], ["infer", "--tta"], ["submit"], ["validate"]):
        _cli(runner, *command, *config)
    scored = json.loads(_cli(runner, "score", "--json", *config))  # against the hidden solution.csv
    assert 0.0 <= scored["score"] <= 1.0
    solution = pd.read_csv(comp / "solution.csv", dtype=str, keep_default_na=False)
    submission = pd.read_csv(comp / "submissions" / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.columns) == [c for c in solution.columns if c != "Usage"]


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("tgs", {"data.mask_format": "color", "submission.id_format": "{id}", "submission.pixel_order": "column"}),
        (
            "carvana",
            {
                "data.mask_pattern": "train_masks/{name}_mask.gif",
                "submission.pixel_order": "row",
                "split.group_pattern": "^(.+)_[^_]+$",
                "submission.id_format": "{file}",
            },
        ),  # fmt: skip
        ("severstal", {"data.rle.form": "long", "data.rle.class_column": "ClassId", "submission.rows": "nonempty"}),
        ("clouds", {"data.multilabel": True, "data.rle.form": "wide", "submission.id_format": "{file}_{name}"}),
        ("instances", {"submission.rows": "instances", "submission.metric": "instance_fbeta"}),
    ],
)
def test_the_deciding_keys_of_each_shape(runner, tmp_path, style, expected):
    comp, _ = _download(runner, tmp_path, style, train=8, test=4)
    result = run_init(comp, write=False)
    assert {key: result.plan.get(key) for key in expected} == expected


def test_a_second_init_refuses_to_overwrite_without_force(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "tgs", train=8)
    _cli(runner, "init", str(comp))
    (comp / "kseg.yaml").write_text("# mine\n")
    out = _refused(runner, "init", str(comp))
    assert f"{comp / 'kseg.yaml'} exists; pass --force to replace it" in out
    assert (comp / "kseg.yaml").read_text() == "# mine\n"
    _cli(runner, "init", str(comp), "--force")
    assert load_config(comp / "kseg.yaml").data.mask_format == "color"


def test_json_prints_the_fingerprint_and_writes_nothing(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "severstal", train=8)
    result = runner.invoke(app, ["init", str(comp), "--json"])
    assert result.exit_code == 0
    fingerprint = json.loads(result.stdout[result.stdout.index("{") :])
    assert fingerprint["table"]["class_column"] == "ClassId" and fingerprint["sample"]["rows_mode"] == "nonempty"
    assert not (comp / "kseg.yaml").exists()


def test_classes_and_metric_from_the_command_line(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "severstal", train=8)
    names = "background,d1,d2,d3,d4"
    _cli(runner, "init", str(comp), "--classes", names, "--metric", "row_iou")
    cfg = load_config(comp / "kseg.yaml")
    assert cfg.data.classes == names.split(",") and cfg.submission.classes == ["d1", "d2", "d3", "d4"]
    assert cfg.submission.metric == "row_iou"
    out = _refused(runner, "init", str(comp), "--force", "--classes", "a,b")
    assert "--classes names 2 classes but train.csv gives 5" in out
    assert "--metric 'f1' is not one of" in _refused(runner, "init", str(comp), "--force", "--metric", "f1")


def test_the_cached_rerun_reads_no_file_again(runner, tmp_path, monkeypatch):
    comp, _ = _download(runner, tmp_path, "tgs", train=8)
    first = run_init(comp)
    from kseg.planning import survey

    def read_again(*args, **kwargs):
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(survey, "image_stats", read_again)
    monkeypatch.setattr(survey, "mask_stats", read_again)
    second = run_init(comp, force=True)
    assert second.fingerprint == first.fingerprint


# ---------------------------------------------------------------------------------------- bad downloads


def test_a_folder_without_images_is_no_download(runner, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    out = _refused(runner, "init", str(tmp_path))
    assert "holds no image files" in out and "point kseg init at the unpacked competition download" in out
    assert not (tmp_path / "kseg.yaml").exists()


def test_a_table_and_masks_that_disagree_are_one_line(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "tgs", train=8)
    table = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    table["rle_mask"] = table["rle_mask"].iloc[::-1].to_numpy()  # each image gets another image's runs
    table.to_csv(comp / "train.csv", index=False)
    out = _refused(runner, "init", str(comp))
    assert "train.csv and the masks (train/masks/{name}.png) disagree" in out and "keep one label source" in out
    assert not (comp / "kseg.yaml").exists()


def test_a_table_whose_runs_fit_no_image_size_is_one_line(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "severstal", train=8)
    table = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    table.loc[0, "EncodedPixels"] = "2040 100"  # 32x64 = 2,048 pixels
    table.to_csv(comp / "train.csv", index=False)
    out = _refused(runner, "init", str(comp))
    assert "train.csv line 2: a run ends at pixel 2139, past the 32x64 = 2048 pixels" in out
    assert not (comp / "kseg.yaml").exists()


def test_masks_whose_colours_match_no_palette_are_one_line(runner, tmp_path):
    for part in ("images", "masks"):
        (tmp_path / part).mkdir()
    for i in range(3):
        label = np.zeros((16, 16, 3), np.uint8)
        label[:, 8:] = (200, 10, 10)
        Image.fromarray(label).save(tmp_path / "masks" / f"a{i}.png")
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "images" / f"a{i}.png")
    (tmp_path / "classes.json").write_text(json.dumps([{"name": "road", "color": "#00FF00"}]))
    out = _refused(runner, "init", str(tmp_path))
    assert "match none of the colours of classes.json" in out and "--classes name=#RRGGBB" in out
    assert not (tmp_path / "kseg.yaml").exists()


def test_a_sample_that_names_no_test_image_is_one_line(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "clouds", train=8)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample["Image_Label"] = "nothing.jpg_Fish"
    sample.to_csv(comp / "sample_submission.csv", index=False)
    out = _refused(runner, "init", str(comp))
    assert "sample_submission.csv names no test image" in out
    assert not (comp / "kseg.yaml").exists()


def test_a_failed_init_keeps_the_old_config(runner, tmp_path):
    comp, _ = _download(runner, tmp_path, "severstal", train=8)
    (comp / "kseg.yaml").write_text("# mine\n")
    pd.DataFrame({"ImageId": ["x.jpg"], "EncodedPixels": ["1 1"], "ClassId": ["1"]}).to_csv(
        comp / "sample_submission.csv", index=False
    )
    _refused(runner, "init", str(comp), "--force")
    assert (comp / "kseg.yaml").read_text() == "# mine\n"


# ---------------------------------------------------------------------------------------------- Dubai


@pytest.mark.slow
def test_the_dubai_download_gives_the_hand_written_data_section(runner, dubai, tmp_path):
    reference = load_config(REPO / "configs" / "dubai-aerial.yaml", [f"data.root={dubai}", "data.exclude=[]"])
    guessed = run_init(dubai, out=tmp_path / "guessed.yaml")
    compared = compare_configs(load_config(guessed.config), reference, _flagged(guessed))
    assert compared.wrong == [] and set(compared.flagged) == {"data.classes", "data.palette"}
    fp = guessed.fingerprint
    assert fp.masks.palette_file == "classes.json" and fp.masks.palette_agrees == ["#9B9B9B"]
    assert fp.masks.stray == {"#000000": [5547, 7]} and fp.structure.groups[0].key == "tile"
    named = run_init(dubai, out=tmp_path / "kseg.yaml", classes=DUBAI_CLASSES)
    compared = compare_configs(load_config(named.config), reference, _flagged(named))
    assert compared.wrong == [] and compared.flagged == []
    sets = [*FAST, "model.encoder_weights=null", "train.epochs=1", "data.scale=0.2", "data.image_size=[96,96]"]
    config = ["-c", str(named.config), *[x for item in sets for x in ("--set", item)]]
    _cli(runner, "split", *config)
    _cli(runner, "train", "--fold", "0", *config)
    assert "out-of-fold" in _cli(runner, "report", *config)


def test_kseg_init_never_imports_torch(runner, tmp_path):
    """Reading a download needs no model: kseg init starts fast and runs where torch is absent."""
    import subprocess
    import sys

    comp, _ = _download(runner, tmp_path, "carvana", train=8)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kseg", "init", str(comp)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "kseg.planning.stage" in imported and "torch" not in imported
