"""The work folder's one owner: paths, and an epoch's files committed together."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from kseg.errors import KsegError
from kseg.io import remove_stale
from kseg.workspace.workdir import WorkDir


def _stage(work: WorkDir, names: list[str], epoch: int) -> None:
    work.fold_dir(0).mkdir(parents=True, exist_ok=True)
    for name in names:
        work.journal(0).staged(name).write_text(f"{name} of epoch {epoch}")


def _contents(work: WorkDir) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(work.fold_dir(0).iterdir())}


def test_a_commit_puts_every_staged_file_in_place(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 3)
    work.journal(0).commit(names)
    assert _contents(work) == {name: f"{name} of epoch 3" for name in names}


def test_a_commit_killed_half_way_is_finished_on_the_next_run(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 2)
    work.journal(0).commit(names)
    _stage(work, names, 3)
    work.journal(0).path.write_text(json.dumps({"files": names}))  # the journal was written, then:
    work.journal(0).staged("best.pt").replace(work.fold_dir(0) / "best.pt")  # one rename happened before the kill
    assert work.journal(0).roll_forward()
    assert _contents(work) == {name: f"{name} of epoch 3" for name in names}  # all of epoch 3, none of 2


def test_staged_files_without_a_journal_are_rolled_back(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "oof.npy", "last.pt", "metrics.csv"]
    _stage(work, names, 2)
    work.journal(0).commit(names)
    _stage(work, ["best.pt", "oof.npy"], 3)  # killed while staging: no journal yet
    assert not work.journal(0).roll_forward()
    remove_stale(work.fold_dir(0))
    assert _contents(work) == {name: f"{name} of epoch 2" for name in names}


def test_a_reader_clears_what_a_dead_writer_staged_and_leaves_a_live_ones(tmp_path):
    work = WorkDir(tmp_path)
    names = ["best.pt", "last.pt", "metrics.csv"]
    _stage(work, names, 2)
    work.journal(0).commit(names)
    _stage(work, ["best.pt"], 3)  # a training killed while staging epoch 3: no journal
    (work.fold_dir(0) / ".last.pt.next.ab12.tmp").write_text("half of epoch 3's last.pt")
    hold = work.journal(0).hold()  # while a live run holds the fold, its staged files are its own
    try:
        assert work.trained_folds() == [0] and work.journal(0).staged("best.pt").is_file()
    finally:
        hold.close()
    assert work.trained_folds() == [0]  # what infer, tune and report call first
    assert _contents(work) == {name: f"{name} of epoch 2" for name in names}


def test_trained_folds_are_found_by_their_best_checkpoint(tmp_path):
    work = WorkDir(tmp_path)
    for fold in (0, 2, 10):
        work.fold_dir(fold).mkdir(parents=True)
        work.best(fold).write_text("x")
    (tmp_path / "foldx").mkdir()
    (tmp_path / "foldx" / "best.pt").write_text("x")
    assert work.trained_folds() == [0, 2, 10]


def _half_committed(work: WorkDir, names: list[str]) -> None:
    """Epoch 2 committed, then epoch 3 staged, journalled and killed after its first rename."""
    _stage(work, names, 2)
    work.journal(0).commit(names)
    _stage(work, names, 3)
    work.journal(0).path.write_text(json.dumps({"files": names}))
    work.journal(0).staged(names[0]).replace(work.fold_dir(0) / names[0])


def test_a_reader_sees_one_epoch_after_a_kill_between_renames(tmp_path):
    names = ["best.pt", "last.pt", "metrics.csv", "oof.npy", "oof.csv"]
    _half_committed(WorkDir(tmp_path), names)
    reader = WorkDir(tmp_path)  # another process, e.g. 'kseg infer' or 'kseg tune'
    assert reader.journal(0).path.is_file()  # a path is only a path: naming it settles nothing
    assert reader.settle(0)  # what every reader of a fold's files does first
    assert reader.metrics(0).read_text() == "metrics.csv of epoch 3"
    assert reader.last(0).read_text() == "last.pt of epoch 3"
    assert _contents(reader) == {name: f"{name} of epoch 3" for name in names}


def test_a_first_epoch_whose_commit_was_cut_short_counts_as_trained(tmp_path):
    work = WorkDir(tmp_path)
    _stage(work, ["best.pt", "last.pt"], 1)
    work.journal(0).path.write_text(json.dumps({"files": ["best.pt", "last.pt"]}))
    assert work.trained_folds() == [0] and work.best(0).read_text() == "best.pt of epoch 1"


def test_readers_leave_a_live_run_to_complete_its_own_commit(tmp_path):
    names = ["best.pt", "last.pt", "metrics.csv"]
    work = WorkDir(tmp_path)
    hold = work.journal(0).hold()
    _half_committed(work, names)
    try:
        assert work.journal(0).is_held()
        assert not work.settle(0) and work.journal(0).path.is_file()  # the live writer's staged files untouched
        assert work.journal(0).staged("last.pt").is_file()
    finally:
        hold.close()
    assert work.settle(0) and not work.journal(0).path.exists()


def test_a_fold_is_trained_by_one_process_at_a_time_and_a_killed_one_holds_nothing(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys, time
        from kseg.workspace.workdir import WorkDir
        hold = WorkDir({str(tmp_path)!r}).journal(0).hold()
        print("held", flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        work = WorkDir(tmp_path)
        with pytest.raises(KsegError, match="being trained by another kseg process"):
            work.journal(0).hold()
        assert work.journal(0).is_held()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not work.journal(0).is_held()
    work.journal(0).hold().close()


def test_a_read_only_work_folder_is_read_as_it_is(tmp_path, monkeypatch):
    import errno
    import os

    names = ["best.pt", "last.pt"]
    _half_committed(WorkDir(tmp_path), names)

    def read_only(*_args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    reader = WorkDir(tmp_path)  # e.g. trained folds attached to a Kaggle notebook as a dataset
    assert reader.best(0).read_text() == "best.pt of epoch 3" and reader.journal(0).path.is_file()
