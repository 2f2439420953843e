"""Training masks from an RLE table (data.mask_format: rle): wide and long tables decode to exactly the
masks they were written from, straight into split and training, and bad rows are one sentence."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST

from kseg.cli import app
from kseg.config import load_config
from kseg.data.labels import rle_index, rle_table
from kseg.data.reading import MaskSpec, list_samples, read_mask
from kseg.errors import DataError
from kseg.rle import encode

CLASSES = ["background", "vegetation", "road", "building", "water", "car"]


def _truth(comp: Path) -> dict[str, np.ndarray]:
    cfg = load_config(comp / "kseg.yaml")
    spec = MaskSpec.from_config(cfg.data)
    return {r["ImageID"]: read_mask(r["mask"], spec) for r in list_samples(cfg.data).to_dict("records")}


def _runs(mask: np.ndarray, order: str, first_index: int) -> str:
    text = encode(mask, order=order)
    if first_index == 1 or not text:
        return text
    values = np.array(text.split(), dtype=np.int64)
    values[0::2] -= 1
    return " ".join(map(str, values))


def wide_table(truth: dict[str, np.ndarray], order: str = "column", first_index: int = 1) -> pd.DataFrame:
    """Clouds-style: ``<file name>_<class name>``, one row per image and foreground class, empty cells."""
    rows = [
        {"Image_Label": f"{image_id}.png_{name}", "EncodedPixels": _runs(labels == k, order, first_index)}
        for image_id, labels in truth.items()
        for k, name in enumerate(CLASSES)
        if k > 0
    ]
    return pd.DataFrame(rows)


def long_table(truth: dict[str, np.ndarray]) -> pd.DataFrame:
    """Severstal-style: image id and a numbered class column, only the non-empty rows."""
    rows = [
        {"ImageId": image_id, "ClassId": k, "EncodedPixels": encode(labels == k)}
        for image_id, labels in truth.items()
        for k in range(1, len(CLASSES))
        if (labels == k).any()
    ]
    return pd.DataFrame(rows)


WIDE = ["data.mask_format=rle", "data.rle.csv=labels.csv", "data.rle.id_column=Image_Label"]
LONG = [
    "data.mask_format=rle",
    "data.rle.csv=labels.csv",
    "data.rle.form=long",
    "data.rle.class_column=ClassId",
    "data.rle.class_key=index",
]


def _decoded(comp: Path, *overrides: str) -> dict[str, np.ndarray]:
    rle_index.cache_clear()
    cfg = load_config(comp / "kseg.yaml", list(overrides))
    spec = MaskSpec.from_config(cfg.data)
    return {r["ImageID"]: read_mask(r["mask"], spec) for r in list_samples(cfg.data).to_dict("records")}


@pytest.mark.parametrize(
    ("table", "overrides"),
    [
        ("wide", WIDE),
        ("wide_row_0", [*WIDE, "data.rle.order=row", "data.rle.first_index=0"]),
        ("long", LONG),
    ],
)
def test_tables_decode_to_the_masks_they_were_written_from(comp, table, overrides):
    truth = _truth(comp)
    if table == "long":
        written = long_table(truth)
    else:
        written = wide_table(truth, *(("row", 0) if table == "wide_row_0" else ("column", 1)))
    written.to_csv(comp / "labels.csv", index=False)
    shutil.rmtree(comp / "masks")  # nothing reads mask files any more
    decoded = _decoded(comp, *overrides)
    assert decoded.keys() == truth.keys()
    for image_id, labels in truth.items():
        np.testing.assert_array_equal(decoded[image_id], labels, err_msg=image_id)
    assert not list(comp.rglob("*.png.npy")) and not (comp / "masks").exists()


def test_a_background_class_other_than_the_first(comp):
    truth = _truth(comp)
    written = long_table(truth)
    written = written[written["ClassId"] != 3]  # "building" becomes what no run covers
    written.to_csv(comp / "labels.csv", index=False)
    decoded = _decoded(comp, *LONG, "data.rle.background=building")
    for image_id, labels in truth.items():
        expected = np.where((labels == 0) | (labels == 3), 3, labels)
        np.testing.assert_array_equal(decoded[image_id], expected)


def test_split_and_training_read_the_table(runner, comp):
    truth = _truth(comp)
    wide_table(truth).to_csv(comp / "labels.csv", index=False)
    shutil.rmtree(comp / "masks")
    rle_index.cache_clear()
    args = ["-c", str(comp / "kseg.yaml")]
    for item in [*WIDE, *FAST, "train.epochs=1", "data.test_mask_template=null"]:
        args += ["--set", item]
    result = runner.invoke(app, ["split", *args])
    assert result.exit_code == 0, result.output
    pixels = pd.read_csv(comp / "work" / "class_pixels.csv", skiprows=1).set_index("ImageID")
    expected = np.bincount(truth["img_0004"].ravel(), minlength=6)
    assert pixels.loc["img_0004", [f"px_{c}" for c in CLASSES]].tolist() == expected.tolist()
    result = runner.invoke(app, ["train", "--fold", "0", *args])
    assert result.exit_code == 0, result.output
    oof_masks = np.load(comp / "work" / "fold0" / "oof_masks.npy")
    ids = pd.read_csv(comp / "work" / "fold0" / "oof.csv")["ImageID"]
    np.testing.assert_array_equal(oof_masks[0], truth[ids[0]])


def _bad(comp: Path, rows: list[dict], overrides: list[str]) -> str:
    pd.DataFrame(rows).to_csv(comp / "labels.csv", index=False)
    with pytest.raises(DataError) as caught:
        _decoded(comp, *overrides)
    return str(caught.value)


@pytest.mark.parametrize(
    ("encoded", "says"),
    [
        ("1 5 3 4", "runs overlap"),
        ("6140 10", "past the image's 6144 pixels"),
        ("1 x", "is not space-separated numbers"),
        ("1 2 3", "an odd number of values"),
    ],
)
def test_a_bad_row_is_named_by_line_and_column(comp, encoded, says):
    rows = [{"Image_Label": "img_0000.png_road", "EncodedPixels": ""}]
    rows.append({"Image_Label": "img_0001.png_car", "EncodedPixels": encoded})
    text = _bad(comp, rows, WIDE)
    assert "labels.csv line 3, column EncodedPixels" in text and says in text


def test_ids_that_name_no_image_or_no_class(comp):
    text = _bad(comp, [{"Image_Label": "img_9999.png_road", "EncodedPixels": "1 2"}], WIDE)
    assert "line 2 names image 'img_9999.png', which is not among the 24 training images" in text
    text = _bad(comp, [{"Image_Label": "img_0000.png_cloud", "EncodedPixels": "1 2"}], WIDE)
    assert "line 2 (Image_Label 'img_0000.png_cloud') names class 'cloud'" in text and "data.classes" in text
    text = _bad(comp, [{"ImageId": "img_0000", "ClassId": 9, "EncodedPixels": "1 2"}], LONG)
    assert "names class '9'" in text and "numbered 0 to 5" in text


def test_two_classes_on_one_pixel_are_refused_until_multilabel(comp):
    rows = [
        {"Image_Label": "img_0000.png_road", "EncodedPixels": "1 10"},
        {"Image_Label": "img_0000.png_car", "EncodedPixels": "5 10"},
    ]
    text = _bad(comp, rows, WIDE)
    assert "lines 2, 3 (image 'img_0000.png') give one pixel two classes" in text


def test_a_repeated_row_and_a_table_without_rows_are_named(comp):
    rows = [
        {"Image_Label": "img_0000.png_road", "EncodedPixels": "1 10"},
        {"Image_Label": "img_0000.png_road", "EncodedPixels": "1 10"},
    ]
    text = _bad(comp, rows, WIDE)
    assert "lines 2, 3 (image 'img_0000.png') cover the same pixels of class 'road' twice" in text
    (comp / "labels.csv").write_text("Image_Label,EncodedPixels\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        _decoded(comp, *WIDE)


def test_a_missing_column_names_the_columns_and_the_key(runner, comp):
    pd.DataFrame({"Image_Label": ["img_0000.png_road"], "Pixels": ["1 2"]}).to_csv(comp / "labels.csv", index=False)
    rle_index.cache_clear()
    args = ["split", "-c", str(comp / "kseg.yaml")] + [x for item in WIDE for x in ("--set", item)]
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "has no column 'EncodedPixels' (columns: Image_Label, Pixels)" in text
    assert not (comp / "work" / "folds.csv").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        WIDE,
        [*WIDE, "data.rle.order=row", "data.rle.first_index=0", "data.rle.empty=-1", "data.rle.class_key=index"],
        LONG,
        [*LONG, "data.rle.index_base=1", "data.rle.background=car"],
    ],
)
def test_tables_round_trip_byte_for_byte(comp, overrides):
    """Truth written as a table, decoded, and written again gives the same bytes."""
    truth = _truth(comp)
    cfg = load_config(comp / "kseg.yaml", overrides)
    source = MaskSpec.from_config(cfg.data).rle
    if "data.rle.background=car" in overrides:  # car is what no run covers: fold it into the background
        truth = {i: np.where(m == 0, 5, m).astype(np.uint8) for i, m in truth.items()}
    keyed = {(f"{i}.png" if "Image_Label" in " ".join(overrides) else i): m for i, m in truth.items()}
    first = rle_table(keyed, source).to_csv(index=False)
    (comp / "labels.csv").write_text(first)
    decoded = _decoded(comp, *overrides)
    for image_id, labels in truth.items():
        np.testing.assert_array_equal(decoded[image_id], labels, err_msg=image_id)
    rekeyed = {key: decoded[i] for key, i in zip(keyed, truth, strict=True)}
    assert rle_table(rekeyed, source).to_csv(index=False) == first
    if "data.rle.empty=-1" in overrides:
        assert ",-1\n" in first  # empty masks written with the configured token
