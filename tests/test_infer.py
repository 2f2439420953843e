import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, copy_comp, fast_config
from PIL import Image
from torch import nn

from kseg.cli import app
from kseg.errors import InferError, SubmissionError
from kseg.prediction.ensemble import export_bundle, load_bundle, load_ensemble
from kseg.prediction.infer import OutputOptions, list_images, run_inference
from kseg.prediction.predictor import Predictor, window_weights
from kseg.prediction.predictor import window_origins as tile_origins


@pytest.fixture(scope="module")
def trained_comp(trained_template, tmp_path_factory) -> Iterator[Path]:
    """The session's trained run with folds 0 and 1 (one epoch each)."""
    root = copy_comp(trained_template, tmp_path_factory.mktemp("infer"), folds=(0, 1))
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # checkpoints: free the disk after the module


class Pointwise(nn.Module):
    """A per-pixel model (1x1 convolution): tiling must reproduce whole-image inference exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(150, 230), (64, 96), (40, 50), (97, 33)])
@pytest.mark.parametrize("tta", ["none", "d4"])
def test_tiling_matches_whole_image_and_covers_every_pixel(comp, shape, tta):
    cfg = fast_config(comp, "data.image_size=[64,64]", "infer.tile_overlap=0.3")
    model = Pointwise().eval()
    image = _image(*shape)
    tiled = next(
        Predictor.from_config(
            [model],
            cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"mode": "tile"})}),
            torch.device("cpu"),
            tta=tta,
        ).predict([image])
    )
    assert tuple(tiled.shape) == (4, *shape)
    from kseg.data.images import normalize

    with torch.no_grad():
        whole = model(normalize(image, cfg.data.mean, cfg.data.std)[None]).softmax(1)[0]
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_tile_origins_and_weights_cover_everything():
    for size, tile, overlap in [(230, 64, 0.25), (64, 64, 0.5), (65, 64, 0.0), (1000, 256, 0.5)]:
        starts = tile_origins(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and starts[-1] + tile == size and starts == sorted(starts)
    w = window_weights(8, 12)
    assert (w > 0).all() and w[4, 6] > w[0, 0]


def test_conv_model_tiling_agrees_in_the_interior(comp):
    """A real network sees less context per window: close to whole-image inference, not equal."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=4).eval()
    cfg = fast_config(comp, "data.image_size=[64,64]", "infer.tile_overlap=0.5", "infer.mode=tile")
    image = _image(128, 192, seed=3)
    tiled = next(Predictor.from_config([model], cfg, torch.device("cpu")).predict([image]))
    whole = next(
        Predictor.from_config(
            [model],
            cfg.model_copy(
                update={
                    "data": cfg.data.model_copy(update={"image_size": (128, 192)}),
                    "infer": cfg.infer.model_copy(update={"mode": "resize"}),
                }
            ),
            torch.device("cpu"),
        ).predict([image])
    )
    agree = (tiled.argmax(0) == whole.argmax(0)).float()[16:-16, 16:-16].mean()
    assert agree > 0.5  # an untrained net is noisy; the point is shapes, coverage and placement


def test_resize_mode_returns_original_size(comp):
    cfg = fast_config(comp)
    probs = list(
        Predictor.from_config([Pointwise().eval()], cfg, torch.device("cpu")).predict([_image(50, 70), _image(130, 90)])
    )
    assert [tuple(p.shape) for p in probs] == [(4, 50, 70), (4, 130, 90)]
    assert torch.allclose(probs[0].sum(0), torch.ones(50, 70), atol=1e-5)


def test_multiscale_tta(comp):
    cfg = fast_config(comp, "infer.tta_scales=[0.5,1.0,1.5]")
    probs = next(
        Predictor.from_config([Pointwise().eval()], cfg, torch.device("cpu"), tta="hflip").predict([_image(64, 96)])
    )
    assert probs.shape == (4, 64, 96) and torch.allclose(probs.sum(0), torch.ones(64, 96), atol=1e-5)


# ------------------------------------------------------------------------------------- pipeline


def test_test_set_inference_feeds_submit(trained_comp, tmp_path):
    from kseg.submission import score_file, write_submission

    cfg = fast_config(
        trained_comp, f"submission.predictions={tmp_path / 'pred'}", f"submission.path={tmp_path / 'sub.csv'}"
    )
    result = run_inference(
        load_ensemble(cfg),
        pd.read_csv(trained_comp / "test.csv").assign(
            image=lambda t: [str(trained_comp / "images" / f"{i}.png") for i in t["ImageID"]]
        ),
        tmp_path / "pred",
        "flip",
    )
    assert result.n_images == 8 and result.folds == [0, 1] and result.views == 4
    info = json.loads((tmp_path / "pred" / "inference.json").read_text())
    assert info["tta"] == "flip" and info["folds"] == [0, 1]
    label = np.asarray(Image.open(tmp_path / "pred" / "test_0000.png"))
    assert label.shape == (64, 96) and label.max() < 6
    write_submission(cfg)
    assert 0.0 <= score_file(tmp_path / "sub.csv", cfg).score <= 1.0


