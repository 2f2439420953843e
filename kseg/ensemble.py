"""Fold ensembles: the trained folds' best checkpoints loaded once, and bundles (``kseg export``) that
carry the resolved config, the weights and the tuned post-processing in one file for offline notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kseg import __version__
from kseg.checkpoint import checkpoint_mismatch, load_checkpoint, save_checkpoint
from kseg.config import Config, apply_overrides, build_config
from kseg.errors import InferError
from kseg.models import build_model
from kseg.postprocess import PostProcess
from kseg.postprocess import load as load_postprocess
from kseg.workdir import WorkDir

BUNDLE_FORMAT = "kseg-bundle"
BUNDLE_VERSION = 1


def bare_model(cfg: Config, n_classes: int) -> nn.Module:
    """The config's model with random weights, to be filled from a checkpoint."""
    return build_model(cfg.model.model_copy(update={"encoder_weights": None}), n_classes)[0]


@dataclass
class Ensemble:
    """Models ready to predict, and where they came from."""

    cfg: Config
    models: list[nn.Module]
    folds: list[int]
    weights: list[float] | None
    source: str
    post: PostProcess | None = None  # tuned post-processing, when there is one


def load_ensemble(cfg: Config, folds: list[int] | None = None, weights: list[float] | None = None) -> Ensemble:
    """The best checkpoint of each chosen fold (default: every trained fold), loaded once."""
    work = WorkDir(cfg.workdir)
    available = work.trained_folds()
    if not available:
        raise InferError(
            f"no trained folds in {cfg.workdir} (no fold*/best.pt); run 'kseg train --fold 0' or --fold all first"
        )
    chosen = available if folds is None else folds
    missing = [f for f in chosen if f not in available]
    if missing:
        raise InferError(
            f"fold {missing[0]} has no {work.best(missing[0])} (trained folds: "
            f"{', '.join(map(str, available))}); train it or leave it out of --folds"
        )
    if weights is not None and len(weights) != len(chosen):
        raise InferError(f"{len(weights)} fold weights for {len(chosen)} folds; give one weight per fold")
    models = []
    for f in chosen:
        path = work.best(f)
        saved = load_checkpoint(path)
        mismatch = checkpoint_mismatch(saved, cfg)
        if mismatch:
            raise InferError(f"{path} {mismatch}; predict with the config it was trained with")
        model = bare_model(cfg, cfg.n_classes)
        model.load_state_dict(saved["model"])
        models.append(model.eval())
    return Ensemble(
        cfg, models, chosen, weights, f"folds {', '.join(map(str, chosen))} of {cfg.workdir}", load_postprocess(cfg)
    )


def export_bundle(cfg: Config, out: Path, folds: list[int] | None = None, half: bool = False) -> Path:
    """Pack the resolved config and the chosen folds' best weights into one file (``.kseg``)."""
    ensemble = load_ensemble(cfg, folds)
    dtype = torch.float16 if half else None
    states = []
    for model in ensemble.models:
        state = model.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        states.append(state)
    bundle = {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "kseg_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "folds": ensemble.folds,
        "state_dicts": states,
        "postprocess": ensemble.post.to_json() if ensemble.post is not None else None,
    }
    save_checkpoint(out, bundle)
    return out


def load_bundle(path: Path, overrides: list[str] | None = None) -> Ensemble:
    """An ensemble from a ``kseg export`` bundle: needs nothing but the file."""
    path = Path(path)
    if not path.is_file():
        raise InferError(f"bundle {path} does not exist; make one with 'kseg export -c CFG --out {path.name}'")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InferError(f"{path} is not a kseg bundle ({type(exc).__name__}); make one with 'kseg export'") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise InferError(f"{path} is not a kseg bundle; make one with 'kseg export'")
    if bundle.get("bundle_version") != BUNDLE_VERSION:
        raise InferError(
            f"{path} is a bundle of format {bundle.get('bundle_version')} (kseg {bundle.get('kseg_version')}) but this "
            f"kseg {__version__} reads format {BUNDLE_VERSION}; export it again with this kseg"
        )
    tree = apply_overrides(bundle["config"], list(overrides or []))
    cfg = build_config(tree, Path.cwd(), source=str(path), overrides=overrides)
    models = []
    for state in bundle["state_dicts"]:
        model = bare_model(cfg, cfg.n_classes)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(model.eval())
    post = PostProcess.from_json(bundle["postprocess"], str(path)) if bundle.get("postprocess") else None
    return Ensemble(cfg, models, list(bundle["folds"]), None, f"bundle {path} (folds {bundle['folds']})", post)
