"""The README's Dubai picture: one held-out image, its true mask and kseg's prediction, with a legend.

The image is fixed in advance (image_part_005, the middle of Tile 7), not picked by its score.
Usage (after the README's Dubai commands):
  python scripts/dubai_figure.py [--config configs/dubai-aerial.yaml] [--predictions runs/dubai-heldout]
                                 [--name image_part_005] [--out docs/dubai-heldout.png] [--smoke]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from kseg.config import load_config
from kseg.data.reading import MaskSpec, read_image, read_mask
from kseg.metrics.scores import label_counts, row_dice
from kseg.plotting import palette_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/dubai-aerial.yaml"))
    parser.add_argument("--predictions", type=Path, default=Path("runs/dubai-heldout"))
    parser.add_argument("--tile", default="Tile 7")
    parser.add_argument("--name", default="image_part_005")
    parser.add_argument("--out", type=Path, default=Path("docs/dubai-heldout.png"))
    parser.add_argument("--smoke", action="store_true", help="draw a tiny made-up image into a temporary folder (CI)")
    args = parser.parse_args()
    overrides: list[str] = []
    if args.smoke:
        import tempfile

        from smoke import tiny_dubai

        root = tiny_dubai(Path(tempfile.mkdtemp(prefix="kseg-smoke-")))
        overrides, args.predictions, args.out = [f"data.root={root}"], root / "predictions", root / "figure.png"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cfg = load_config(args.config, overrides)
    spec = MaskSpec.from_config(cfg.data)
    image = read_image(cfg.data.root / args.tile / "images" / f"{args.name}.jpg")
    truth = read_mask(cfg.data.root / args.tile / "masks" / f"{args.name}.png", spec)
    pred = np.asarray(Image.open(args.predictions / f"{args.name}.png"))
    inter, pred_px, true_px = label_counts(pred, truth, len(cfg.data.classes), cfg.data.ignore_index)
    dice = row_dice(inter, pred_px, true_px)
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(cfg.data.classes)] = palette_rgb(cfg.data)
    palette[255] = (155, 155, 155)  # unlabeled / no class
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.2))
    panels = [
        (image, f"{args.tile} / {args.name} (held out)"),
        (palette[truth], "true mask"),
        (palette[pred], f"kseg prediction: mean row Dice {dice.mean():.3f}"),
    ]
    for ax, (picture, title) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    handles = [
        Patch(color=palette[k] / 255, label=f"{name} ({dice[k]:.2f})") for k, name in enumerate(cfg.data.classes)
    ]
    handles.append(Patch(color=palette[255] / 255, label="unlabeled (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB); per-class Dice: "
        + ", ".join(f"{n} {d:.3f}" for n, d in zip(cfg.data.classes, dice, strict=True))
    )


if __name__ == "__main__":
    main()