def test_folder_inference_with_colour_overlay_and_probabilities(trained_comp, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(70, 110)).save(folder / "a.jpg")
    Image.fromarray(_image(40, 40, 1)).save(folder / "b.png")
    cfg = fast_config(trained_comp)
    run_inference(
        load_ensemble(cfg, [1]),
        list_images(folder),
        tmp_path / "out",
        "none",
        outputs=OutputOptions(probs=True, color=True, overlay=True),
    )
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape == (70, 110)
    colour = np.asarray(Image.open(tmp_path / "out" / "a_color.png"))
    assert colour.shape == (70, 110, 3)
    palette = {
        tuple(c)
        for c in np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in [c[0] for c in cfg.data.palette]])
    }
    assert {tuple(c) for c in colour.reshape(-1, 3)} <= palette
    assert np.asarray(Image.open(tmp_path / "out" / "a_overlay.png")).shape == (70, 220, 3)
    probs = np.load(tmp_path / "out" / "b.probs.npy")
    assert probs.shape == (6, 40, 40) and probs.dtype == np.uint8


def test_unreadable_image_stops_or_is_skipped(trained_comp, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(32, 32)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InferError, match=r"image .*broken.jpg cannot be read .*set infer.on_error: skip"):
        run_inference(load_ensemble(fast_config(trained_comp)), list_images(folder), tmp_path / "out")
    result = run_inference(
        load_ensemble(fast_config(trained_comp, "infer.on_error=skip")), list_images(folder), tmp_path / "out2"
    )
    assert result.n_images == 1 and len(result.skipped) == 1 and "broken.jpg" in result.skipped[0]


def test_empty_folder_and_no_folds(comp, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferError, match="no images in .*empty"):
        list_images(tmp_path / "empty")
    with pytest.raises(InferError, match="no trained folds in .*run 'kseg train --fold 0'"):
        load_ensemble(fast_config(comp))


def test_missing_fold_and_wrong_weight_count(trained_comp):
    with pytest.raises(InferError, match="fold 2 has no .*best.pt \\(trained folds: 0, 1\\)"):
        load_ensemble(fast_config(trained_comp), [0, 2])
    with pytest.raises(InferError, match="3 fold weights for 2 folds"):
        load_ensemble(fast_config(trained_comp), [0, 1], [1, 1, 1])


def test_bundle_predicts_like_the_workdir_and_needs_nothing_else(trained_comp, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_image(48 + 8 * i, 80, i)).save(folder / f"img{i}.png")
    cfg = fast_config(trained_comp)
    bundle = export_bundle(cfg, tmp_path / "model.kseg")
    direct = run_inference(load_ensemble(cfg), list_images(folder), tmp_path / "direct", "flip")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = shutil.copy(bundle, elsewhere / "model.kseg")
    monkeypatch.chdir(elsewhere)
    ensemble = load_bundle(Path(moved))
    assert ensemble.folds == [0, 1]
    run_inference(ensemble, list_images(folder), tmp_path / "bundled", "flip")
    for i in range(direct.n_images):
        a = np.asarray(Image.open(tmp_path / "direct" / f"img{i}.png"))
        b = np.asarray(Image.open(tmp_path / "bundled" / f"img{i}.png"))
        assert np.array_equal(a, b)


def test_half_precision_bundle_is_smaller(trained_comp, tmp_path):
    full = export_bundle(fast_config(trained_comp), tmp_path / "full.kseg", [0])
    half = export_bundle(fast_config(trained_comp), tmp_path / "half.kseg", [0], half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert len(load_bundle(half).models) == 1


def test_bundle_of_another_version_or_kind(trained_comp, tmp_path):
    path = export_bundle(fast_config(trained_comp), tmp_path / "m.kseg", [0])
    bundle = torch.load(path, weights_only=True)
    member = bundle["members"][0]  # a bundle of format 1 (kseg before blends) still loads
    old = {k: v for k, v in bundle.items() if k not in ("members", "source")}
    torch.save({**old, "bundle_version": 1, "state_dicts": member["state_dicts"]}, tmp_path / "v1.kseg")
    assert len(load_bundle(tmp_path / "v1.kseg").models) == 1
    bundle["bundle_version"] = 99
    torch.save(bundle, tmp_path / "future.kseg")
    with pytest.raises(InferError, match="bundle of format 99 .* reads formats 1-2; export it again"):
        load_bundle(tmp_path / "future.kseg")
    torch.save({"weights": 1}, tmp_path / "other.kseg")
    with pytest.raises(InferError, match="is not a kseg bundle"):
        load_bundle(tmp_path / "other.kseg")
    with pytest.raises(InferError, match="does not exist"):
        load_bundle(tmp_path / "nope.kseg")


def test_cli_infer_tta_spellings(runner, trained_comp, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(64, 96)).save(folder / "x.png")
    base = ["infer", "-c", str(trained_comp / "kseg.yaml"), "--images", str(folder)]
    for item in FAST:
        base += ["--set", item]
    for args, expected in ([[], "none"], [["--tta"], "d4"], [["--tta", "flip"], "flip"]):
        out = tmp_path / f"out_{expected}"
        result = runner.invoke(app, [*base, *args, "--out", str(out), "--color"])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "inference.json").read_text())["tta"] == expected
        assert (out / "x_color.png").is_file()


