"""Build the segmentation-models-pytorch model from config; load local / offline weights.

``model.encoder_weights`` is one of:

- a weights name smp knows (``imagenet``, ...): downloaded once from the Hugging Face hub;
- ``null``: random initialisation;
- a local file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``): the Kaggle "internet off" case. It may
  hold encoder weights only (e.g. torchvision's ``resnet50-0676ba61.pth``, or timm's) or a whole model's
  (e.g. a kseg checkpoint, from which the ``model`` entry is taken).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kseg.config import ModelConfig
from kseg.errors import ModelError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def architectures() -> dict[str, type]:
    """smp's architectures by lower-case name."""
    import segmentation_models_pytorch as smp

    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def _close(name: str, options: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name.lower(), [o.lower() for o in options], n=n, cutoff=0.4)
    return f"did you mean {', '.join(close)}?" if close else ""


def check_names(cfg: ModelConfig) -> type:
    """The smp architecture class, after checking the architecture and encoder names."""
    archs = architectures()
    arch = archs.get(cfg.arch.lower())
    if arch is None:
        names = [a.__name__ for a in archs.values()]
        hint = _close(cfg.arch, names)
        raise ModelError(
            f"model.arch {cfg.arch!r} is not an smp architecture ({hint + ' ' if hint else ''}"
            f"choices: {', '.join(names)}); fix model.arch"
        )
    import segmentation_models_pytorch as smp

    encoders = smp.encoders.get_encoder_names()
    name = cfg.encoder_name
    if name.startswith("tu-"):
        import timm

        if not timm.is_model(name[3:].split(".")[0]):
            hint = _close(name[3:], timm.list_models())
            raise ModelError(
                f"model.encoder_name {name!r}: timm has no model {name[3:]!r}"
                f"{' (' + hint + ')' if hint else ''}; fix model.encoder_name"
            )
    elif name not in encoders:
        hint = _close(name, encoders)
        raise ModelError(
            f"model.encoder_name {name!r} is not an smp encoder{' (' + hint + ')' if hint else ''}; fix it, "
            "or use any timm model as 'tu-<name>'"
        )
    return arch


def is_weights_file(value: str | None) -> bool:
    """Whether ``model.encoder_weights`` names a local file rather than a hub weights name."""
    return value is not None and (value.lower().endswith(WEIGHT_SUFFIXES) or "/" in value or "\\" in value)


