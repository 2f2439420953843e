"""What the scripts' --smoke runs stand on: a tiny trained run, and a tiny download in the Dubai layout.
Seconds each, no network; CI runs every script with --smoke so that none rots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY = [
    "model.encoder_name=resnet18",
    "model.encoder_weights=null",
    "runtime.num_workers=0",
    "train.epochs=1",
    "train.batch_size=4",
    "split.n_folds=2",
    "data.image_size=[32,64]",
]


def tiny_run(folder: Path, *extra: str) -> tuple[Path, list[str]]:
    """A synthetic competition with both folds trained for one epoch (under ``extra`` overrides too): its
    config and the overrides to use."""
    from typer.testing import CliRunner

    from kseg.cli import app

    runner = CliRunner()
    comp = Path(folder) / "comp"
    sets = [x for item in (*TINY, *extra) for x in ("--set", item)]
    for args in (
        ["synth", str(comp), "--train", "10", "--test", "2", "--height", "32", "--width", "64"],
        ["split", "-c", str(comp / "kseg.yaml"), *sets],
        ["train", "--fold", "all", "-c", str(comp / "kseg.yaml"), *sets],
    ):
        result = runner.invoke(app, args)
        if result.exit_code != 0:
            raise SystemExit(f"smoke set-up failed: kseg {' '.join(args[:2])}: {result.output}")
    return comp / "kseg.yaml", [*TINY, *extra]


def tiny_dubai(folder: Path) -> Path:
    """One image of 'Tile 7' in the Dubai download's layout (colour mask), and a prediction of it."""
    root = Path(folder) / "dubai"
    colours = [(0x3C, 0x10, 0x98), (0x84, 0x29, 0xF6), (0x6E, 0xC1, 0xE4), (0xFE, 0xDD, 0x3A), (0xE2, 0xA9, 0x29)]
    labels = (np.arange(48)[:, None] // 10 + np.arange(64)[None] // 13) % 5
    for part, array in (
        ("images", np.full((48, 64, 3), 120, np.uint8)),
        ("masks", np.array(colours, np.uint8)[labels]),
    ):
        (root / "Tile 7" / part).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / "Tile 7" / part / f"image_part_005.{'jpg' if part == 'images' else 'png'}")
    (root / "predictions").mkdir()
    Image.fromarray(np.roll(labels, 3, axis=1).astype(np.uint8)).save(root / "predictions" / "image_part_005.png")
    return root