def test_cli_export_then_bundle_infer(runner, trained_comp, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(64, 96)).save(folder / "x.png")
    sets = [x for item in FAST for x in ("--set", item)]
    export = ["export", "-c", str(trained_comp / "kseg.yaml"), *sets, "--out", str(tmp_path / "m.kseg")]
    result = runner.invoke(app, export)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "infer",
            "--bundle",
            str(tmp_path / "m.kseg"),
            "--images",
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--tta",
            "hflip",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "x.png").is_file()
    result = runner.invoke(app, ["infer", "--bundle", str(tmp_path / "m.kseg")])
    assert result.exit_code == 1 and "with --bundle, give --images DIR and --out DIR" in result.output


def test_cli_infer_errors_are_one_line(runner, comp, tmp_path):
    result = runner.invoke(app, ["infer", "-c", str(comp / "kseg.yaml")])
    assert result.exit_code == 1 and "no trained folds" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["infer", "-c", str(comp / "kseg.yaml"), "--tta", "d8"])
    assert result.exit_code == 1 and "TTA views 'd8' are unknown" in result.output


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_per_image_normalisation_ignores_lighting(comp, mode):
    """Standardising each image by its own statistics makes predictions blind to a per-channel
    brightness and contrast change (the scene-to-scene shift it is meant for)."""
    cfg = fast_config(comp, "data.normalize=per_image", f"infer.mode={mode}", "data.image_size=[64,64]")
    model = Pointwise().eval()
    image = np.random.default_rng(4).random((80, 120, 3)).astype(np.float32)
    darker = image * np.array([0.6, 0.7, 0.8], np.float32) + np.array([0.05, 0.1, 0.0], np.float32)
    predictor = Predictor.from_config([model], cfg, torch.device("cpu"))
    a, b = next(predictor.predict([image])), next(predictor.predict([darker]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    fixed = Predictor.from_config(
        [model], fast_config(comp, f"infer.mode={mode}", "data.image_size=[64,64]"), torch.device("cpu")
    )
    assert (next(fixed.predict([image])) - next(fixed.predict([darker]))).abs().max() > 1e-2


# ------------------------------------------------------------------------ predictions as one unit


def _test_images(root: Path) -> pd.DataFrame:
    from kseg.prediction.infer import competition_test_images

    return competition_test_images(fast_config(root).data)


def _submit_cfg(root: Path, pred: Path, tmp_path: Path):
    return fast_config(root, f"submission.predictions={pred}", f"submission.path={tmp_path / 'sub.csv'}")


def test_a_failed_run_leaves_the_previous_predictions_whole(trained_comp, tmp_path):
    """A run that stops half-way (unreadable image) never mixes into the last complete predictions."""
    from kseg.submission import write_submission

    pred = tmp_path / "pred"
    run_inference(load_ensemble(fast_config(trained_comp)), _test_images(trained_comp), pred, "flip")
    before = {p.name: p.read_bytes() for p in pred.iterdir()}
    broken = _test_images(trained_comp)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not an image")
    broken.loc[5, "image"] = str(bad)  # the sixth image fails after five were predicted
    with pytest.raises(InferError, match="broken.png cannot be read"):
        run_inference(load_ensemble(fast_config(trained_comp)), broken, pred, "none")
    assert {p.name: p.read_bytes() for p in pred.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pred.")] == []  # no half-built folder
    result = write_submission(_submit_cfg(trained_comp, pred, tmp_path))
    assert "8 test images checked against" in result.note and result.report.ok


def test_a_full_disk_during_inference_leaves_no_partial_predictions(trained_comp, tmp_path, monkeypatch):
    import kseg.prediction.infer

    calls = []

    def disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(args[0] / f"{args[1]}.png"))
        return real(*args, **kwargs)

    real = kseg.prediction.infer._write_outputs
    monkeypatch.setattr(kseg.prediction.infer, "_write_outputs", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_inference(load_ensemble(fast_config(trained_comp)), _test_images(trained_comp), tmp_path / "pred")
    assert list(tmp_path.iterdir()) == []


def test_skipped_images_are_in_the_manifest_and_submit_says_so(trained_comp, tmp_path):
    from kseg.submission import write_submission

    images = _test_images(trained_comp)
    bad = tmp_path / "test_0002.png"
    bad.write_bytes(b"\x89PNG broken")
    images.loc[images["ImageID"] == "test_0002", "image"] = str(bad)
    pred = tmp_path / "pred"
    run_inference(load_ensemble(fast_config(trained_comp, "infer.on_error=skip")), images, pred)
    info = json.loads((pred / "inference.json").read_text())
    assert info["skipped_ids"] == ["test_0002"] and "test_0002" not in info["image_ids"]
    cfg = _submit_cfg(trained_comp, pred, tmp_path)
    with pytest.raises(SubmissionError, match="kseg infer skipped test image 'test_0002'.*--fill-empty"):
        write_submission(cfg)
    assert not (tmp_path / "sub.csv").exists()
    result = write_submission(cfg, fill_empty=True)
    assert "1 skipped image(s) submitted with empty masks" in result.note
    rows = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False).set_index("ImageID")["EncodedPixels"]
    assert all(rows[f"test_0002_{k}"] == "" for k in range(6))


def test_submit_refuses_predictions_that_are_not_the_test_set_or_were_changed(trained_comp, tmp_path):
    from kseg.submission import write_submission

    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("test_0000.png", "test_0001.png"):
        shutil.copy(trained_comp / "images" / name, subset / name)
    pred = tmp_path / "pred"
    run_inference(load_ensemble(fast_config(trained_comp)), list_images(subset), pred)
    cfg = _submit_cfg(trained_comp, pred, tmp_path)
    with pytest.raises(SubmissionError, match=r"lists no prediction for test image 'test_0002' \(6 of 8 missing\)"):
        write_submission(cfg)
    run_inference(load_ensemble(fast_config(trained_comp)), _test_images(trained_comp), pred)
    (pred / "test_0003.png").write_bytes((pred / "test_0004.png").read_bytes() + b"\0")
    with pytest.raises(SubmissionError, match=r"test_0003.png is not the file kseg infer wrote \(changed since\)"):
        write_submission(cfg)
    assert not (tmp_path / "sub.csv").exists()


def test_out_never_replaces_a_folder_kseg_did_not_write(trained_comp, tmp_path):
    mine = tmp_path / "my_images"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InferError, match=r"holds files kseg infer did not write \(e.g. holiday.jpg\)"):
        run_inference(load_ensemble(fast_config(trained_comp)), _test_images(trained_comp), mine)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]