def _create(cfg: ModelConfig, n_classes: int, weights: str | None, in_channels: int) -> nn.Module:
    arch = check_names(cfg)
    try:
        return arch(
            encoder_name=cfg.encoder_name,
            encoder_weights=weights,
            in_channels=in_channels,
            classes=n_classes,
            **cfg.params,
        )
    except KeyError as exc:
        raise ModelError(
            f"{str(exc).strip(chr(34) + chr(39))}; fix model.encoder_weights or model.encoder_name"
        ) from None
    except TypeError as exc:
        raise ModelError(
            f"model.params {cfg.params} do not fit smp.{arch.__name__} ({exc}); fix model.params"
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:
        if weights is None:
            raise ModelError(f"smp.{arch.__name__} with encoder {cfg.encoder_name!r} cannot be built ({exc})") from None
        raise ModelError(
            f"could not download {weights!r} weights for encoder {cfg.encoder_name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else 'no details'}); without internet, download them "
            "once and set model.encoder_weights to the local .pth/.safetensors file, or null to train from scratch"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, unwrapped from checkpoint containers and DDP/compile prefixes."""
    if not path.is_file():
        raise ModelError(f"model.encoder_weights file {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelError(
            f"model.encoder_weights file {path} cannot be read as weights ({type(exc).__name__}); "
            "give a .pth/.pt state dict or a .safetensors file"
        ) from None
    for key in ("model", "state_dict", "model_state", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.encoder_weights file {path} holds no state dict of tensors; give a weights file")
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _best_prefix(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-key ``state`` to match ``target`` (adding or removing ``encoder.`` / ``model.`` prefixes)."""
    candidates = [state]
    for prefix in ("encoder.", "model.", "backbone."):
        candidates.append({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        candidates.append({prefix + k: v for k, v in state.items()})
    return max(candidates, key=lambda c: sum(k in target for k in c))


def load_local_weights(model_cfg: ModelConfig, n_classes: int, path: Path) -> tuple[nn.Module, str]:
    """Build the model and fill it from a local weights file.

    Returns:
        ``(model, what was loaded)``.
    """
    state = read_state_dict(path)
    model = _create(model_cfg, n_classes, None, 3)
    full = _best_prefix(state, model.state_dict())
    whole = model.state_dict()
    if sum(k in whole for k in full) >= 0.9 * len(whole):
        if model_cfg.in_channels != 3:
            model = _create(model_cfg, n_classes, None, model_cfg.in_channels)
            whole = model.state_dict()
        bad = [k for k in whole if k in full and full[k].shape != whole[k].shape]
        head_only = bad and all(k.startswith("segmentation_head.") for k in bad)
        if bad and not head_only:
            raise ModelError(
                f"model weights {path} do not fit {model_cfg.arch}/{model_cfg.encoder_name}: {len(bad)} tensor(s) "
                f"have other shapes (e.g. {bad[0]} is {tuple(full[bad[0]].shape)}, expected "
                f"{tuple(whole[bad[0]].shape)}); check model.arch, model.encoder_name and model.in_channels"
            )
        missing = [k for k in whole if k not in full and not k.endswith("num_batches_tracked")]
        if missing and not head_only:
            raise ModelError(
                f"model weights {path} lack {len(missing)} tensor(s) of {model_cfg.arch}/{model_cfg.encoder_name} "
                f"(e.g. {missing[0]}); check model.arch and model.encoder_name"
            )
        keep = {k: v for k, v in full.items() if k in whole and k not in bad}
        model.load_state_dict(keep, strict=False)
        note = " (segmentation head re-initialised: other class count)" if head_only else ""
        return model, f"whole model from {path}{note}"
    encoder: Any = model.encoder  # smp's encoder module (untyped)
    encoder_state = encoder.state_dict()
    enc = _best_prefix(state, encoder_state)
    missing = [k for k in encoder_state if k not in enc and not k.endswith("num_batches_tracked")]
    bad = [k for k in encoder_state if k in enc and enc[k].shape != encoder_state[k].shape]
    # Tensors the encoder has no place for, other than a classifier head, mean another encoder's file.
    heads = ("fc.", "classifier.", "head.", "last_linear.", "model.fc.", "model.classifier.", "model.head.")
    extra = [
        k for k in enc if k not in encoder_state and not k.startswith(heads) and not k.endswith("num_batches_tracked")
    ]
    if missing or bad or extra:
        example = (missing or bad or extra)[0]
        raise ModelError(
            f"weights {path} do not fit encoder {model_cfg.encoder_name!r}: of its {len(encoder_state)} tensors "
            f"{len(missing)} are missing and {len(bad)} have other shapes, and the file has {len(extra)} the encoder "
            f"lacks (e.g. {example}); use weights made for {model_cfg.encoder_name} or change model.encoder_name"
        )
    encoder.load_state_dict({k: v for k, v in enc.items() if k in encoder_state}, strict=False)
    if model_cfg.in_channels != 3:
        encoder.set_in_channels(model_cfg.in_channels, pretrained=True)
    return model, f"encoder weights from {path}"


def build_model(model_cfg: ModelConfig, n_classes: int) -> tuple[nn.Module, str]:
    """The smp model of the config, with its encoder weights.

    Returns:
        ``(model, a line saying where its weights came from)``.
    """
    weights = model_cfg.encoder_weights
    if weights is not None and is_weights_file(weights):
        return load_local_weights(model_cfg, n_classes, Path(weights))
    model = _create(model_cfg, n_classes, weights, model_cfg.in_channels)
    source = f"{weights} encoder weights" if weights else "random initialisation (encoder_weights: null)"
    return model, source
