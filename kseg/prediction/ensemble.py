"""Fold ensembles: the trained folds' best checkpoints loaded once, and bundles (``kseg export``) that
carry the resolved config, the weights and the tuned post-processing in one file for offline notebooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kseg import __version__
from kseg.config import Config, InferConfig, ModelConfig, RuntimeConfig, apply_overrides, build_config, load_config
from kseg.errors import InferError
from kseg.io import remove_stale
from kseg.models.build import build_model
from kseg.models.checkpoint import checkpoint_mismatch, load_checkpoint, save_checkpoint
from kseg.postprocess import PostProcess
from kseg.postprocess import load as load_postprocess
from kseg.workspace.folds import require_finished
from kseg.workspace.pins import check_pins
from kseg.workspace.workdir import WorkDir

BUNDLE_FORMAT = "kseg-bundle"
BUNDLE_VERSION = 2  # 2: runs as members (a blend); 1 is still read


def bare_model(model: ModelConfig, n_classes: int) -> nn.Module:
    """The ``model`` section's model with random weights, to be filled from a checkpoint."""
    return build_model(model.model_copy(update={"encoder_weights": None}), n_classes)[0]


@dataclass
class Ensemble:
    """Models ready to predict, and where they came from. A blend (``kseg blend``) is an ensemble of
    ensembles: ``members`` holds each run's ensemble (its own config) and its weight."""

    cfg: Config
    models: list[nn.Module]
    folds: list[int]
    weights: list[float] | None
    source: str
    post: PostProcess | None = None  # tuned post-processing, when there is one
    members: list[tuple[Ensemble, float]] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # unfinished folds used knowingly (--partial): "<run> fold N"


def run_config(path: Path) -> Config:
    """The resolved config a run's folds were trained with (``fold<N>/config.yaml``)."""
    work = WorkDir(path)
    trained = work.folds_with("config.yaml")
    if not trained:
        raise InferError(f"{path} holds no trained fold (no fold*/config.yaml); give a work folder of 'kseg train'")
    return load_config(work.fold_config(trained[0]))


def member_config(run: Config, infer: InferConfig, runtime: RuntimeConfig) -> Config:
    """A blended run's own config (model, data sizes, normalisation) under the current config's inference
    and runtime settings (TTA, mode, batch, device)."""
    chosen = infer.model_copy(update={"folds": None, "fold_weights": None})
    return run.model_copy(update={"infer": chosen, "runtime": runtime})


def load_blend(cfg: Config, info: dict, partial: bool = False) -> Ensemble:
    """The ensemble ``blend.json`` describes: every trained fold of each run, the run's weight, and the
    post-processing tuned on the blend."""
    path = WorkDir(cfg.workdir).blend_json
    gone = next((run["path"] for run in info["runs"] if not Path(run["path"]).is_dir()), None)
    if gone is not None:
        raise InferError(f"{path} blends run {gone}, which no longer exists; restore it, or run 'kseg blend' again")
    check_pins(info, path)
    members = []
    for run in info["runs"]:
        member = load_ensemble(
            member_config(run_config(Path(run["path"])), cfg.infer, cfg.runtime), use_blend=False, partial=partial
        )
        member.post = None
        members.append((member, float(run["weight"])))
    post = PostProcess.from_json(info["postprocess"], str(path)) if info.get("postprocess") else None
    weights = ", ".join(f"{w:g}" for _, w in members)
    folds = sorted({f for member, _ in members for f in member.folds})
    models = [m for member, _ in members for m in member.models]
    used = [p for member, _ in members for p in member.partial]
    source = f"blend of {len(members)} runs ({weights}; {path})"
    return Ensemble(cfg, models, folds, None, source, post, members, partial=used)


def load_ensemble(
    cfg: Config,
    folds: list[int] | None = None,
    weights: list[float] | None = None,
    *,
    use_blend: bool = True,
    partial: bool = False,
) -> Ensemble:
    """The best checkpoint of each chosen fold (default: every trained fold), loaded once; or, when the
    work folder holds a ``blend.json`` (and ``use_blend``), the blend it describes."""
    work = WorkDir(cfg.workdir)
    blend = work.read_blend() if use_blend else None
    if blend is not None:
        if folds is not None or weights is not None:
            raise InferError(
                f"{work.blend_json} blends every fold of its runs, so folds and fold weights cannot be chosen; "
                "drop --folds / --fold-weights (and infer.folds), or predict without the blend (--no-blend)"
            )
        return load_blend(cfg, blend, partial)
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
    unfinished = require_finished(work, chosen, partial)
    models = []
    for f in chosen:
        path = work.best(f)
        saved = load_checkpoint(path)
        mismatch = checkpoint_mismatch(saved, cfg.model, list(cfg.data.classes), cfg.data.multilabel)
        if mismatch:
            raise InferError(f"{path} {mismatch}; predict with the config it was trained with")
        model = bare_model(cfg.model, cfg.n_classes)
        model.load_state_dict(saved["model"])
        models.append(model.eval())
    source = f"folds {', '.join(map(str, chosen))} of {cfg.workdir}"
    used = [f"{cfg.workdir} fold {f}" for f in unfinished]
    return Ensemble(
        cfg,
        models,
        chosen,
        weights,
        source,
        load_postprocess(cfg.workdir, list(cfg.data.classes), cfg.multilabel),
        partial=used,
    )


