"""kseg init's detectors, each on small files made here: folders and patterns, mask kinds, class files,
runs tables (form, class keys and base, tokens, overlaps, instances, sizes), pixel order, the sample
submission, and groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kseg.errors import InitError
from kseg.planning import order as pixel_order
from kseg.planning.files import derive_pattern, is_mask_path, is_test_path, list_download, mask_affixes, pair_masks
from kseg.planning.masks import mask_stats, read_palette_file, summarise_masks
from kseg.planning.structure import field_groups, stem_groups
from kseg.planning.tables import ImageNames, encoded_column, read_runs_table, read_sample
from kseg.rle import encode

# --------------------------------------------------------------------------------------------- folders


def test_roles_come_from_folder_and_stem_words():
    assert is_mask_path("train_masks/a_01_mask.gif") and is_mask_path("Tile 1/masks/a.png")
    assert is_mask_path("train/a_mask.png") and not is_mask_path("train/images/mask_rcnn_input.png")
    assert is_test_path("test_v2/a.jpg") and not is_test_path("train_v2/a.jpg")
    assert is_test_path("data/test/images/a.png") and not is_test_path("contest/a.png")


def test_a_varying_folder_level_becomes_a_field_named_by_its_values():
    files = [f"Tile {t}/images/part_{i}.jpg" for t in (1, 2) for i in (1, 2, 3)]
    found = derive_pattern(files)
    assert found.pattern == "{tile}/images/{name}.jpg"
    assert found.fields["tile"] == ["Tile 1"] * 3 + ["Tile 2"] * 3
    assert found.ids[0] == "Tile_1_part_1"  # as kseg's glob layout joins and cleans fields


def test_files_at_another_depth_are_left_out_and_said():
    found = derive_pattern(["train/a.png", "train/b.png", "train/extra/c.png"])
    assert found.pattern == "train/{name}.png" and found.left_out == ["train/extra/c.png"]


def test_mask_names_pair_with_image_names_through_a_fixed_suffix():
    assert mask_affixes(["car1_01_mask", "car1_02_mask"], {"car1_01", "car1_02"}) == ("", "_mask")
    assert mask_affixes(["gt_a", "gt_b"], {"a", "b"}) == ("gt_", "")
    assert mask_affixes(["x", "y"], {"a", "b"}) is None
    images = derive_pattern(["train/car1_01.jpg", "train/car1_02.jpg"])
    masks = pair_masks(["train_masks/car1_01_mask.gif", "train_masks/car1_02_mask.gif"], images)
    assert masks is not None and masks.pattern == "train_masks/{name}_mask.gif"


def test_the_listing_skips_hidden_folders_and_kseg_outputs(tmp_path):
    for rel in ("a/x.png", ".kseg-cache/y.png", "work/z.png", "t.csv", "classes.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    listing = list_download(tmp_path)
    assert listing.images == ["a/x.png"] and listing.csvs == ["t.csv"] and listing.others == ["classes.json"]


# ----------------------------------------------------------------------------------------------- masks


def _masks(tmp_path: Path, arrays: list[np.ndarray], mode: str | None = None, suffix: str = ".png") -> list[dict]:
    records = []
    for i, array in enumerate(arrays):
        path = tmp_path / f"m{i}{suffix}"
        image = Image.fromarray(array)
        if mode == "P":
            image = Image.fromarray(array, mode="P")
            image.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 255] + [0] * 759)
        image.save(path)
        records.append(mask_stats((str(path),)))
    return records


def _summary(records, listed=(), names=None):
    files = [f"m{i}.png" for i in range(len(records))]
    return summarise_masks(records, files, "masks/{name}.png", list(listed), "classes.json" if listed else None, names)


def test_index_masks_give_classes_0_to_k_and_255_as_unlabelled(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:2] = 1
    a[2:4] = 3
    a[7, 7] = 255
    found = _summary(_masks(tmp_path, [a, np.zeros((8, 8), np.uint8)]))
    assert found.kind == "index" and found.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert found.ignore_value == 255 and found.absent == [2] and found.values["1"] == [16, 1]


def test_masks_of_0_and_255_are_binary_black_and_white(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 255
    found = _summary(_masks(tmp_path, [a, a]))
    assert found.kind == "binary" and found.palette == ["#000000", "#FFFFFF"] and found.values["#FFFFFF"] == [18, 2]


def test_16_bit_masks_of_0_and_65535_are_binary_too(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[:3] = 65535
    records = _masks(tmp_path, [a])
    assert records[0]["mode"].startswith("I")
    assert _summary(records).kind == "binary"


def test_palette_gifs_whose_palettes_agree_are_index_masks_with_display_colours(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:4] = 1
    found = _summary(_masks(tmp_path, [a, a], mode="P", suffix=".gif"))
    assert found.kind == "index" and found.classes == ["class_0", "class_1"]
    assert found.palette == ["#000000", "#FFFFFF"]


def test_grey_levels_that_are_not_indices_become_grey_colours(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:2], a[2:4] = 100, 200
    found = _summary(_masks(tmp_path, [a]))
    assert found.kind == "gray" and found.palette == ["#000000", "#646464", "#C8C8C8"]


def _colour_masks(tmp_path: Path) -> list[dict]:
    a = np.zeros((100, 100, 3), np.uint8)
    a[:, :] = (0x3C, 0x10, 0x98)
    a[:50] = (0x84, 0x29, 0xF6)
    a[90:] = (0x9B, 0x9B, 0x9B)
    a[0, 0] = (0, 0, 0)  # one stray pixel of 20,000
    b = a.copy()
    b[0, 0] = (0x84, 0x29, 0xF6)
    return _masks(tmp_path, [a, b])


def test_colour_masks_take_names_from_a_class_file_and_report_disagreements(tmp_path):
    listed = [("Land", "#8429F6"), ("Water", "#50E3C2"), ("Unlabeled", "#9B9B9B")]
    found = _summary(_colour_masks(tmp_path), listed)
    assert found.kind == "color"
    assert found.palette == ["#8429F6", "#3C1098"] and found.classes == ["Land", "color_3C1098"]
    assert not found.names_sure  # one colour has no name in the file
    assert found.ignore_colors == ["#9B9B9B"] and found.stray == {"#000000": [1, 1]}
    assert found.palette_only == {"Water": "#50E3C2"} and found.masks_only == ["#3C1098"]


def test_classes_given_with_colours_name_and_order_the_palette(tmp_path):
    names = [("building", "#3C1098"), ("land", "#8429F6"), ("unlabeled", "#9B9B9B")]
    found = _summary(_colour_masks(tmp_path), names=names)
    assert found.classes == ["building", "land", "unlabeled"] and found.palette == ["#3C1098", "#8429F6", "#9B9B9B"]
    with pytest.raises(InitError, match="mask colour #8429F6 .* is not in --classes"):
        _summary(_colour_masks(tmp_path), names=[("building", "#3C1098"), ("x", "#9B9B9B")])


def test_colours_that_match_no_colour_of_the_class_file_are_refused(tmp_path):
    with pytest.raises(InitError, match="match none of the colours of classes.json; name the classes with --classes"):
        _summary(_colour_masks(tmp_path), [("Road", "#DE597F"), ("Water", "#50E3C2")])


def test_a_jpeg_of_a_photo_is_no_label_map(tmp_path):
    photo = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    records = _masks(tmp_path, [photo])
    with pytest.raises(InitError, match="so it is no label map"):
        _summary(records)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("classes.json", json.dumps({"classes": [{"title": "Water", "color": "#50E3C2"}]}), [("Water", "#50E3C2")]),
        ("class_dict.csv", "name,r,g,b\nsky,128,128,128\n", [("sky", "#808080")]),
        ("label_colors.txt", "64 128 64\tAnimal\n", [("Animal", "#408040")]),
        ("classes.txt", "road\nsky\n", [("road", None), ("sky", None)]),
    ],
)
def test_class_files_in_the_forms_downloads_ship(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    assert read_palette_file(tmp_path, name) == expected


# ------------------------------------------------------------------------------------------ runs tables


def _names(sizes: dict[str, tuple[int, int]]) -> ImageNames:
    names = ImageNames({f"{k}.jpg": k for k in sizes})
    names.sizes = dict(sizes)
    return names


def _box(shape=(16, 24), top=2, left=3, h=5, w=7) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + h, left : left + w] = True
    return m


def test_a_long_table_with_numbered_classes_gets_a_background_at_0():
    names = _names({"a": (16, 24), "b": (16, 24)})
    table = pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "ClassId": ["1", "3", "1"], "EncodedPixels": [encode(_box())] * 3}
    )
    table.loc[1, "EncodedPixels"] = encode(_box(top=10))
    finding, _ = read_runs_table("train.csv", table, encoded_column(table), names)
    assert (finding.form, finding.id_column, finding.class_column, finding.keyed_by) == (
        "long",
        "ImageId",
        "ClassId",
        "file",
    )
    assert finding.class_key == "index" and finding.written == ["1", "3"]
    assert finding.classes == ["background", "class_1", "class_2", "class_3"] and finding.index_base == 0
    assert not finding.multilabel and not finding.instances


def test_numbers_from_0_put_the_background_last():
    names = _names({"a": (16, 24)})
    table = pd.DataFrame(
        {"ImageId": ["a", "a"], "ClassId": ["0", "1"], "EncodedPixels": [encode(_box()), encode(_box(top=10))]}
    )
    finding, _ = read_runs_table("t.csv", table, "EncodedPixels", names)
    assert finding.keyed_by == "id" and finding.classes == ["class_0", "class_1", "background"]
    assert finding.background == "background"


def test_a_wide_table_with_names_in_the_id_and_overlapping_runs_is_multilabel():
    names = _names({"a": (16, 24), "b": (16, 24)})
    rows = {"a.jpg_Fish": encode(_box()), "a.jpg_Sugar": encode(_box(left=5)), "b.jpg_Fish": "", "b.jpg_Sugar": ""}
    table = pd.DataFrame({"Image_Label": list(rows), "EncodedPixels": list(rows.values())})
    finding, _ = read_runs_table("train.csv", table, "EncodedPixels", names)
    assert (finding.form, finding.separator, finding.class_key) == ("wide", "_", "name")
    assert finding.multilabel and finding.overlap_images == 1 and finding.classes == ["Fish", "Sugar"]
    assert finding.empty_rows == 2


def test_several_rows_of_one_image_and_class_are_instances_and_minus_one_is_the_empty_token():
    names = _names({"a": (16, 24), "b": (16, 24)})
    table = pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "EncodedPixels": [encode(_box()), encode(_box(top=10)), "-1"]}
    )
    finding, _ = read_runs_table("ships.csv", table, "EncodedPixels", names)
    assert finding.instances and finding.max_rows == 2 and finding.empty == "-1"
    assert finding.classes == ["background", "foreground"] and finding.class_column is None


def test_the_first_pixel_number_is_proven_by_runs_at_either_end():
    names = _names({"a": (4, 4)})
    at_zero = pd.DataFrame({"id": ["a"], "rle": ["0 3"]})
    assert read_runs_table("t.csv", at_zero, "rle", names)[0].first_index == 0
    at_end = pd.DataFrame({"id": ["a"], "rle": ["14 3"]})
    finding = read_runs_table("t.csv", at_end, "rle", names)[0]
    assert finding.first_index == 1 and finding.first_sure
    inside = pd.DataFrame({"id": ["a"], "rle": ["5 3"]})
    assert not read_runs_table("t.csv", inside, "rle", names)[0].first_sure


def test_runs_past_every_image_size_and_rows_that_are_not_runs_are_refused():
    names = _names({"a": (4, 4)})
    with pytest.raises(
        InitError, match=r"t.csv line 2: a run ends at pixel 20, past the 4x4 = 16 pixels .* fit no image size"
    ):
        read_runs_table("t.csv", pd.DataFrame({"id": ["a"], "rle": ["15 6"]}), "rle", names)
    with pytest.raises(InitError, match="neither runs nor one empty token"):
        read_runs_table("t.csv", pd.DataFrame({"id": ["a", "a"], "rle": ["n/a", "none"]}), "rle", names)


def test_a_table_that_names_no_image_is_not_a_runs_table_of_these_images():
    names = _names({"a": (4, 4)})
    assert read_runs_table("t.csv", pd.DataFrame({"id": ["zz"], "rle": ["1 2"]}), "rle", names) is None


def test_the_encoded_column_is_found_by_content_or_by_name():
    assert encoded_column(pd.DataFrame({"x": ["a", "b"], "y": ["1 2 5 3", ""]})) == "y"
    assert encoded_column(pd.DataFrame({"ImageID": ["a_0"], "EncodedPixels": [""]})) == "EncodedPixels"
    assert encoded_column(pd.DataFrame({"a": ["x"], "b": ["y"]})) is None


# ---------------------------------------------------------------------------------------------- order


@pytest.mark.parametrize("order", ["column", "row"])
@pytest.mark.parametrize("first", [0, 1])
def test_the_reading_that_matches_the_masks_wins_and_is_proven(order, first):
    shape = (16, 24)
    masks = {"a": _box(shape), "b": _box(shape, top=9, left=14, h=6, w=9)}
    names = _names({k: shape for k in masks})
    runs = []
    for m in masks.values():
        values = np.array(encode(m, order).split(), dtype=np.int64)
        values[0::2] -= 1 - first
        runs.append(" ".join(map(str, values)))
    table = pd.DataFrame({"id": list(masks), "rle": runs})
    finding, parsed = read_runs_table("t.csv", table, "rle", names)
    pixel_order.against_masks(finding, parsed, names, masks.get, "masks/{name}.png")
    assert (finding.order, finding.first_index, finding.verified, finding.mismatch) == (order, first, True, 0)
    assert "matches to the pixel" in finding.order_evidence


def test_a_table_and_masks_that_disagree_are_refused():
    shape = (16, 24)
    names = _names({"a": shape})
    table = pd.DataFrame({"id": ["a"], "rle": [encode(_box(shape))]})
    finding, parsed = read_runs_table("t.csv", table, "rle", names)
    other = _box(shape, top=10, left=15, h=4, w=4)
    with pytest.raises(InitError, match=r"t.csv and the masks \(masks/\{name\}.png\) disagree"):
        pixel_order.against_masks(finding, parsed, names, lambda _: other, "masks/{name}.png")


@pytest.mark.parametrize("order", ["column", "row"])
def test_without_masks_compact_shapes_decide_the_order_of_non_square_images(order):
    rng = np.random.default_rng(0)
    shape = (24, 40)
    masks = {f"i{k}": _box(shape, *rng.integers(0, 12, 2), *rng.integers(4, 10, 2)) for k in range(6)}
    names = _names({k: shape for k in masks})
    table = pd.DataFrame({"id": list(masks), "rle": [encode(m, order) for m in masks.values()]})
    finding, parsed = read_runs_table("t.csv", table, "rle", names)
    pixel_order.from_shapes(finding, parsed, names, lambda _: None)
    assert finding.order == order and finding.order_sure and "compact" in finding.order_evidence


@pytest.mark.parametrize("order", ["column", "row"])
def test_square_images_are_decided_by_image_edges(order):
    rng = np.random.default_rng(1)
    shape = (32, 32)
    masks, images = {}, {}
    for k in range(6):
        m = _box(shape, *rng.integers(0, 16, 2), int(rng.integers(4, 14)), int(rng.integers(4, 14)))
        masks[f"i{k}"] = m
        images[f"i{k}"] = np.where(m, 200.0, 40.0) + rng.normal(0, 5, shape)
    names = _names({k: shape for k in masks})
    table = pd.DataFrame({"id": list(masks), "rle": [encode(m, order) for m in masks.values()]})
    finding, parsed = read_runs_table("t.csv", table, "rle", names)
    pixel_order.from_shapes(finding, parsed, names, images.get)
    assert finding.order == order and finding.order_sure and "image edges" in finding.order_evidence


def test_square_images_without_pictures_leave_the_order_a_guess():
    shape = (20, 20)
    masks = {f"i{k}": _box(shape, k, k, 5, 8) for k in range(4)}
    names = _names({k: shape for k in masks})
    table = pd.DataFrame({"id": list(masks), "rle": [encode(m) for m in masks.values()]})
    finding, parsed = read_runs_table("t.csv", table, "rle", names)
    pixel_order.from_shapes(finding, parsed, names, lambda _: None)
    assert not finding.order_sure and "guess" in finding.order_evidence


# --------------------------------------------------------------------------------------------- sample


def _test_names() -> ImageNames:
    return _names({"t1": (16, 24), "t2": (16, 24)})


@pytest.mark.parametrize(
    ("ids", "classes", "id_format", "submitted"),
    [
        (["t1_0", "t1_1", "t1_2", "t2_0", "t2_1", "t2_2"], ["bg", "a", "b"], "{id}_{k}", None),
        (["t1.jpg_Fish", "t1.jpg_Sugar", "t2.jpg_Fish", "t2.jpg_Sugar"], ["Fish", "Sugar"], "{file}_{name}", None),
        (["t1.jpg", "t2.jpg"], ["background", "ship"], "{file}", ["ship"]),
        (["t1", "t2"], ["background", "salt"], "{id}", ["salt"]),
        (["t1_1", "t1_2", "t2_1", "t2_2"], ["bg", "a", "b"], "{id}_{k}", ["a", "b"]),
    ],
)
def test_the_sample_gives_the_id_format_and_the_classes_that_get_rows(ids, classes, id_format, submitted):
    sample = pd.DataFrame({"Id": ids, "EncodedPixels": "1 1"})
    found = read_sample("sample_submission.csv", sample, _test_names(), classes, None)
    assert (found.layout, found.id_format, found.classes, found.rows_mode) == ("wide", id_format, submitted, "all")
    assert found.images == 2 and found.rows_per_image == len(ids) // 2


def test_a_long_sample_with_fewer_rows_than_classes_leaves_empty_rows_out():
    sample = pd.DataFrame({"ImageId": ["t1.jpg", "t2.jpg"], "EncodedPixels": "1 1", "ClassId": "1"})
    found = read_sample("s.csv", sample, _test_names(), ["background", "c1", "c2", "c3"], None)
    assert (found.layout, found.id_format, found.class_format, found.rows_mode) == ("long", "{file}", "{k}", "nonempty")
    assert found.classes == ["c1", "c2", "c3"]  # every object class: the sample shows one as a placeholder


def test_the_sample_empty_token_and_a_sample_that_names_no_test_image():
    sample = pd.DataFrame({"Id": ["t1", "t2"], "EncodedPixels": ["-1", "-1"]})
    assert read_sample("s.csv", sample, _test_names(), ["bg", "x"], None).empty_token == "-1"
    stray = pd.DataFrame({"Id": ["zz_0", "yy_0"], "EncodedPixels": ""})
    with pytest.raises(InitError, match=r"s.csv names no test image \(first id 'zz_0'; 2 test images found\)"):
        read_sample("s.csv", stray, _test_names(), ["bg", "x"], None)


def test_a_sample_whose_real_runs_end_early_hints_at_smaller_masks():
    names = _names({f"t{i}": (100, 100) for i in range(12)})
    sample = pd.DataFrame(
        {"Id": [f"t{i}" for i in range(12)], "EncodedPixels": [f"{i + 1} {i + 3}" for i in range(12)]}
    )
    assert "smaller masks" in read_sample("s.csv", sample, names, ["bg", "x"], None).size_hint
    placeholder = sample.assign(EncodedPixels="1 1")
    assert read_sample("s.csv", placeholder, names, ["bg", "x"], None).size_hint is None


# --------------------------------------------------------------------------------------------- groups


def test_ids_that_share_a_stem_are_a_group_candidate():
    ids = [f"car{c}_{v:02d}" for c in range(5) for v in range(1, 17)]
    (group,) = stem_groups(ids)
    assert (group.kind, group.key, group.groups, group.largest) == ("stem", "^(.+)_[^_]+$", 5, 16)
    assert stem_groups([f"img_{i:04d}" for i in range(20)]) == []  # one stem for all: no groups
    assert stem_groups([f"{i:08x}" for i in range(20)]) == []


def test_folder_fields_are_group_candidates():
    (group,) = field_groups({"tile": ["T1", "T1", "T2", "T2"], "name": ["a", "b", "a", "b"]})
    assert (group.kind, group.key, group.groups) == ("field", "tile", 2)
