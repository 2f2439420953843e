from pathlib import Path

import pytest
import yaml

from kseg.cli import app
from kseg.config import load_config, parse_color, save_resolved
from kseg.errors import ConfigError


def test_loads_synth_config_and_resolves_paths_against_its_folder(comp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # somewhere else: paths must still point into the competition
    cfg = load_config(comp / "kseg.yaml")
    assert cfg.data.root == comp.resolve()
    assert cfg.workdir == (comp / "work").resolve()
    assert cfg.submission.path == (comp / "submissions" / "submission.csv").resolve()
    assert cfg.n_classes == 6
    assert cfg.data.image_size == (64, 96)


def test_paths_given_with_set_are_relative_to_the_current_folder(comp, tmp_path, monkeypatch):
    # the README's second run: kseg train -c configs/x.yaml --set workdir=runs/fpn, then kseg blend runs/fpn
    monkeypatch.chdir(tmp_path)
    sets = ["workdir=runs/fpn", "submission.path=out/sub.csv", "submission.predictions=preds", "data.root=."]
    cfg = load_config(comp / "kseg.yaml", [*sets, "model.encoder_weights=w/enc.pth"])
    assert cfg.workdir == tmp_path / "runs" / "fpn"
    assert cfg.submission.path == tmp_path / "out" / "sub.csv"
    assert cfg.submission.predictions == tmp_path / "preds"
    assert cfg.data.root == tmp_path
    assert cfg.model.encoder_weights == str(tmp_path / "w" / "enc.pth")
    # absolute paths, weights names and packages are kept as they are; the file's own paths still follow the file
    kept = load_config(comp / "kseg.yaml", [f"workdir={comp / 'w2'}", "model.encoder_weights=pip:some-package"])
    assert kept.workdir == comp / "w2" and kept.model.encoder_weights == "pip:some-package"
    assert load_config(comp / "kseg.yaml", ["model.encoder_weights=imagenet"]).model.encoder_weights == "imagenet"
    assert load_config(comp / "kseg.yaml", ["split.n_folds=3"]).workdir == (comp / "work").resolve()


def test_finds_kseg_yaml_in_current_folder(comp, monkeypatch):
    monkeypatch.chdir(comp)
    assert load_config(None).data.root == comp.resolve()


def test_missing_default_config_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config given and no kseg.yaml"):
        load_config(None)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_values_as_yaml(comp):
    cfg = load_config(
        comp / "kseg.yaml",
        [
            "data.image_size=[32,64]",
            "model.encoder_weights=null",
            "split.n_folds=4",
            "infer.tta=flip",
            "model.encoder_name=resnet34",
        ],
    )
    assert cfg.data.image_size == (32, 64)
    assert cfg.model.encoder_weights is None
    assert cfg.split.n_folds == 4
    assert cfg.infer.tta == "flip"
    assert cfg.model.encoder_name == "resnet34"


def test_override_that_is_not_yaml_is_taken_as_text(comp):
    assert load_config(comp / "kseg.yaml", ["submission.id_format={id}_{k}"]).submission.id_format == "{id}_{k}"


def test_numeric_empty_token_is_text(comp):
    assert load_config(comp / "kseg.yaml", ["submission.empty_token=-1"]).submission.empty_token == "-1"


def test_square_size_from_a_single_int(comp):
    assert load_config(comp / "kseg.yaml", ["data.image_size=64"]).data.image_size == (64, 64)


def test_every_required_key_exists(comp):
    cfg = load_config(comp / "kseg.yaml")
    for dotted in [
        "workdir",
        "data.root",
        "data.image_size",
        "model.arch",
        "model.encoder_name",
        "model.encoder_weights",
        "train.epochs",
        "train.batch_size",
        "split.n_folds",
        "split.seed",
        "infer.tta",
    ]:
        node = cfg
        for part in dotted.split("."):
            node = getattr(node, part)


def test_unknown_key_in_file_is_named_with_a_suggestion(comp):
    text = (comp / "kseg.yaml").read_text().replace("  root: .", "  rot: .")
    (comp / "kseg.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(comp / "kseg.yaml")
    message = str(info.value)
    assert "unknown config key 'data.rot'" in message
    assert "did you mean 'data.root'" in message
    assert "kseg.yaml" in message


def test_unknown_key_in_override_points_at_the_override(comp):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch' in --set train.epoch=3"):
        load_config(comp / "kseg.yaml", ["train.epoch=3"])


def test_unknown_section(comp):
    with pytest.raises(ConfigError, match="unknown config key 'trian'.*did you mean 'train'"):
        load_config(comp / "kseg.yaml", ["trian.epochs=3"])


@pytest.mark.parametrize("item", ["data.image_size", "=3", "data..root=x", "1abc=2"])
def test_malformed_override(comp, item):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(comp / "kseg.yaml", [item])


def test_override_into_a_value_is_refused(comp):
    with pytest.raises(ConfigError, match="'workdir' is a value, not a section"):
        load_config(comp / "kseg.yaml", ["workdir.x=1"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("split.n_folds=1", "split.n_folds"),
        ("data.image_size=[0,64]", "positive"),
        ("infer.tta=d8", "infer.tta"),
        ("data.ignore_index=3", "ignore_index 3 is a class index"),
        ("data.palette=['#000000']", "palette has 1 entries but classes has 6"),
        ("data.mask_format=color", "needs a palette"),  # palette removed below
        ("submission.id_format='{id}'", "has no class field, which only works when one class gets rows"),
        ("submission.id_format='{id}_{klass}'", "has the field {klass}; the fields are {id}"),
        ("submission.id_format={id}", r"an unquoted \{...\}.*quote the value"),
        ("model.encoder_weights=pip:", r"'pip:' ends in a colon or holds ': '\): quote the value"),
    ],
)
def test_invalid_values_are_explained(comp, override, fragment):
    overrides = [override] + (["data.palette=null"] if "mask_format" in override else [])
    with pytest.raises(ConfigError, match=fragment):
        load_config(comp / "kseg.yaml", overrides)


def test_a_section_error_names_the_set_it_comes_from_not_the_last_one(comp):
    """A check of a whole section (palette against classes) names the --set whose key the message names."""
    with pytest.raises(ConfigError) as caught:
        load_config(comp / "kseg.yaml", ["data.classes=[a,b,c]", "data.image_size=[64,64]", "train.epochs=2"])
    text = str(caught.value)
    assert "with --set data.classes=[a,b,c]:" in text and "image_size" not in text and "epochs" not in text
    with pytest.raises(ConfigError, match=r"in --set train.lr=.inf: Input should be a finite number"):
        load_config(comp / "kseg.yaml", ["train.lr=.inf", "train.epochs=2"])


def test_invalid_yaml_names_the_line(comp):
    (comp / "kseg.yaml").write_text("workdir: work\ndata:\n  root: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_config(comp / "kseg.yaml")


def test_top_level_must_be_a_mapping(comp):
    (comp / "kseg.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(comp / "kseg.yaml")


def test_missing_classes(comp):
    tree = yaml.safe_load((comp / "kseg.yaml").read_text())
    del tree["data"]["classes"]
    del tree["data"]["palette"]
    (comp / "kseg.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="'data.classes' is missing"):
        load_config(comp / "kseg.yaml")


@pytest.mark.parametrize(
    ("given", "expected"), [("#50e3c2", "#50E3C2"), ("50E3C2", "#50E3C2"), ([80, 227, 194], "#50E3C2")]
)
def test_colours(given, expected):
    assert parse_color(given) == expected


@pytest.mark.parametrize("bad", ["#12345", "red", [1, 2], [0, 0, 256]])
def test_bad_colours(bad):
    with pytest.raises(ValueError):
        parse_color(bad)


def test_duplicate_colour_across_classes(comp):
    with pytest.raises(ConfigError, match="given to classes"):
        load_config(comp / "kseg.yaml", ["data.palette=['#000000','#000000','#010101','#020202','#030303','#040404']"])


def test_resolved_config_round_trips(comp, tmp_path):
    cfg = load_config(comp / "kseg.yaml", ["train.epochs=7"])
    path = save_resolved(cfg, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.train.epochs == 7


def test_cli_config_error_is_one_line_without_traceback(runner, comp, monkeypatch):
    monkeypatch.chdir(comp)
    result = runner.invoke(app, ["config", "--set", "data.nope=1"])
    assert result.exit_code == 1
    assert "unknown config key 'data.nope'" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_config_prints_resolved_yaml(runner, comp):
    result = runner.invoke(app, ["config", "-c", str(comp / "kseg.yaml"), "--set", "train.batch_size=3"])
    assert result.exit_code == 0, result.output
    tree = yaml.safe_load(result.output)
    assert tree["train"]["batch_size"] == 3
    assert Path(tree["data"]["root"]).is_absolute()


def test_a_bare_off_for_amp_means_off(comp, tmp_path):
    # YAML 1.1 reads `off` as false: `--set runtime.amp=off` and `amp: off` in a file must still mean "off"
    assert load_config(comp / "kseg.yaml", ["runtime.amp=off"]).runtime.amp == "off"
    text = (comp / "kseg.yaml").read_text().replace("runtime:\n", "runtime:\n  amp: off\n")
    (comp / "kseg.yaml").write_text(text)
    assert "amp: off" in text and load_config(comp / "kseg.yaml").runtime.amp == "off"
    with pytest.raises(ConfigError, match="runtime.amp"):
        load_config(comp / "kseg.yaml", ["runtime.amp=true"])