def test_a_bundle_predicts_only_the_folds_it_holds_and_keeps_its_model(trained_comp, tmp_path, runner):
    from kseg.cli import app

    bundle = export_bundle(fast_config(trained_comp), tmp_path / "m.kseg", [0])
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((trained_comp / "images").glob("test_*.png"))[:2]:
        shutil.copy(path, images / path.name)
    base = ["infer", "--bundle", str(bundle), "--images", str(images), "--out"]
    other = runner.invoke(app, [*base, str(tmp_path / "a"), "--folds", "1"])
    assert other.exit_code == 1 and "holds folds 0, not fold 1" in " ".join(other.output.split())
    assert not (tmp_path / "a").exists()
    model = runner.invoke(app, [*base, str(tmp_path / "b"), "--set", "model.arch=FPN"])
    text = " ".join(model.output.split())
    assert model.exit_code == 1 and "--set model.arch=FPN changes the model that bundle" in text
    assert "Traceback" not in model.output
    same = runner.invoke(app, [*base, str(tmp_path / "c"), "--folds", "0"])
    assert same.exit_code == 0, same.output


def test_a_softmax_run_is_not_read_as_multilabel(trained_comp, tmp_path, runner):
    from kseg.cli import app

    sets = [x for item in FAST for x in ("--set", item)]
    args = ["infer", "-c", str(trained_comp / "kseg.yaml"), *sets, "--out", str(tmp_path / "p")]
    result = runner.invoke(app, [*args, "--set", "data.multilabel=true", "--set", "data.palette=null"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "was trained softmax (one class per pixel) but the config says" in text
    assert not (tmp_path / "p").exists()


def test_an_export_clears_what_a_killed_export_of_the_same_file_left(trained_comp, tmp_path):
    left = tmp_path / ".m.kseg.k3j9x.tmp"
    left.write_bytes(b"half a bundle")
    other = tmp_path / ".other.kseg.k3j9x.tmp"  # another file's: not ours to remove
    other.write_bytes(b"x")
    export_bundle(fast_config(trained_comp), tmp_path / "m.kseg", [0])
    assert not left.exists() and other.exists() and (tmp_path / "m.kseg").is_file()
