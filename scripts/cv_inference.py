r"""Cross-validate inference choices on a trained workdir, without touching the test set.

Each fold's best model predicts its own validation images exactly as training's validation does
(`infer.mode`, `data.scale`, windows of `data.image_size`), here with the TTA views, config overrides
and extra runs asked for, and the script prints the mean row Dice over all out-of-fold images (no
post-processing): the CV figure of that inference setting. Use it to decide TTA views, window size,
TTA scales or an ensemble of runs by CV instead of by the leaderboard or a held-out tile.

Usage:
    python scripts/cv_inference.py -c configs/dubai-aerial.yaml --tta d4
    python scripts/cv_inference.py -c configs/dubai-aerial.yaml --set data.image_size=[384,384]
    python scripts/cv_inference.py -c configs/dubai-aerial.yaml --runs runs/other-seed,runs/12-epochs
    python scripts/cv_inference.py -c configs/dubai-aerial.yaml --group '^(Tile_\d+)'   # per tile too

--runs adds, for each fold, the best model of the same fold in other workdirs (which must have been
trained on the same folds.csv) to the ensemble.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers, e.g. 0,1") from None


def _group_regex(text: str) -> re.Pattern:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({exc})") from None
    if pattern.groups < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no capture group; wrap the part that names the group in (), e.g. '^(Tile_\\d+)'"
        )
    return pattern


def main() -> None:
    from kseg.config import load_config
    from kseg.data.reading import ID
    from kseg.errors import KsegError
    from kseg.workspace.workdir import WorkDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, default=None, help="experiment YAML (default ./kseg.yaml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dotted.key=value override")
    parser.add_argument("--tta", default="none", help="TTA views: none, hflip, vflip, flip, rot90, d4")
    parser.add_argument("--runs", default="", help="comma-separated extra workdirs to ensemble, fold by fold")
    parser.add_argument(
        "--folds", type=_int_list, default=[], help="comma-separated folds to score (default: all of folds.csv)"
    )
    parser.add_argument(
        "--group",
        type=_group_regex,
        default=None,
        help=r"also score per group: a regex whose first group is taken "
        r"from each ImageID, e.g. '^(Tile_\d+)'",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run trained here, TTA flip (CI)")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        from smoke import tiny_run

        args.config, sets = tiny_run(Path(tempfile.mkdtemp(prefix="kseg-smoke-")))
        args.sets, args.tta = [*sets, *args.sets], "flip"

    try:
        cfg = load_config(args.config, args.sets)
        others = [
            load_config(args.config, [*args.sets, f"workdir={Path(p).resolve()}"]) for p in args.runs.split(",") if p
        ]
        folds = WorkDir(cfg.workdir).read_folds()
        for other in others:
            if not WorkDir(other.workdir).read_folds()[[ID, "fold"]].equals(folds[[ID, "fold"]]):
                raise KsegError(
                    f"{WorkDir(other.workdir).folds_csv} differs from {WorkDir(cfg.workdir).folds_csv}; "
                    "--runs takes only runs trained on the same folds"
                )
        score_folds(cfg, others, args.folds or sorted(folds["fold"].unique().tolist()), args.tta, args.group)
    except KsegError as exc:
        sys.exit(f"error: {exc}")


def score_folds(cfg, others: list, chosen: list[int], tta: str, group: re.Pattern | None) -> None:
    """Print each fold's, each group's and the overall mean row Dice of ``chosen`` folds."""
    from kseg.data.reading import ID, MaskSpec
    from kseg.prediction.ensemble import load_ensemble
    from kseg.prediction.predictor import Predictor
    from kseg.runtime import resolve_device
    from kseg.training.evaluation import evaluate, summarize
    from kseg.training.losses import loss_from_config
    from kseg.training.train import fold_tables

    loss_fn = loss_from_config(cfg)
    device = resolve_device(cfg.runtime)
    spec = MaskSpec.from_config(cfg.data)
    started = time.perf_counter()
    counts, ids = [], []
    for fold in chosen:
        models = [m.to(device) for c in [cfg, *others] for m in load_ensemble(c, [fold]).models]
        if cfg.runtime.channels_last:  # as kseg infer runs them
            models = [m.to(memory_format=torch.channels_last) for m in models]
        _, val, _ = fold_tables(cfg.data, cfg.workdir, fold)
        _, fold_counts = evaluate(
            Predictor.from_config(models, cfg, device, None, tta), val, spec, loss_fn, channels=cfg.model.in_channels
        )
        fold_score = summarize(fold_counts, cfg.data.classes)[0]
        print(f"fold {fold}: {len(val)} images, {len(models)} model(s), mean row Dice {fold_score:.4f}", flush=True)
        counts.append(fold_counts)
        ids += list(val[ID])
    counts = np.concatenate(counts)
    if group is not None:
        groups = pd.Series(ids).str.extract(group)[0].fillna("(no match)").to_numpy()
        for name in sorted(set(groups)):
            print(f"{name}: mean row Dice {summarize(counts[groups == name], cfg.data.classes)[0]:.4f}")
    score, class_dice, _ = summarize(counts, cfg.data.classes)
    table = pd.Series(class_dice).round(3).to_dict()
    print(
        f"CV {score:.4f} over {len(ids)} out-of-fold images (tta {tta}, {1 + len(others)} run(s)) "
        f"per class {table}  [{time.perf_counter() - started:.0f} s on {device}]"
    )


if __name__ == "__main__":
    main()
