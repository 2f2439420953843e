"""`kseg init` on every competition shape kseg knows: the keys it gets right, the keys it flags, and the
score of the run its config gives.

For each `kseg synth --style` (drone, severstal, clouds, instances, tgs, carvana) the style's own
kseg.yaml is the correct hand-written config: it is moved aside, `kseg init` writes a new one from the
files, and the two are compared key by key (`kseg.planning.compare`: the data and submission sections and
the split groups; class names by position). Then `kseg split`, `kseg train --fold all`, `kseg infer --tta`,
`kseg submit` and `kseg validate` run in the folder with the written config (plus small-model overrides
for this CPU, given with --set), and `kseg score` scores the submission against the style's hidden
solution.csv. The Dubai download (../shared/data/dubai-aerial, read-only: the config goes elsewhere with
--out) is compared with configs/dubai-aerial.yaml, with and without --classes, and trained on one fold
(it has no test set, so no submission; its out-of-fold score is reported; Tile 7 is not evaluated).

Usage: python scripts/init_shapes.py [--smoke] [--styles drone,tgs] [--no-dubai] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kseg.config import load_config
from kseg.planning.compare import compare_configs

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO.parent / "shared" / "data" / "dubai-aerial"
STYLES = ("drone", "severstal", "clouds", "instances", "tgs", "carvana")
# the CPU-sized run, the same for kseg init's config and the hand-written one: the synthetic styles' own
# recipe (a small encoder without pretrained weights, one-cycle at lr 0.003), two folds
RUN = [
    "model.encoder_name=resnet18",
    "model.encoder_weights=null",
    "runtime.num_workers=0",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.scheduler=onecycle",
    "split.n_folds=2",
]
DUBAI_CLASSES = "building=#3C1098,land=#8429F6,road=#6EC1E4,vegetation=#FEDD3A,water=#E2A929"


def kseg(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "kseg", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kseg {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def flagged_keys(config: Path) -> set[str]:
    """The keys kseg init marked CHECK or left as questions: its header lists them."""
    for line in config.read_text().splitlines():
        if line.startswith("# to check:"):
            return {key.strip() for key in line.removeprefix("# to check:").split(",") if key.strip()}
    return set()


def compare(written: Path, reference: Path, overrides: list[str]) -> dict:
    result = compare_configs(load_config(written), load_config(reference, overrides), flagged_keys(written))
    return {"right": len(result.right), "flagged": result.flagged, "wrong": result.wrong, "details": result.details}


def run(comp: Path, config: Path, sets: list[str], submit: bool = True) -> tuple[float, float | None]:
    """The four commands (and validate) with ``config`` and ``sets`` in ``comp``; seconds and the score
    against the hidden solution.csv (``submit``), else the out-of-fold score of fold 0."""
    args = ["-c", str(config), *[x for item in sets for x in ("--set", item)]]
    started = time.perf_counter()
    if not submit:
        kseg("split", *args)
        kseg("train", "--fold", "0", *args)
        return time.perf_counter() - started, _oof_score(kseg("report", *args))
    for command in (["split"], ["train", "--fold", "all"], ["infer", "--tta"], ["submit"], ["validate"]):
        kseg(*command, *args, cwd=comp)
    score = json.loads(kseg("score", "--json", *args, cwd=comp))["score"]
    return time.perf_counter() - started, score


def style_row(style: str, root: Path, sizes: dict, sets: list[str]) -> dict:
    comp = root / style
    kseg("synth", str(comp), "--style", style, "--train", str(sizes["train"]), "--test", str(sizes["test"]),
         "--height", str(sizes["height"]), "--width", str(sizes["width"]))  # fmt: skip
    twin = root / f"{style}-by-hand"  # the same download with the style's own config, run the same way
    shutil.copytree(comp, twin)
    reference = comp / "reference.yaml"  # the style's own config, out of kseg init's way
    shutil.move(comp / "kseg.yaml", reference)
    started = time.perf_counter()
    kseg("init", cwd=comp)
    init_s = time.perf_counter() - started
    # the drone style writes solution.csv without naming it in its config: a correct config names it
    row = compare(comp / "kseg.yaml", reference, ["submission.solution=solution.csv"] * (style == "drone"))
    row["run_s"], row["score"] = run(comp, comp / "kseg.yaml", sets)
    row["by_hand"] = run(twin, twin / "kseg.yaml", [*sets, *["submission.solution=solution.csv"] * (style == "drone")])[
        1
    ]
    row.update(init_s=init_s)
    return row


def dubai_rows(root: Path, sets: list[str]) -> list[dict]:
    rows = []
    reference = REPO / "configs" / "dubai-aerial.yaml"
    overrides = [f"data.root={DUBAI}", "data.exclude=[]"]
    for name, extra in (("dubai", []), ("dubai --classes", ["--classes", DUBAI_CLASSES])):
        out = root / name.replace(" ", "") / "kseg.yaml"
        started = time.perf_counter()
        kseg("init", str(DUBAI), "--out", str(out), *extra)
        row = compare(out, reference, overrides)
        row.update(init_s=time.perf_counter() - started, style=name)
        rows.append(row)
    dubai = ["data.scale=0.25", "data.image_size=[128,128]", "split.n_folds=3"]
    out = root / "dubai--classes" / "kseg.yaml"
    rows[-1]["run_s"], rows[-1]["score"] = run(out.parent, out, [*sets, *dubai], submit=False)
    by_hand = [*sets, *dubai, f"data.root={DUBAI}", f"workdir={root / 'dubai-by-hand'}", "data.exclude=[]"]
    rows[-1]["by_hand"] = run(out.parent, reference, by_hand, submit=False)[1]
    return rows


def _oof_score(report: str) -> float | None:
    """The 'all' row of kseg report's out-of-fold table."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] == "all" and len(cells) >= 3:
            return float(cells[2])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (CI): 10 train / 4 test images, 32x64, 1 epoch"
    )
    parser.add_argument("--styles", default=",".join(STYLES), help="comma-separated styles")
    parser.add_argument("--no-dubai", action="store_true", help="leave the Dubai download out")
    parser.add_argument("--out", type=Path, default=None, help="keep the folders here (default: a temporary folder)")
    args = parser.parse_args()
    sizes = (
        {"train": 10, "test": 4, "height": 32, "width": 64}
        if args.smoke
        else {"train": 24, "test": 8, "height": 64, "width": 96}
    )
    sets = [*RUN, f"train.epochs={1 if args.smoke else 12}"]
    root = args.out or Path(tempfile.mkdtemp(prefix="kseg-init-shapes-"))
    rows = []
    for style in [s for s in args.styles.split(",") if s]:
        row = style_row(style, root, sizes, sets)
        row["style"] = style
        rows.append(row)
        print(f"{style}: done", file=sys.stderr)
    if not args.no_dubai and (DUBAI / "Tile 1").is_dir():
        rows += dubai_rows(root, sets)
    print("\n| shape | keys right | keys flagged (differ from the reference) | keys wrong | init s | run s "
          "| score, kseg init's config | score, the hand-written config |")  # fmt: skip
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        score = "-" if r.get("score") is None else f"{r['score']:.4f}"
        by_hand = "-" if r.get("by_hand") is None else f"{r['by_hand']:.4f}"
        run_s = "-" if r.get("run_s") is None else f"{r['run_s']:.0f}"
        flagged = ", ".join(r["flagged"]) or "none"
        missed = ", ".join(r["wrong"]) or "none"
        cells = [r["style"], r["right"], flagged, missed, f"{r['init_s']:.1f}", run_s, score, by_hand]
        print("| " + " | ".join(map(str, cells)) + " |")
    wrong = [r for r in rows if r["wrong"]]
    for r in wrong:
        for key in r["wrong"]:
            print(
                f"{r['style']}: {key}: init {r['details'][key][0]!r}, reference {r['details'][key][1]!r}",
                file=sys.stderr,
            )
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