def _states(models: list[nn.Module], dtype: torch.dtype | None) -> list[dict[str, torch.Tensor]]:
    states = []
    for model in models:
        state = model.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        states.append(state)
    return states


def export_bundle(
    cfg: Config, out: Path, folds: list[int] | None = None, half: bool = False, partial: bool = False
) -> Path:
    """Pack the resolved config and the chosen folds' best weights into one file (``.kseg``); a blend is
    packed whole: each run's config, weights and blend weight."""
    remove_stale(Path(out).parent, target=Path(out).name)  # what a killed export of the same file left
    ensemble = load_ensemble(cfg, folds, partial=partial)
    dtype = torch.float16 if half else None
    parts = ensemble.members or [(ensemble, 1.0)]
    bundle = {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "kseg_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "folds": ensemble.folds,
        "members": [
            {
                "config": member.cfg.model_dump(mode="json"),
                "folds": member.folds,
                "weight": weight,
                "state_dicts": _states(member.models, dtype),
            }
            for member, weight in parts
        ],
        "postprocess": ensemble.post.to_json() if ensemble.post is not None else None,
        "source": ensemble.source,
        "partial_folds": ensemble.partial,
    }
    save_checkpoint(out, bundle)
    return out


FIXED_IN_BUNDLE = ("model.", "data.classes", "data.multilabel")


def _bundle_member(tree: dict, states: list, overrides: list[str], source: str) -> Ensemble:
    fixed = next((o for o in overrides if o.split("=", 1)[0].strip().startswith(FIXED_IN_BUNDLE)), None)
    if fixed is not None:
        raise InferError(
            f"--set {fixed} changes the model that bundle {source} holds, which is fixed when it is exported; "
            "leave it out (export another bundle for another model)"
        )
    cfg = build_config(apply_overrides(tree, overrides), Path.cwd(), source=source, overrides=overrides)
    models = []
    for state in states:
        model = bare_model(cfg.model, cfg.n_classes)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(model.eval())
    return Ensemble(cfg, models, [], None, source)


def select_folds(ensemble: Ensemble, folds: list[int] | None, weights: list[float] | None, source: str) -> Ensemble:
    """Keep some folds of a bundle's ensemble (``kseg infer --bundle --folds``), with optional fold weights.

    Raises:
        InferError: A fold the bundle does not hold, weights that do not fit, or folds of a blend.
    """
    if folds is None and weights is None:
        return ensemble
    if ensemble.members:
        raise InferError(f"bundle {source} is a blend of every fold of its runs; drop --folds / --fold-weights")
    chosen = folds if folds is not None else list(ensemble.folds)
    missing = [f for f in chosen if f not in ensemble.folds]
    if missing:
        raise InferError(
            f"bundle {source} holds folds {', '.join(map(str, ensemble.folds))}, not fold {missing[0]}; pick among "
            "those with --folds, or export the fold into the bundle"
        )
    if weights is not None and len(weights) != len(chosen):
        raise InferError(f"--fold-weights gives {len(weights)} weights for {len(chosen)} folds; give one per fold")
    ensemble.models = [ensemble.models[ensemble.folds.index(f)] for f in chosen]
    ensemble.folds, ensemble.weights = list(chosen), weights
    return ensemble


def load_bundle(path: Path, overrides: list[str] | None = None) -> Ensemble:
    """An ensemble (or a blend) from a ``kseg export`` bundle: needs nothing but the file."""
    path = Path(path)
    if not path.is_file():
        raise InferError(f"bundle {path} does not exist; make one with 'kseg export -c CFG --out {path.name}'")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InferError(f"{path} is not a kseg bundle ({type(exc).__name__}); make one with 'kseg export'") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise InferError(f"{path} is not a kseg bundle; make one with 'kseg export'")
    version = bundle.get("bundle_version")
    if version not in (1, BUNDLE_VERSION):
        raise InferError(
            f"{path} is a bundle of format {version} (kseg {bundle.get('kseg_version')}) but this "
            f"kseg {__version__} reads formats 1-{BUNDLE_VERSION}; export it again with this kseg"
        )
    overrides = list(overrides or [])
    members = bundle.get("members") or [
        {"config": bundle["config"], "folds": bundle["folds"], "weight": 1.0, "state_dicts": bundle["state_dicts"]}
    ]
    post = PostProcess.from_json(bundle["postprocess"], str(path)) if bundle.get("postprocess") else None
    parts = []
    for member in members:
        ensemble = _bundle_member(member["config"], member["state_dicts"], overrides, str(path))
        ensemble.folds = list(member["folds"])
        parts.append((ensemble, float(member["weight"])))
    partial = list(bundle.get("partial_folds") or [])
    if len(parts) == 1:
        single = parts[0][0]
        single.source, single.post, single.partial = f"bundle {path} (folds {bundle['folds']})", post, partial
        return single
    cfg = _bundle_member(bundle["config"], [], overrides, str(path)).cfg
    for ensemble, _ in parts:  # the bundle's inference settings (and --set) for every run
        ensemble.cfg = member_config(ensemble.cfg, cfg.infer, cfg.runtime)
    models = [m for ensemble, _ in parts for m in ensemble.models]
    source = f"bundle {path} (blend of {len(parts)} runs)"
    return Ensemble(cfg, models, list(bundle["folds"]), None, source, post, parts, partial=partial)
