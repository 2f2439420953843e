"""Checkpoints are data, never code: a file whose unpickling would run code is refused before it runs,
kseg's own checkpoints (RNG states included) load data-only, and older ones with a NumPy RNG state too."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kseg.cli import app
from kseg.errors import TrainError
from kseg.models.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: code that runs on load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    planted = tmp_path / "planted.txt"
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "payload": _WritesAFile(str(planted))}, path)
    with pytest.raises(TrainError, match=r"holds objects that a data-only load refuses .*never runs code"):
        load_checkpoint(path)
    assert not planted.exists()


def test_kseg_infer_refuses_a_planted_checkpoint_in_one_line(runner, comp, tmp_path):
    planted = tmp_path / "planted.txt"
    (comp / "work" / "fold0").mkdir(parents=True)
    torch.save({"model": {}, "payload": _WritesAFile(str(planted))}, comp / "work" / "fold0" / "best.pt")
    result = runner.invoke(app, ["infer", "--partial", "-c", str(comp / "kseg.yaml")])  # no history: unfinished
    assert result.exit_code == 1 and "data-only load refuses" in result.output and "Traceback" not in result.output
    assert not planted.exists()


def test_rng_states_round_trip_through_a_data_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path / "last.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_an_older_checkpoint_with_a_numpy_rng_state_still_loads_data_only(tmp_path):
    np.random.seed(5)
    old = {"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    torch.save(old, tmp_path / "last.pt")  # what kseg wrote before: a NumPy array inside
    expected = np.random.rand(2)
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert np.array_equal(np.random.rand(2), expected)
