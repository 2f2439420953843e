"""Would a separate presence threshold pay? Measured on a trained workdir's out-of-fold predictions.

kseg's post-processing decides, per class, a pixel threshold and a minimum area: a row is emptied when
fewer pixels than the minimum pass the threshold. Some Kaggle write-ups (Understanding Clouds, Severstal)
decide presence with one threshold and draw the mask with another ("triplet" post-processing). This
script searches both forms on the same OOF histograms `kseg tune` uses and prints, per class and overall,
the mean row Dice tuned in-sample and tuned on one half and scored on the other (the same halves as
`kseg tune`), so the extra parameter is judged by held-out halves, not by its in-sample gain.

Usage:
    python scripts/postprocess_presence.py -c configs/dubai-aerial.yaml [--set workdir=runs/x]
    python scripts/postprocess_presence.py --smoke     # on a tiny run trained first (CI)
"""

from __future__ import annotations

import argparse

import numpy as np

from kseg.config import load_config
from kseg.metrics.scores import class_scores
from kseg.postprocess.oof import OOFSet, class_table, load_oof
from kseg.postprocess.params import AREA_FRACTIONS


def score_grid(oof: OOFSet, k: int, rows: np.ndarray, presence: bool, metric: str) -> np.ndarray:
    """Class ``k``'s metric over ``rows`` for every (pixel threshold, [presence threshold,] min area)."""
    area, inter = class_table(oof, k)
    area, inter, truth = area[rows], inter[rows], oof.truth_area[rows, k]
    minimum = AREA_FRACTIONS[None, None, :] * oof.n_pixels[rows, None, None]  # (N, 1, A)
    if presence:  # emptied by the area at the presence threshold, drawn at the pixel threshold
        emptied = area[:, None, :, None] < minimum[:, :, None, :]  # (N, 1, Tpresence, A)
        shape = (len(rows), area.shape[1], area.shape[1], len(AREA_FRACTIONS))
        a = np.where(emptied, 0, np.broadcast_to(area[:, :, None, None], shape))
        i = np.where(emptied, 0, np.broadcast_to(inter[:, :, None, None], shape))
    else:
        emptied = area[:, :, None] < minimum
        a, i = np.where(emptied, 0, area[:, :, None]), np.where(emptied, 0, inter[:, :, None])
    truth = np.broadcast_to(truth.reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)
    return class_scores(i, a, truth, metric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--seed", type=int, default=0, help="the halves' seed (kseg tune's default)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run trained here (CI)")
    args = parser.parse_args()
    if args.smoke:
        import tempfile
        from pathlib import Path

        from smoke import tiny_run

        args.config, sets = tiny_run(Path(tempfile.mkdtemp(prefix="kseg-smoke-")))
        args.sets = [*sets, *args.sets]
    cfg = load_config(args.config, args.sets)
    oof, metric = load_oof(cfg.workdir, cfg.n_classes, cfg.multilabel), cfg.submission.metric
    n = len(oof.ids)
    order = np.random.default_rng(args.seed).permutation(n)
    halves = [np.sort(order[: n // 2]), np.sort(order[n // 2 :])]
    for presence in (False, True):
        name = "threshold + presence threshold + min area" if presence else "threshold + min area (kseg tune)"
        in_sample, held_out = [], []
        for k in cfg.scored_classes:
            grid = score_grid(oof, k, np.arange(n), presence, metric)
            in_sample.append(grid.max())
            scores = []
            for fit, check in (halves, halves[::-1]):
                best = np.unravel_index(np.argmax(score_grid(oof, k, fit, presence, metric)), grid.shape)
                scores.append(score_grid(oof, k, check, presence, metric)[best])
            held_out.append(float(np.mean(scores)))
            print(f"  {cfg.data.classes[k]:<12} in-sample {grid.max():.4f}  held-out halves {held_out[-1]:.4f}")
        print(
            f"{name}: in-sample {np.mean(in_sample):.4f}, tuned on one half and scored on the other "
            f"{np.mean(held_out):.4f} ({n} OOF images)"
        )


if __name__ == "__main__":
    main()
