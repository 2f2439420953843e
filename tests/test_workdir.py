"""The work folder's one owner: paths, and an epoch's files committed together."""

import json

from kseg.io import remove_stale
from kseg.workdir import WorkDir


def _stage(work: WorkDir, names: list[str], epoch: int) -> None:
    work.fold_dir(0).mkdir(parents=True, exist_ok=True)
    for name in names:
        work.staged(0, name).write_text(f"{name} of epoch {epoch}")


def _contents(work: WorkDir) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(work.fold_dir(0).iterdir())}


def test_a_commit_puts_every_staged_file_in_place(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 3)
    work.commit(0, names)
    assert _contents(work) == {name: f"{name} of epoch 3" for name in names}


def test_a_commit_killed_half_way_is_finished_on_the_next_run(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 2)
    work.commit(0, names)
    _stage(work, names, 3)
    work.journal(0).write_text(json.dumps({"files": names}))  # the journal was written, then:
    work.staged(0, "best.pt").replace(work.best(0))  # one rename happened before the kill
    assert work.roll_forward(0)
    assert _contents(work) == {name: f"{name} of epoch 3" for name in names}  # all of epoch 3, none of 2


def test_staged_files_without_a_journal_are_rolled_back(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 2)
    work.commit(0, names)
    _stage(work, ["best.pt", "oof.npy"], 3)  # killed while staging: no journal yet
    assert not work.roll_forward(0)
    remove_stale(work.fold_dir(0))
    assert _contents(work) == {name: f"{name} of epoch 2" for name in names}


def test_trained_folds_are_found_by_their_best_checkpoint(tmp_path):
    work = WorkDir(tmp_path)
    for fold in (0, 2, 10):
        work.fold_dir(fold).mkdir(parents=True)
        work.best(fold).write_text("x")
    (tmp_path / "foldx").mkdir()
    (tmp_path / "foldx" / "best.pt").write_text("x")
    assert work.trained_folds() == [0, 2, 10]
