import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import dubai_config, scan
from PIL import Image

from kseg.config import build_config, load_config
from kseg.data.reading import MaskSpec, decode_mask, list_samples, read_image, read_mask
from kseg.errors import DataError

COLOURS = ["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#50E3C2"]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def _cfg(root: Path, **data) -> object:
    tree = {"workdir": str(root / "work"), "data": {"root": str(root), **data}}
    return build_config(tree, root)


def make_drone_layout(comp: Path, target: Path) -> Path:
    """The 12-class drone competition's layout: imgs/imgs/<id>.jpg, masks/masks/<id>.png, CSV ids."""
    (target / "imgs" / "imgs").mkdir(parents=True)
    (target / "masks" / "masks").mkdir(parents=True)
    for csv in ("train.csv", "test.csv"):
        shutil.copy(comp / csv, target / csv)
    for image in (comp / "images").glob("*.png"):
        Image.open(image).save(target / "imgs" / "imgs" / f"{image.stem}.jpg", quality=95)
    for mask in (comp / "masks").glob("*.png"):
        shutil.copy(mask, target / "masks" / "masks" / mask.name)
    return target


def make_colour_layout(comp: Path, target: Path, palette_png_tile: str = "Tile 2") -> Path:
    """A Dubai-like layout: 'Tile N/images/*.jpg' + colour masks, some RGB PNGs and some palette PNGs."""
    ids = pd.read_csv(comp / "train.csv")["ImageID"].tolist()
    for i, image_id in enumerate(ids[:12]):
        tile = f"Tile {i // 4 + 1}"
        (target / tile / "images").mkdir(parents=True, exist_ok=True)
        (target / tile / "masks").mkdir(parents=True, exist_ok=True)
        Image.open(comp / "images" / f"{image_id}.png").save(target / tile / "images" / f"part_{i:03d}.jpg")
        label = np.asarray(Image.open(comp / "masks" / f"{image_id}.png"))
        colour = np.array([_rgb(c) for c in COLOURS], dtype=np.uint8)[label]
        mask = Image.fromarray(colour)
        if tile == palette_png_tile:
            mask = mask.quantize(colors=len(COLOURS), method=Image.Quantize.MAXCOVERAGE)  # a 'P' mode PNG
        mask.save(target / tile / "masks" / f"part_{i:03d}.png")
    return target


CLASSES = ["background", "vegetation", "road", "building", "water", "car"]


def colour_cfg(root: Path, **extra):
    data = {
        "layout": "glob",
        "image_pattern": "{tile}/images/{name}.jpg",
        "mask_pattern": "{tile}/masks/{name}.png",
        "mask_format": "color",
        "classes": CLASSES,
        "palette": COLOURS,
        "test_csv": None,
    }
    return _cfg(root, **{**data, **extra})


# ------------------------------------------------------------------------------- layouts


def test_synthetic_csv_layout(comp):
    cfg = load_config(comp / "kseg.yaml")
    train = list_samples(cfg.data, "train")
    test = list_samples(cfg.data, "test")
    assert len(train) == 24 and len(test) == 8
    assert train["ImageID"].is_unique
    assert all(Path(p).is_file() for p in train["mask"])
    assert all(Path(p).parent.name == "test_masks" for p in test["mask"])
    image = read_image(Path(train["image"][0]))
    mask = read_mask(Path(train["mask"][0]), MaskSpec.from_config(cfg.data))
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 96) and mask.max() < 6


def test_drone_csv_layout_with_path_templates(comp, tmp_path):
    root = make_drone_layout(comp, tmp_path / "drone")
    cfg = _cfg(root, image_template="imgs/imgs/{id}.jpg", mask_template="masks/masks/{id}.png", classes=CLASSES)
    train = list_samples(cfg.data, "train")
    assert len(train) == 24
    assert train["image"][0].endswith(".jpg")
    test = list_samples(cfg.data, "test")
    assert "mask" not in test.columns
    stats = scan(cfg, train)
    expected = np.stack(
        [
            np.bincount(np.asarray(Image.open(comp / "masks" / f"{i}.png")).ravel(), minlength=6)
            for i in train["ImageID"]
        ]
    )
    np.testing.assert_array_equal(stats.counts, expected)


