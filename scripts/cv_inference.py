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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def main() -> None:
    from kseg.config import load_config
    from kseg.data import ID, list_samples
    from kseg.infer import Predictor, load_ensemble
    from kseg.losses import build_loss
    from kseg.split import read_folds
    from kseg.train import evaluate, summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, default=None, help="experiment YAML (default ./kseg.yaml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dotted.key=value override")
    parser.add_argument("--tta", default="none", help="TTA views: none, hflip, vflip, flip, rot90, d4")
    parser.add_argument("--runs", default="", help="comma-separated extra workdirs to ensemble, fold by fold")
    parser.add_argument("--folds", default="", help="comma-separated folds to score (default: all of folds.csv)")
    parser.add_argument(
        "--group",
        default="",
        help=r"also score per group: a regex whose first group is taken "
        r"from each ImageID, e.g. '^(Tile_\d+)'",
    )
    args = parser.parse_args()

    cfg = load_config(args.config, args.sets)
    others = [load_config(args.config, [*args.sets, f"workdir={Path(p).resolve()}"]) for p in args.runs.split(",") if p]
    folds = read_folds(cfg)
    for other in others:
        if not read_folds(other)[[ID, "fold"]].equals(folds[[ID, "fold"]]):
            raise SystemExit(f"{other.workdir / 'folds.csv'} differs from {cfg.workdir / 'folds.csv'}")
    samples = list_samples(cfg.data, "train").merge(folds[[ID, "fold"]], on=ID)
    loss_fn = build_loss(cfg, None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    counts, ids = [], []
    chosen = [int(f) for f in args.folds.split(",") if f] or sorted(int(f) for f in samples["fold"].unique())
    for fold in chosen:
        models = [m.to(device) for c in [cfg, *others] for m in load_ensemble(c, [int(fold)]).models]
        val = samples[samples["fold"] == fold].reset_index(drop=True)
        predictor = Predictor(models, cfg, device, None, args.tta)
        _, fold_counts = evaluate(predictor, val, cfg, loss_fn)
        fold_score = summarize(fold_counts, cfg.data.classes)[0]
        print(f"fold {fold}: {len(val)} images, {len(models)} model(s), mean row Dice {fold_score:.4f}", flush=True)
        counts.append(fold_counts)
        ids += list(val[ID])
    counts = np.concatenate(counts)
    if args.group:
        groups = pd.Series(ids).str.extract(args.group)[0].fillna("(no match)").to_numpy()
        for name in sorted(set(groups)):
            print(f"{name}: mean row Dice {summarize(counts[groups == name], cfg.data.classes)[0]:.4f}")
    score, class_dice, _ = summarize(counts, cfg.data.classes)
    table = pd.Series(class_dice).round(3).to_dict()
    print(
        f"CV {score:.4f} over {len(ids)} out-of-fold images (tta {args.tta}, {1 + len(others)} run(s), "
        f"sets {args.sets or 'none'}) per class {table}  [{time.perf_counter() - started:.0f} s on {device}]"
    )


if __name__ == "__main__":
    main()
