import os
import stat

import pytest

from kseg.io import atomic_write_text


def test_atomic_write_gives_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.csv", "a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644


def test_failed_write_leaves_nothing_behind(tmp_path):
    from kseg.io import atomic_open

    (tmp_path / "out.csv").write_text("previous\n")
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "out.csv") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "out.csv").read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_dir_swaps_whole_folders_or_nothing(tmp_path):
    from kseg.io import atomic_dir

    out = tmp_path / "report"
    with atomic_dir(out) as work:
        (work / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as work:
            (work / "a.txt").write_text("second")
            raise RuntimeError("stop")
    assert (out / "a.txt").read_text() == "first"  # the failed run left the previous folder alone
    with atomic_dir(out) as work:
        (work / "b.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folders left


def test_remove_stale_takes_only_what_an_interrupted_kseg_write_left(tmp_path):
    from kseg.io import atomic_open, remove_stale

    (tmp_path / "best.pt").write_text("kept")
    (tmp_path / ".hidden_notes").write_text("the user's")
    (tmp_path / "oof.npy.partial").write_text("partial")
    (tmp_path / ".report.xyz.partial").mkdir()  # what atomic_dir leaves when killed with SIGKILL
    with atomic_open(tmp_path / "last.pt", "w") as handle:
        handle.write("half")
        tmp = next(p for p in tmp_path.iterdir() if p.name.startswith(".last.pt."))
        os.link(tmp, tmp_path / ".last.pt.abc123.tmp")  # a copy that outlives the block, as after SIGKILL
    assert tmp.name.endswith(".tmp")  # the naming remove_stale relies on
    removed = sorted(p.name for p in remove_stale(tmp_path))
    assert removed == [".last.pt.abc123.tmp", ".report.xyz.partial", "oof.npy.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden_notes", "best.pt", "last.pt"]


def test_a_full_disk_names_the_output_not_the_temporary_file(tmp_path, monkeypatch):
    from kseg.io import atomic_open

    def replace(src, dst):
        raise OSError(28, "No space left on device", src)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left") as caught, atomic_open(tmp_path / "out.csv") as handle:
        handle.write("a")
    assert caught.value.filename == str(tmp_path / "out.csv") and list(tmp_path.iterdir()) == []
