"""kseg audit: planted duplicates, unreadable files, size mismatches, classes; split by duplicate groups."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import dubai_config
from PIL import Image

from kseg.cli import app
from kseg.config import load_config
from kseg.data.audit import run_audit
from kseg.data.groups import connected_groups, hamming_pairs, merge_groups
from kseg.data.split import make_folds
from kseg.errors import AuditError
from kseg.synth.aerial import make_competition


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A 20-train / 6-test competition at 128x160 with planted near-copies and broken files."""
    root = tmp_path_factory.mktemp("audit") / "comp"
    make_competition(root, n_train=20, n_test=6, height=128, width=160, n_classes=6, seed=3)
    images, masks = root / "images", root / "masks"

    def add(csv: str, image_id: str) -> None:
        table = pd.read_csv(root / csv, dtype=str)
        pd.concat([table, pd.DataFrame({"ImageID": [image_id]})]).to_csv(root / csv, index=False)

    # within train: a resized copy (with its mask, resized the same way)
    src = Image.open(images / "img_0000.png")
    src.resize((120, 96), Image.BILINEAR).save(images / "copy_resized.png")
    Image.open(masks / "img_0000.png").resize((120, 96), Image.NEAREST).save(masks / "copy_resized.png")
    add("train.csv", "copy_resized")
    # across train/test: a JPEG re-encoded copy and a slightly cropped (3% each side) copy
    buffer = io.BytesIO()
    Image.open(images / "img_0001.png").convert("RGB").save(buffer, "JPEG", quality=35)
    Image.open(buffer).save(images / "test_reencoded.png")
    add("test.csv", "test_reencoded")
    crop = Image.open(images / "img_0002.png").crop((5, 4, 155, 124)).resize((160, 128), Image.BILINEAR)
    crop.save(images / "test_cropped.png")
    add("test.csv", "test_cropped")
    # an unreadable test image and a training mask of the wrong size
    (images / "test_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    add("test.csv", "test_broken")
    for image_id, source in (("test_reencoded", "img_0001"), ("test_cropped", "img_0002"), ("test_broken", "img_0003")):
        (root / "test_masks" / f"{image_id}.png").write_bytes((masks / f"{source}.png").read_bytes())
    Image.open(masks / "img_0005.png").resize((80, 64), Image.NEAREST).save(masks / "img_0005.png")
    return root


def _cfg(root: Path, *extra: str):
    return load_config(root / "kseg.yaml", ["split.workers=1", *extra])


@pytest.fixture(scope="module")
def audited(planted):
    return run_audit(_cfg(planted))


def test_planted_duplicates_are_found_and_nothing_else(audited):
    groups = {frozenset(m["ImageID"]) for _, m in audited.groups.groupby("group")}
    assert groups == {
        frozenset({"img_0000", "copy_resized"}),
        frozenset({"img_0001", "test_reencoded"}),
        frozenset({"img_0002", "test_cropped"}),
    }
    kinds = audited.groups.groupby("group")["kind"].first().value_counts().to_dict()
    assert kinds == {"train+test": 2, "train": 1}
    assert audited.n_cross == 2
    # leakage groups come first in the numbering
    assert audited.groups.loc[audited.groups["group"] <= 2, "kind"].eq("train+test").all()


def test_broken_files_and_mask_mismatch_are_listed(audited):
    assert audited.unreadable["ImageID"].tolist() == ["test_broken"]
    assert "cannot be read" in audited.unreadable["error"].iloc[0]
    assert audited.mask_problems["ImageID"].tolist() == ["img_0005"]
    assert "is 64x80 but image" in audited.mask_problems["problem"].iloc[0]


def test_class_table_matches_the_masks(audited, planted):
    cfg = _cfg(planted)
    counts = np.zeros(6, np.int64)
    images = np.zeros(6, np.int64)
    for image_id in pd.read_csv(planted / "train.csv", dtype=str)["ImageID"]:
        if image_id == "img_0005":  # the mismatched mask is a problem, not counted
            continue
        labels = np.asarray(Image.open(planted / "masks" / f"{image_id}.png"))
        c = np.bincount(labels.ravel(), minlength=6)[:6]
        counts += c
        images += c > 0
    assert audited.classes["images"].tolist() == images.tolist()
    np.testing.assert_allclose(audited.classes["pixel_share"], counts / counts.sum())
    assert list(audited.classes["class"]) == cfg.data.classes


def test_report_files(audited):
    out = audited.report.parent
    for name in ("audit.md", "images.csv", "duplicates.csv", "classes.csv", "classes.png", "sizes.png"):
        assert (out / name).is_file(), name
    sheets = sorted((out / "groups").glob("group_*.png"))
    assert len(sheets) == 3
    assert Image.open(sheets[0]).width > 2 * 128  # two thumbnails side by side
    text = audited.report.read_text()
    assert "duplicate / near-duplicate groups: **3** (2 across train and test" in text
    assert "![group 1](groups/group_001.png)" in text
    assert "test_broken" in text and "img_0005" in text
    assert not list(out.parent.glob(".audit.*"))  # no temporary folder left behind


def test_rare_class_is_flagged(planted, tmp_path):
    result = run_audit(_cfg(planted, "audit.rare_images=100"), out=tmp_path / "a")
    assert result.classes["rare"].all()
    result = run_audit(_cfg(planted, "audit.rare_images=0", "audit.rare_share=0"), out=tmp_path / "b")
    assert not result.classes["rare"].any()


def test_threshold_below_a_copys_distance_drops_it(planted, audited, tmp_path):
    distance = int(audited.groups.set_index("ImageID").loc["test_cropped", "distance"])
    assert 0 < distance <= 10  # cropping moves the hash a little, far less than distinct scenes (about 20+)
    result = run_audit(_cfg(planted, f"audit.threshold={distance - 1}"), out=tmp_path / "a")
    assert "test_cropped" not in set(result.groups["ImageID"]) and result.n_groups == 2


def test_hamming_pairs_and_groups():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    hashes[3] = hashes[0]
    hashes[4] = hashes[0] ^ np.array([1, 0, 0, 0, 0, 0, 0, 3], np.uint8)  # 3 bits off
    pairs = hamming_pairs(hashes, 3, block=2)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 3), (0, 4), (3, 4)]
    labels = connected_groups(7, pairs)
    assert labels[0] == labels[3] == labels[4] >= 0 and (labels[[1, 2, 5, 6]] == -1).all()


