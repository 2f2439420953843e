"""Numbers that mean nothing are refused: non-finite config values, yes/no where a number is meant, and a
training loss that went non-finite (the run stops in one line, before saving the diverged weights)."""

from __future__ import annotations

import pytest
from conftest import FAST

from kseg.cli import app
from kseg.config import load_config
from kseg.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", "finite number"),
        ("infer.tile_overlap=.nan", "finite number"),
        ("data.mean=[.inf,0.5,0.5]", "finite number"),
        ("train.epochs=true", "yes/no value where a number is meant"),
        ("train.batch_size=false", "yes/no value where a number is meant"),
        ("split.workers=true", "yes/no value where a number is meant"),
    ],
)
def test_the_config_refuses_non_finite_numbers_and_booleans_for_numbers(comp, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(comp / "kseg.yaml", [override])


def test_booleans_stay_booleans(comp):
    cfg = load_config(
        comp / "kseg.yaml", ["runtime.channels_last=false", "train.cache=true", "runtime.pin_memory=true"]
    )
    assert cfg.runtime.channels_last is False and cfg.train.cache is True and cfg.runtime.pin_memory is True


@pytest.mark.slow
def test_a_diverging_training_stops_in_one_line_and_saves_no_diverged_weights(runner, comp):
    sets = [*FAST, "split.n_folds=2", "train.epochs=3", "train.lr=1e30", "train.batch_size=2"]
    config = ["-c", str(comp / "kseg.yaml"), *[x for s in sets for x in ("--set", s)]]
    assert runner.invoke(app, ["split", *config]).exit_code == 0
    result = runner.invoke(app, ["train", "--fold", "0", *config])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "(training diverged); lower train.lr (now 1e+30)" in text and "Traceback" not in text
    assert not (comp / "work" / "fold0" / "best.pt").exists()
