"""kseg tile / stitch on small GeoTIFFs written here: windows, mask resampling, drop rules, stats, errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import scan
from PIL import Image

from kseg.cli import app
from kseg.config import TileConfig, build_config
from kseg.data.reading import list_samples
from kseg.errors import TileError

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from kseg.data.tile import stitch, tile_origins, tile_raster  # noqa: E402

H, W, BANDS, FINE = 300, 400, 5, 10  # image pixels are 10 m, mask pixels 1 m
CRS = "EPSG:32640"


def _write(path: Path, array: np.ndarray, transform=None, crs=CRS, nodata=None) -> Path:
    count, height, width = array.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": array.dtype}
    if transform is not None:
        profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def _classes_coarse() -> np.ndarray:
    """The class of each 10 m pixel: vertical stripes 0..3, with the top-left 128x128 all class 0 ("sea")."""
    coarse = (np.arange(W)[None, :] // 100 % 4).repeat(H, 0).astype(np.uint8)
    coarse[:128, :128] = 0
    return coarse


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("geo")
    rng = np.random.default_rng(0)
    image = rng.integers(1, 10000, (BANDS, H, W), dtype=np.uint16)
    image[:, 172:, 272:] = 0  # the bottom-right tile is nodata in every band
    transform = from_origin(500000, 2800000, 10, 10)
    coarse = _classes_coarse()
    fine = np.kron(coarse, np.ones((FINE, FINE), np.uint8))
    # in each 10x10 block, the centre pixel (what nearest resampling samples) disagrees with the majority
    fine[5::FINE, 5::FINE] = (coarse + 1) % 4
    return {
        "image": _write(root / "scene.tif", image, transform, nodata=0),
        "mask": _write(root / "mask.tif", fine[None], from_origin(500000, 2800000, 1, 1)),
        "array": image,
        "coarse": coarse,
        "transform": transform,
        "root": root,
    }


def test_tile_origins_cover_every_pixel():
    assert tile_origins(300, 128, 128) == [0, 128, 172]
    assert tile_origins(256, 128, 128) == [0, 128]
    assert tile_origins(300, 128, 100) == [0, 100, 172]


def test_tiles_windows_mode_resampling_and_drop_rules(scene, tmp_path):
    options = TileConfig(size=128, bands=[3, 1], drop_classes=[0])
    result = tile_raster(scene["image"], tmp_path / "t", options, scene["mask"])
    assert result.n_candidates == 12  # rows 0, 128, 172 x cols 0, 128, 256, 272
    assert result.dropped_nodata == 1  # rows 172, col 272: all nodata
    assert result.dropped_classes == 1  # rows 0, col 0: sea only
    assert len(result.index) == 10
    for row in result.index.itertuples():
        tile = np.load(tmp_path / "t" / "images" / f"{row.ImageID}.npy")
        window = scene["array"][[2, 0], row.row : row.row + 128, row.col : row.col + 128]
        np.testing.assert_array_equal(tile, window.transpose(1, 2, 0))  # (H, W, C), bands 3 and 1
        labels = np.asarray(Image.open(tmp_path / "t" / "masks" / f"{row.ImageID}.png"))
        expected = scene["coarse"][row.row : row.row + 128, row.col : row.col + 128].copy()
        nodata = (window == 0).all(0)
        expected[nodata] = 255
        np.testing.assert_array_equal(labels, expected)  # the majority class of each 10x10 block
    assert result.index["ImageID"].iloc[0] == "scene_y00000_x00128"


def test_nearest_resampling_takes_the_centre_pixel(scene, tmp_path):
    result = tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128, mask_resampling="nearest"), scene["mask"])
    row = result.index.iloc[1]
    labels = np.asarray(Image.open(tmp_path / "t" / "masks" / f"{row.ImageID}.png"))
    majority = scene["coarse"][row.row : row.row + 128, row.col : row.col + 128]
    np.testing.assert_array_equal(labels, (majority + 1) % 4)


def test_band_statistics_match_the_kept_tiles(scene, tmp_path):
    result = tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128), scene["mask"])
    stack = np.concatenate(
        [np.load(tmp_path / "t" / "images" / f"{i}.npy").reshape(-1, BANDS) for i in result.index["ImageID"]]
    ).astype(np.float64)
    valid = stack[~(stack == 0).all(1)]
    np.testing.assert_allclose(result.mean, valid.mean(0), rtol=1e-9)
    np.testing.assert_allclose(result.std, valid.std(0), rtol=1e-6)


def test_tiles_are_a_competition_the_data_layer_reads(scene, tmp_path):
    result = tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128), scene["mask"])
    tree = yaml.safe_load((tmp_path / "t" / "data.yaml").read_text())
    tree["data"]["classes"] = ["sea", "land", "field", "urban"]
    tree["data"]["test_csv"] = None
    cfg = build_config(tree, tmp_path)
    assert cfg.model.in_channels == BANDS and len(cfg.data.mean) == BANDS
    samples = list_samples(cfg.data)
    assert len(samples) == len(result.index) and "source" in samples.columns
    stats = scan(cfg, samples)  # reads the .npy sizes and the index masks
    assert stats.counts.sum() > 0


def test_stitch_restores_the_raster_with_its_georeference(scene, tmp_path):
    for stride in (128, 100):
        out = tmp_path / f"s{stride}"
        result = tile_raster(scene["image"], out, TileConfig(size=128, stride=stride), scene["mask"])
        preds = tmp_path / f"p{stride}"
        preds.mkdir()
        for image_id in result.index["ImageID"]:  # a perfect model: predictions = the tile masks
            (preds / f"{image_id}.png").write_bytes((out / "masks" / f"{image_id}.png").read_bytes())
        written = stitch(out, preds, tmp_path / f"pred{stride}.tif")
        with rasterio.open(written) as src, rasterio.open(scene["image"]) as ref:
            assert src.crs == ref.crs and src.transform == ref.transform and (src.height, src.width) == (H, W)
            stitched = src.read(1)
        expected = scene["coarse"].copy()
        expected[(scene["array"] == 0).all(0)] = 255
        np.testing.assert_array_equal(stitched, expected)
        assert not list(tmp_path.glob(".pred*.tmp"))


def test_an_interrupted_tiling_leaves_nothing(scene, tmp_path):
    def stop(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128), scene["mask"], on_progress=stop)
    assert list(tmp_path.iterdir()) == []
    first = tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128), scene["mask"])
    with pytest.raises(KeyboardInterrupt):  # a second run that fails keeps the first one's tiles
        tile_raster(scene["image"], tmp_path / "t", TileConfig(size=64), scene["mask"], on_progress=stop)
    assert len(pd.read_csv(tmp_path / "t" / "tiles.csv")) == len(first.index)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_stitch_names_a_missing_prediction(scene, tmp_path):
    tile_raster(scene["image"], tmp_path / "t", TileConfig(size=128))
    (tmp_path / "p").mkdir()
    with pytest.raises(TileError, match=r"no prediction .*\.png \(11 of 11 tiles missing\); run: kseg infer"):
        stitch(tmp_path / "t", tmp_path / "p", tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_bad_rasters(scene, tmp_path):
    plain = _write(tmp_path / "plain.tif", scene["array"][:, :64, :64], transform=None, crs=None)
    with pytest.raises(TileError, match="has no georeference"):
        tile_raster(plain, tmp_path / "a", TileConfig(size=32))
    other = _write(tmp_path / "m.tif", np.zeros((1, 30, 40), np.uint8), from_origin(56, 25, 0.001, 0.001), "EPSG:4326")
    with pytest.raises(TileError, match=r"mask .*m.tif is in EPSG:4326 but image .* is in EPSG:32640; reproject"):
        tile_raster(scene["image"], tmp_path / "b", TileConfig(size=128), other)
    with pytest.raises(
        TileError, match=r"tile.size 512 is larger than .*\(300x400 px\); use a tile.size of at most 300"
    ):
        tile_raster(scene["image"], tmp_path / "c", TileConfig(size=512))
    with pytest.raises(TileError, match=r"tile.bands \[6\] out of range: .* has bands 1..5"):
        tile_raster(scene["image"], tmp_path / "d", TileConfig(size=128, bands=[1, 6]))
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written


def test_cli_tile_and_its_errors(scene, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no kseg.yaml here: defaults and --set tile.* only
    out = tmp_path / "tiles"
    args = ["tile", str(scene["image"]), "--mask", str(scene["mask"]), "--out", str(out), "--size", "128"]
    result = runner.invoke(app, [*args, "--set", "tile.drop_classes=[0]"])
    assert result.exit_code == 0, result.output
    assert "10 tiles of 128 px kept out of 12 (1 all nodata, 1 only tile.drop_classes)" in result.output
    assert len(pd.read_csv(out / "tiles.csv")) == 10
    result = runner.invoke(app, [*args, "--bands", "1,9"])
    assert result.exit_code == 1 and "tile.bands [9] out of range" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, [*args[:-1], "4"])  # --size 4: the flag is validated like tile.size
    assert result.exit_code == 1 and "config key 'tile.size' in --set tile.size=4" in result.output
    result = runner.invoke(app, [*args, "--set", "data.root=x"])
    assert result.exit_code == 1 and "only tile.* keys" in result.output


@pytest.mark.slow
def test_infer_stitch_end_to_end(scene, runner, tmp_path, monkeypatch):
    """Tile, train a tiny model on the tiles, predict them and stitch one GeoTIFF, all through the CLI."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tiles"
    args = ["tile", str(scene["image"]), "--mask", str(scene["mask"]), "--out", str(out), "--size", "64"]
    assert runner.invoke(app, args).exit_code == 0
    tree = yaml.safe_load((out / "data.yaml").read_text())
    tree["data"].update(classes=["sea", "land", "field", "urban"], test_csv=None)
    tree["workdir"] = str(tmp_path / "work")
    tree["model"].update(encoder_name="resnet18", encoder_weights=None)
    tree["train"] = {"epochs": 1, "batch_size": 8, "num_workers": 0}
    tree["split"] = {"n_folds": 2}
    (tmp_path / "kseg.yaml").write_text(yaml.safe_dump(tree))
    for command in (["split"], ["train", "--fold", "0"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["infer", "--images", str(out / "images"), "--out", str(tmp_path / "pred"), "--stitch", "scene_pred.tif"]
    )
    assert result.exit_code == 0, result.output
    assert "stitched" in result.output
    with rasterio.open(tmp_path / "scene_pred.tif") as src:
        assert src.crs.to_string() == CRS and (src.height, src.width) == (H, W)
        assert set(np.unique(src.read(1)).tolist()) <= {0, 1, 2, 3, 255}