def test_glob_layout_with_colour_masks_rgb_and_palette_png(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    assert Image.open(root / "Tile 2" / "masks" / "part_004.png").mode == "P"
    assert Image.open(root / "Tile 1" / "masks" / "part_000.png").mode == "RGB"
    cfg = colour_cfg(root)
    train = list_samples(cfg.data, "train")
    assert train["ImageID"].tolist()[:2] == ["Tile_1_part_000", "Tile_1_part_001"]
    assert set(train["tile"]) == {"Tile 1", "Tile 2", "Tile 3"}
    spec = MaskSpec.from_config(cfg.data)
    ids = pd.read_csv(comp / "train.csv")["ImageID"].tolist()
    for i, row in train.iterrows():
        truth = np.asarray(Image.open(comp / "masks" / f"{ids[i]}.png"))
        np.testing.assert_array_equal(read_mask(Path(row["mask"]), spec), truth)


def test_glob_id_template(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    cfg = colour_cfg(root, id_template="{name}")
    assert list_samples(cfg.data)["ImageID"][0] == "part_000"


def test_unknown_colour_is_an_error_with_pixel_counts(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    mask_path = root / "Tile 1" / "masks" / "part_000.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:3, :5] = (0, 0, 0)
    Image.fromarray(mask).save(mask_path)
    cfg = colour_cfg(root)
    with pytest.raises(DataError, match=r"part_000.png has colours outside data.palette: #000000 \(15 px\)"):
        scan(cfg)


def test_unknown_colour_mapped_to_ignore_when_configured(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    mask_path = root / "Tile 1" / "masks" / "part_000.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:3, :5] = (0, 0, 0)
    Image.fromarray(mask).save(mask_path)
    cfg = colour_cfg(root, unknown_labels="ignore")
    stats = scan(cfg)
    assert stats.unknown == {"#000000": (15, 1)}
    assert stats.table["ignore"][0] == 15
    assert read_mask(mask_path, MaskSpec.from_config(cfg.data))[:3, :5].tolist() == [[255] * 5] * 3


def test_ignore_colours_become_ignore_index():
    spec = MaskSpec("color", 2, 255, "error", ((0xFF0000, 0), (0x00FF00, 1), (0x9B9B9B, 255)))
    raw = np.array([[[255, 0, 0], [0, 255, 0], [155, 155, 155]]], dtype=np.uint8)
    labels, unknown = decode_mask(raw, spec)
    assert labels.tolist() == [[0, 1, 255]] and unknown == {}


def test_index_above_class_count(comp):
    mask_path = comp / "masks" / "img_0003.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[0, :7] = 9
    Image.fromarray(mask).save(mask_path)
    cfg = load_config(comp / "kseg.yaml")
    with pytest.raises(DataError, match=r"img_0003.png has values that are no class: 9 \(7 px\)"):
        scan(cfg)
    stats = scan(load_config(comp / "kseg.yaml", ["data.unknown_labels=ignore"]))
    assert stats.unknown == {"9": (7, 1)}


def test_colour_image_given_as_index_mask(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    cfg = colour_cfg(root, mask_format="index", palette=None)
    with pytest.raises(DataError, match="is a colour image but data.mask_format is 'index'"):
        scan(cfg)


# ------------------------------------------------------------------------------- bad input


def test_missing_mask_is_named(comp):
    (comp / "masks" / "img_0005.png").unlink()
    cfg = load_config(comp / "kseg.yaml")
    with pytest.raises(DataError, match=r"mask .*img_0005.png does not exist"):
        list_samples(cfg.data)


def test_missing_image_is_named(comp):
    (comp / "images" / "img_0002.png").unlink()
    with pytest.raises(DataError, match=r"image .*img_0002.png does not exist"):
        list_samples(load_config(comp / "kseg.yaml").data)


def test_unpaired_image_in_glob_layout(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    (root / "Tile 3" / "masks" / "part_009.png").unlink()
    with pytest.raises(DataError, match=r"image .*part_009.jpg has no mask matching"):
        list_samples(colour_cfg(root).data)


def test_unpaired_mask_in_glob_layout(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    (root / "Tile 3" / "images" / "part_009.jpg").unlink()
    with pytest.raises(DataError, match=r"mask .*part_009.png has no image"):
        list_samples(colour_cfg(root).data)


def test_pattern_matching_nothing(comp, tmp_path):
    root = make_colour_layout(comp, tmp_path / "aerial")
    cfg = colour_cfg(root, image_pattern="{tile}/imgs/{name}.jpg")
    with pytest.raises(DataError, match="matches no file"):
        list_samples(cfg.data)


def test_mask_size_differs_from_image(comp):
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(comp / "masks" / "img_0007.png")
    with pytest.raises(DataError, match=r"mask .*img_0007.png is 32x48 but image .*img_0007.png is 64x96"):
        scan(load_config(comp / "kseg.yaml"))


def test_truncated_mask(comp):
    path = comp / "masks" / "img_0001.png"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"mask .*img_0001.png cannot be read"):
        scan(load_config(comp / "kseg.yaml"))


def test_unreadable_image(comp):
    (comp / "images" / "img_0004.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"image .*img_0004.png cannot be read"):
        scan(load_config(comp / "kseg.yaml"))


def test_truncated_image_found_when_verifying(comp):
    path = comp / "images" / "img_0004.png"
    path.write_bytes(path.read_bytes()[:400])
    scan(load_config(comp / "kseg.yaml"))  # headers alone look fine
    with pytest.raises(DataError, match=r"image .*img_0004.png cannot be read"):
        scan(load_config(comp / "kseg.yaml", ["split.verify_images=true"]))


def test_duplicate_ids(comp):
    ids = pd.read_csv(comp / "train.csv")
    pd.concat([ids, ids.iloc[:2]]).to_csv(comp / "train.csv", index=False)
    with pytest.raises(DataError, match=r"lists 2 duplicate id\(s\): 'img_0000', 'img_0001'"):
        list_samples(load_config(comp / "kseg.yaml").data)


def test_missing_id_column(comp):
    pd.read_csv(comp / "train.csv").rename(columns={"ImageID": "id"}).to_csv(comp / "train.csv", index=False)
    with pytest.raises(DataError, match="has no column 'ImageID'.*set data.id_column"):
        list_samples(load_config(comp / "kseg.yaml").data)


def test_missing_root(comp):
    with pytest.raises(DataError, match="data.root .* does not exist"):
        list_samples(load_config(comp / "kseg.yaml", ["data.root=nowhere"]).data)


def test_template_with_unknown_field(comp):
    with pytest.raises(DataError, match="uses 'name'"):
        list_samples(load_config(comp / "kseg.yaml", ["data.image_template=images/{name}.png"]).data)


# ------------------------------------------------------------------------------- real data


def cfg_path():
    return Path(__file__).parents[1] / "configs" / "dubai-aerial.yaml"


def test_real_dubai_download(dubai, tmp_path):
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "dubai-aerial.yaml", [f"data.root={dubai}", f"workdir={tmp_path}"]
    )
    train = list_samples(cfg.data)
    assert len(train) == 54 and train["ImageID"].is_unique  # Tile 7 is held out by data.exclude
    assert train["ImageID"][0] == "Tile_1_image_part_001"
    assert train["tile"].nunique() == 6 and "Tile 7" not in set(train["tile"])
    everything = list_samples(load_config(cfg_path(), [f"data.root={dubai}", "data.exclude=[]"]).data)
    assert len(everything) == 63 and everything["tile"].nunique() == 7
    stats = scan(cfg, train)
    assert (stats.counts.sum(1) > 0).all()
    assert set(stats.unknown) == {"#000000"}  # the download's stray black pixels, reported not hidden
    assert stats.table["ignore"].sum() > stats.unknown["#000000"][0]  # plus the Unlabeled colour


def test_real_dubai_classes_json_colours_are_rejected_with_the_real_ones(dubai, tmp_path):
    cfg = dubai_config(dubai, tmp_path, classes_json=True)
    with pytest.raises(DataError, match=r"colours outside data.palette: #8429F6 \([\d,]+ px\)"):
        scan(cfg)


def test_shipped_drone_config_reads_the_drone_layout(comp, tmp_path):
    root = make_drone_layout(comp, tmp_path / "drone")
    shutil.copy(comp / "sample_submission.csv", root / "sample_submission.csv")
    config = Path(__file__).parents[1] / "configs" / "drone-12class.yaml"
    six = "[background, person, bike, car, drone, boat]"  # the synthetic copy has 6 classes
    cfg = load_config(config, [f"data.root={root}", f"data.classes={six}", f"workdir={tmp_path / 'w'}"])
    assert len(list_samples(cfg.data, "train")) == 24 and len(list_samples(cfg.data, "test")) == 8
    assert cfg.model.encoder_name == "resnet50" and cfg.infer.tta == "d4" and cfg.split.n_folds == 5
    assert load_config(config).n_classes == 12
