import pytest

from kseg.cli import app
from kseg.demo import DEMO_MARK, run_demo
from kseg.errors import KsegError


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(KsegError, match="is not empty; choose another DIR, or pass --force"):
        run_demo(tmp_path)
    with pytest.raises(KsegError, match="was not made by kseg demo"):
        run_demo(tmp_path, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_force_never_removes_a_competition_folder_that_looks_like_a_demo(tmp_path):
    """A user's competition folder (kseg.yaml, train.csv, their own files) is not a demo to replace."""
    for name, text in (("kseg.yaml", "data: {classes: [a, b]}"), ("train.csv", "ImageID"), ("my_notes.md", "keep")):
        (tmp_path / name).write_text(text)
    with pytest.raises(KsegError, match="was not made by kseg demo"):
        run_demo(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kseg.yaml", "my_notes.md", "train.csv"]


@pytest.mark.slow
def test_demo_end_to_end(runner, tmp_path):
    """The README's main command: a valid submission scoring well above an all-empty one."""
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "INVALID" not in result.output
    assert (out / "submissions" / "submission.csv").is_file()
    assert (out / "work" / "postprocess.json").is_file()
    assert list((out / "work" / "predictions").glob("*_overlay.png"))
    assert (out / "work" / "report" / "worst.png").is_file()
    line = next(x for x in result.output.splitlines() if "local score" in x)
    score = float(line.split("truth: ")[1].split()[0])
    empty = float(line.split("scores ")[1].rstrip(")"))
    assert score > empty + 0.2
    assert (out / DEMO_MARK).is_file()  # what lets 'kseg demo --force' replace it (next test)


def test_force_replaces_a_previous_demo_and_only_that(tmp_path):
    """A folder with the mark kseg demo writes is replaced whole; without --force it is kept."""
    from kseg.demo import prepare_folder

    out = tmp_path / "demo"
    prepare_folder(out, force=False)
    (out / "work").mkdir()
    (out / "work" / "fold0.pt").write_text("old")
    with pytest.raises(KsegError, match="is not empty"):
        prepare_folder(out, force=False)
    assert (out / "work" / "fold0.pt").is_file()
    prepare_folder(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [DEMO_MARK]