def test_merge_groups_unions_tiles_and_duplicates():
    ids = pd.Series(["a", "b", "c", "d", "e"])
    dup = pd.DataFrame({"ImageID": ["b", "d"], "group": [1, 1]})
    merged = merge_groups(ids, np.array(["t1", "t1", "t2", "t3", "t3"]), dup)
    assert merged[0] == merged[1] == merged[3] == merged[4] and merged[2] != merged[0]
    alone = merge_groups(ids, None, dup)
    assert alone[1] == alone[3] and len(set(alone)) == 4


def test_split_keeps_duplicate_groups_in_one_fold(planted, audited, tmp_path):
    # the mismatched mask would stop the split: give img_0005 back a mask of its size for this test
    work = tmp_path / "comp"
    shutil.copytree(planted, work, ignore=shutil.ignore_patterns("work"))
    Image.open(work / "masks" / "img_0005.png").resize((160, 128), Image.NEAREST).save(work / "masks" / "img_0005.png")
    cfg = _cfg(work, "split.duplicates=true", "split.n_folds=3")
    with pytest.raises(AuditError, match="run 'kseg audit' first"):
        make_folds(cfg)
    run_audit(cfg)
    folds = make_folds(cfg).folds.set_index("ImageID")["fold"]
    assert folds["img_0000"] == folds["copy_resized"]
    assert folds.notna().all() and len(folds) == 21


def test_cli_audit(planted, runner, tmp_path):
    result = runner.invoke(app, ["audit", "-c", str(planted / "kseg.yaml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "duplicate groups" in result.output and "unreadable images" in result.output
    result = runner.invoke(app, ["audit", "-c", str(planted / "kseg.yaml"), "--out", str(tmp_path / "r"), "--json"])
    summary = json.loads(result.output)
    assert summary["groups"] == 3 and summary["cross_groups"] == 2 and summary["unreadable"] == 1


def test_cli_audit_bad_root(planted, runner, tmp_path):
    result = runner.invoke(app, ["audit", "-c", str(planted / "kseg.yaml"), "--set", f"data.root={tmp_path}/nope"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_real_dubai_audit(dubai, tmp_path):
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "dubai-aerial.yaml",
        [f"data.root={dubai}", f"workdir={tmp_path}", "data.exclude=[]"],
    )
    result = run_audit(cfg)
    assert set(result.unknown) == {"#000000"}  # the stray black pixels, counted
    assert result.unknown["#000000"][0] == 5547
    assert result.ignored_share > 0  # the Unlabeled colour
    assert len(result.images) == 63 and not len(result.unreadable) and not len(result.mask_problems)
    assert "#000000" in result.report.read_text()


def test_real_dubai_audit_with_the_downloads_classes_json(dubai, tmp_path):
    """With the palette of the download's classes.json, the audit lists the masks' real colours, not fatal."""
    cfg = dubai_config(dubai, tmp_path, "data.exclude=[]", classes_json=True)
    result = run_audit(cfg)
    assert {"#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929"} <= set(result.unknown)  # only Unlabeled matches
    assert result.unknown["#8429F6"][1] == 63  # land is in every mask and in no colour of classes.json
    assert not len(result.mask_problems)
