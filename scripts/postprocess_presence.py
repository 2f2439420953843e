"""Does the presence gate pay? kseg tune with and without gates on a trained workdir's out-of-fold predictions.

`kseg tune` searches, per class, a threshold and a minimum area, a presence gate in front of a mask
threshold (a row emptied unless enough of its pixels reach the gate: the "triplet" of Kaggle write-ups),
and, on a run trained with `model.presence_head`, the head's gate in front of a threshold and minimum area;
it keeps whichever scores best on the OOF predictions. This script runs the same search on the same OOF
statistics without gates (`kseg tune --no-gate`), with the mask's gates only, and (with a head) with the
head's too, and prints per class and overall the in-sample score and the score tuned on one half and
scored on the other (the same halves as `kseg tune`), the gated classes and the rows each gate empties
right and wrong. Nothing is written.

Usage:
    python scripts/postprocess_presence.py -c configs/dubai-aerial.yaml [--set workdir=runs/x]
    python scripts/postprocess_presence.py --smoke     # on a tiny run trained first, with a head (CI)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from kseg.config import load_config
from kseg.postprocess import TuneResult, load_oof, tune_oof


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

        args.config, sets = tiny_run(Path(tempfile.mkdtemp(prefix="kseg-smoke-")), "model.presence_head=true")
        args.sets = [*sets, *args.sets]
    cfg = load_config(args.config, args.sets)
    oof = load_oof(cfg.workdir, cfg.n_classes, cfg.multilabel)
    classes, metric = list(cfg.data.classes), cfg.submission.metric
    empty = (oof.truth_area[:, cfg.scored_classes] == 0).mean()
    print(f"{len(oof.ids)} OOF images of {cfg.workdir}; {empty:.1%} of the scored (image, class) rows are empty")
    head = oof.presence is not None
    print(f"presence scores: {'the presence head' if head else 'none (no model.presence_head): mask gates only'}")
    searches = {"threshold + min area (--no-gate)": (replace(oof, presence=None), False)}
    searches["with the mask's gates" + ("" if head else " (kseg tune)")] = (replace(oof, presence=None), True)
    if head:
        searches["with the mask's and the head's gates (kseg tune)"] = (oof, True)
    results, seconds = {}, {}
    for label, (statistics, gates) in searches.items():
        started = time.perf_counter()
        results[label] = tune_oof(statistics, classes, args.seed, metric, cfg.scored_classes, gates=gates)
        seconds[label] = time.perf_counter() - started
    plain, gated = results[next(iter(results))], results[list(results)[-1]]
    print(f"{'class':<14}{'in-sample':>22}{'held-out gain':>24}  gate (rows emptied right / wrong)")
    for k in cfg.scored_classes:
        name = classes[k]
        print(
            f"{name:<14}{plain.class_after[name]:>11.4f} -> {gated.class_after[name]:.4f}"
            f"{plain.class_holdout_gain[name]:>+13.4f} -> {gated.class_holdout_gain[name]:+.4f}  "
            f"{_gate(gated, name)}"
        )
    for label, result in results.items():
        print(
            f"{label}: in-sample {result.post.oof_score_after:.4f}, tuned on one half and scored on the other "
            f"{result.holdout_after:.4f} (untuned {result.holdout_before:.4f}; search {seconds[label]:.1f} s)"
        )


def _gate(result: TuneResult, name: str) -> str:
    rule = result.post.params[name]
    if rule.presence:
        text = f"head score >= {rule.presence:.2f}, mask at {rule.threshold:.2f}, min area {rule.min_area:.3%}"
    elif rule.gate:
        text = f"{rule.gate_area:.3%} of pixels >= {rule.gate:.2f}, mask at {rule.threshold:.2f}"
    else:
        return "-"
    return text + (" ({} / {})".format(*result.gate_rows[name]) if name in result.gate_rows else "")


if __name__ == "__main__":
    main()
