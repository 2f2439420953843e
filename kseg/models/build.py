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
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kseg.config import ModelConfig
from kseg.errors import ModelError
from kseg.models.weights import LoadReport, load_encoder, read_state_dict, weights_path
from kseg.schema import is_weights_file

HEADS = ("segmentation_head.", "classification_head.")  # re-initialised when a whole model's file does not fit


@dataclass
class WeightsSource:
    """Where a model's weights came from: one line for the user, and what loading a file found."""

    line: str
    report: LoadReport | None = None

    def __str__(self) -> str:
        return self.line


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


def presence_params(cfg: ModelConfig, arch: type, n_classes: int) -> dict[str, Any]:
    """smp's ``aux_params`` of ``model.presence_head`` (a classification head on the pooled deepest encoder
    features, one logit per class), or none without it.

    Raises:
        ModelError: The architecture takes no ``aux_params`` (an smp older or newer than kseg knows).
    """
    if not cfg.presence_head:
        return {}
    if "aux_params" not in inspect.signature(arch).parameters:
        raise ModelError(
            f"model.presence_head: smp.{arch.__name__} builds no classification head (it takes no aux_params); "
            "choose another model.arch (Unet, FPN, DeepLabV3Plus, ...) or set model.presence_head: false"
        )
    if "aux_params" in cfg.params:
        raise ModelError(
            "model.params sets aux_params and model.presence_head adds them too; keep model.presence_head: true "
            "and remove aux_params from model.params"
        )
    return {"aux_params": {"classes": n_classes, "pooling": cfg.presence_pooling, "dropout": 0.2}}


def _create(cfg: ModelConfig, n_classes: int, weights: str | None, in_channels: int) -> nn.Module:
    arch = check_names(cfg)
    head = presence_params(cfg, arch, n_classes)
    try:
        return arch(
            encoder_name=cfg.encoder_name,
            encoder_weights=weights,
            in_channels=in_channels,
            classes=n_classes,
            **head,
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


def _best_prefix(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-key ``state`` to match ``target`` (adding or removing ``encoder.`` / ``model.`` prefixes)."""
    candidates = [state]
    for prefix in ("encoder.", "model.", "backbone."):
        candidates.append({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        candidates.append({prefix + k: v for k, v in state.items()})
    return max(candidates, key=lambda c: sum(k in target for k in c))


def load_local_weights(model_cfg: ModelConfig, n_classes: int, path: Path) -> tuple[nn.Module, WeightsSource]:
    """Build the model and fill it from a local weights file: a whole model's (a kseg or smp checkpoint)
    or an encoder's (a classifier's, see ``kseg.models.weights``).

    Returns:
        ``(model, where its weights came from)``.
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
        head_only = bad and all(k.startswith(HEADS) for k in bad)
        if bad and not head_only:
            raise ModelError(
                f"model weights {path} do not fit {model_cfg.arch}/{model_cfg.encoder_name}: {len(bad)} tensor(s) "
                f"have other shapes (e.g. {bad[0]} is {tuple(full[bad[0]].shape)}, expected "
                f"{tuple(whole[bad[0]].shape)}); check model.arch, model.encoder_name and model.in_channels"
            )
        missing = [k for k in whole if k not in full and not k.endswith("num_batches_tracked")]
        if missing and all(k.startswith(HEADS) for k in missing):  # a presence head the file lacks: left new
            head_only = True
        elif missing and not head_only:
            raise ModelError(
                f"model weights {path} lack {len(missing)} tensor(s) of {model_cfg.arch}/{model_cfg.encoder_name} "
                f"(e.g. {missing[0]}); check model.arch and model.encoder_name"
            )
        keep = {k: v for k, v in full.items() if k in whole and k not in bad}
        model.load_state_dict(keep, strict=False)
        note = " (heads the file lacks or shapes differently re-initialised)" if head_only else ""
        return model, WeightsSource(f"whole model from {path}{note}")
    encoder: Any = model.encoder  # smp's encoder module (untyped)
    report = load_encoder(encoder, model_cfg.encoder_name, path, state)
    if model_cfg.in_channels != 3:
        encoder.set_in_channels(model_cfg.in_channels, pretrained=True)
    return model, WeightsSource(f"encoder weights: {report.line()}", report)


def build_model(model_cfg: ModelConfig, n_classes: int) -> tuple[nn.Module, WeightsSource]:
    """The smp model of the config, with its encoder weights.

    Returns:
        ``(model, where its weights came from)``; ``str()`` of the second is one line for the user.
    """
    weights = model_cfg.encoder_weights
    if weights is not None and is_weights_file(weights):
        return load_local_weights(model_cfg, n_classes, weights_path(weights))
    model = _create(model_cfg, n_classes, weights, model_cfg.in_channels)
    source = f"{weights} encoder weights" if weights else "random initialisation (encoder_weights: null)"
    return model, WeightsSource(source)
