"""kseg package (issue 26, first part): a code competition's Kaggle dataset and offline notebook, their
metadata as the Kaggle API documents it, a notebook that runs as written, and nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import FAST, copy_comp, fast_config

from kseg.cli import app
from kseg.codecomp.package import check_names, package
from kseg.codecomp.wheels import pinned_requirements
from kseg.errors import KsegError

# the fields of kernel-metadata.json and dataset-metadata.json the Kaggle API documents
# (github.com/Kaggle/kaggle-api, docs/kernels_metadata.md and docs/datasets_metadata.md)
KERNEL_FIELDS = {
    "id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu", "enable_internet",
    "dataset_sources", "competition_sources", "kernel_sources",
}  # fmt: skip
DATASET_FIELDS = {"title", "id", "licenses"}


def _fake_wheelhouse(folder: Path, python_version: str) -> list[Path]:
    folder.mkdir(parents=True)
    wheel = folder / "kseg-0-py3-none-any.whl"
    wheel.write_bytes(b"a stand-in for pip's wheels")
    return [wheel]


@pytest.fixture
def packaged(trained_template, tmp_path):
    root = copy_comp(trained_template, tmp_path)
    cfg = fast_config(root)
    result = package(cfg, tmp_path / "out", "drone-seg", "me/drone-kseg", gpu=False, wheelhouse=_fake_wheelhouse)
    return root, cfg, result


def test_the_package_holds_what_kaggle_reads(packaged):
    root, cfg, result = packaged
    data = result.dataset_dir
    assert sorted(p.name for p in data.iterdir()) == ["dataset-metadata.json", "kseg.yaml", "model.kseg", "wheels"]
    meta = json.loads((data / "dataset-metadata.json").read_text())
    assert set(meta) == DATASET_FIELDS and meta["id"] == "me/drone-kseg" and meta["title"] == "drone-kseg"
    kernel = json.loads((result.notebook.parent / "kernel-metadata.json").read_text())
    assert set(kernel) == KERNEL_FIELDS
    assert kernel["id"] == "me/drone-seg-kseg-inference" == result.kernel_id
    assert kernel["code_file"] == result.notebook.name and (result.notebook.parent / kernel["code_file"]).is_file()
    assert (kernel["language"], kernel["kernel_type"], kernel["enable_internet"], kernel["enable_gpu"]) == (
        "python", "notebook", False, False,
    )  # fmt: skip
    assert kernel["dataset_sources"] == ["me/drone-kseg"] and kernel["competition_sources"] == ["drone-seg"]
    book = nbformat.read(result.notebook, as_version=4)
    nbformat.validate(book)
    assert str(root) not in result.notebook.read_text()  # nothing of this machine in the notebook
    assert not list(result.out.parent.glob(".out.*"))  # no temporary folder left


def test_the_notebook_writes_the_submission_kseg_writes_outside_it(packaged, tmp_path, monkeypatch):
    """Its cells (all but the offline install: kseg is installed here) on an input tree laid out as Kaggle
    mounts it give the same submission.csv, byte for byte, as kseg infer --bundle and kseg submit."""
    root, cfg, result = packaged
    inputs, working = tmp_path / "input", tmp_path / "working"
    inputs.mkdir()
    working.mkdir()
    os.symlink(root, inputs / "drone-seg")  # the competition's files, as the download has them
    os.symlink(result.dataset_dir, inputs / "drone-kseg")
    monkeypatch.setenv("KSEG_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KSEG_KAGGLE_WORKING", str(working))
    cells = [c.source for c in nbformat.read(result.notebook, as_version=4).cells if c.cell_type == "code"]
    assert "--no-index" in cells[1] and "kseg" in cells[1]
    namespace: dict = {}
    for source in [cells[0], *cells[2:]]:
        exec(compile(source, "notebook", "exec"), namespace)  # noqa: S102 - our own notebook
    assert set(namespace["TIMES"]) == {"predict", "submit", "total"}

    from kseg.prediction.ensemble import load_bundle
    from kseg.prediction.infer import competition_test_images, run_inference
    from kseg.submission import write_submission

    bundle = load_bundle(result.dataset_dir / "model.kseg")
    run_inference(bundle, competition_test_images(cfg.data), tmp_path / "p", cfg.infer.tta)  # kseg infer --tta
    outside = fast_config(root, f"submission.predictions={tmp_path / 'p'}", f"submission.path={tmp_path / 's.csv'}")
    assert write_submission(outside).path.read_bytes() == (working / "submission.csv").read_bytes()


def test_a_failed_package_leaves_no_folder_and_a_run_without_folds_is_refused(trained_template, comp, tmp_path):
    root = copy_comp(trained_template, tmp_path / "trained")

    def broken(folder: Path, python_version: str) -> list[Path]:
        raise KsegError("scipy has no wheel for Python 3.99")

    with pytest.raises(KsegError, match="scipy has no wheel"):
        package(fast_config(root), tmp_path / "out", "drone-seg", "me/drone-kseg", wheelhouse=broken)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(KsegError, match="has no trained folds .*run 'kseg train --fold all' first"):
        package(fast_config(comp), tmp_path / "out", "drone-seg", "me/drone-kseg", wheelhouse=_fake_wheelhouse)


@pytest.mark.parametrize(
    ("competition", "dataset", "message"),
    [
        ("Drone Seg", "me/drone-kseg", "--competition 'Drone Seg' is not a competition slug"),
        ("drone-seg", "drone-kseg", "--dataset 'drone-kseg' is not OWNER/NAME"),
        ("drone-seg", "me/Drone_Kseg", "is not OWNER/NAME"),
        ("drone-seg", "me/ab", "is not OWNER/NAME"),
    ],
)
def test_names_that_are_not_kaggle_shaped(competition, dataset, message):
    with pytest.raises(KsegError, match=message):
        check_names(competition, dataset)


def test_the_command_line_says_what_is_wrong_in_one_line(runner, trained_template, tmp_path):
    root = copy_comp(trained_template, tmp_path)
    sets = [x for item in FAST for x in ("--set", item)]
    args = ["package", str(tmp_path / "out"), "-c", str(root / "kseg.yaml"), *sets, "--competition", "drone-seg"]
    result = runner.invoke(app, [*args, "--dataset", "drone"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is not OWNER/NAME" in " ".join(result.output.split()) and not (tmp_path / "out").exists()
    result = runner.invoke(app, [*args, "--dataset", "me/drone-kseg", "--python-version", "three"])
    assert result.exit_code == 1 and "--python-version 'three' is not X.Y" in " ".join(result.output.split())


def test_the_wheelhouse_pins_kseg_s_dependencies_but_not_torch():
    pins = dict(p.split("==") for p in pinned_requirements("3.11"))
    assert {"segmentation-models-pytorch", "timm", "albumentations", "pydantic", "typer", "pandas"} <= set(pins)
    assert not {"torch", "torchvision", "numpy", "pillow", "kseg"} & set(pins)  # the image has them


@pytest.mark.slow
def test_the_real_wheelhouse_builds_from_the_package_index(tmp_path):
    from kseg.codecomp.wheels import build_wheelhouse

    wheels = build_wheelhouse(tmp_path / "wheels", "3.11")
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert "kseg" in names and "timm" in names and "segmentation-models-pytorch" in names
    assert not any(n.startswith("torch") and n in ("torch", "torchvision") for n in names)
    shutil.rmtree(tmp_path / "wheels")


@pytest.fixture(scope="module")
def real_package(trained_template, tmp_path_factory):
    """The session's trained run packaged with its real wheelhouse (pip's package index, as kseg package)."""
    root = copy_comp(trained_template, tmp_path_factory.mktemp("real"))
    cfg = fast_config(root)
    return root, cfg, package(cfg, root.parent / "out", "drone-seg", "me/drone-kseg", gpu=False)


@pytest.mark.slow
def test_a_rehearsal_submits_what_kseg_submits_outside_the_notebook(real_package, tmp_path):
    """Offline (a network namespace), in a fresh environment without kseg, the notebook installs kseg from
    the wheels and writes the same submission.csv, byte for byte, as kseg infer --bundle + kseg submit."""
    from kseg.codecomp.rehearse import rehearse
    from kseg.prediction.ensemble import load_bundle
    from kseg.prediction.infer import competition_test_images, run_inference
    from kseg.submission import write_submission

    root, cfg, result = real_package
    seen = rehearse(result.out, test_images=800, keep=tmp_path / "scratch")
    assert seen.valid and seen.isolated and seen.n_images == 8 and seen.install_s > 0 and seen.peak_mib > 0
    assert seen.projected_s > seen.predict_s * 99  # 800 images projected from 8
    bundle = load_bundle(result.dataset_dir / "model.kseg")
    run_inference(bundle, competition_test_images(cfg.data), tmp_path / "p", cfg.infer.tta)
    outside = fast_config(root, f"submission.predictions={tmp_path / 'p'}", f"submission.path={tmp_path / 's.csv'}")
    inside = tmp_path / "scratch" / "working" / "submission.csv"
    assert write_submission(outside).path.read_bytes() == inside.read_bytes()


@pytest.mark.slow
def test_a_missing_wheel_fails_the_rehearsal_with_the_dependency_s_name(real_package, tmp_path):
    from kseg.codecomp.rehearse import rehearse

    _, _, result = real_package
    broken = tmp_path / "out"
    shutil.copytree(result.out, broken)
    for wheel in (broken / "dataset" / "wheels").glob("timm-*.whl"):
        wheel.unlink()
    with pytest.raises(KsegError, match=r"cell 2 of the notebook .*failed: .*the wheelhouse lacks timm"):
        rehearse(broken)


class StandInKaggle:
    """The kaggle package's API at kseg's boundary: records the calls, knows the datasets in ``known``."""

    def __init__(self, known=(), error=None):
        self.known, self.error, self.calls = set(known), error, []

    def dataset_status(self, dataset):
        self.calls.append(("dataset_status", dataset))
        if dataset not in self.known:
            raise ValueError("404 Not Found")
        return "ready"

    def dataset_create_new(self, folder, public=False, dir_mode="skip"):
        self.calls.append(("dataset_create_new", Path(folder).name, public, dir_mode))
        return {"error": self.error, "url": "https://www.kaggle.com/datasets/me/drone-kseg"}

    def dataset_create_version(self, folder, version_notes, dir_mode="skip"):
        self.calls.append(("dataset_create_version", Path(folder).name, version_notes, dir_mode))
        return {"error": self.error}

    def kernels_push(self, folder):
        self.calls.append(("kernels_push", sorted(p.name for p in Path(folder).iterdir())))
        return type("Response", (), {"error": None, "url": "https://www.kaggle.com/code/me/drone-seg-kseg-inference"})()


def test_push_creates_the_dataset_then_versions_it_and_pushes_the_notebook(packaged):
    from kseg.codecomp.push import push_package

    _, _, result = packaged
    args = (result.dataset_dir, result.notebook.parent, "me/drone-kseg", result.kernel_id, "drone-seg", "v2")
    api = StandInKaggle()
    pushed = push_package(*args, api=api)
    assert api.calls == [
        ("dataset_status", "me/drone-kseg"),
        ("dataset_create_new", "dataset", False, "zip"),  # private; wheels/ travels zipped
        ("kernels_push", ["drone-seg-kseg-inference.ipynb", "kernel-metadata.json"]),
    ]
    assert pushed.new_dataset and pushed.kernel_url.endswith("/code/me/drone-seg-kseg-inference")
    assert "kaggle competitions submit drone-seg -k me/drone-seg-kseg-inference" in pushed.submit_hint
    again = StandInKaggle(known={"me/drone-kseg"})
    assert not push_package(*args, api=again).new_dataset
    assert again.calls[1] == ("dataset_create_version", "dataset", "v2", "zip")
    with pytest.raises(KsegError, match="Kaggle refused the dataset me/drone-kseg: Slug is taken; fix it"):
        push_package(*args, api=StandInKaggle(error="Slug is taken"))


def test_a_push_without_kaggle_credentials_is_one_line(runner, trained_template, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setattr("kseg.codecomp.package.build_wheelhouse", _fake_wheelhouse)
    root = copy_comp(trained_template, tmp_path)
    sets = [x for item in FAST for x in ("--set", item)]
    args = ["package", str(tmp_path / "out"), "-c", str(root / "kseg.yaml"), *sets, "--competition", "drone-seg"]
    result = runner.invoke(app, [*args, "--dataset", "me/drone-kseg", "--push"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Kaggle authentication failed" in text or "needs the kaggle package" in text


@pytest.mark.slow
def test_a_dependency_without_a_wheel_for_the_target_python_is_named(tmp_path, monkeypatch):
    from kseg.codecomp import wheels

    monkeypatch.setattr(wheels, "pinned_requirements", lambda version: ["timm==1.0.31", "no-such-dependency==1.0"])
    with pytest.raises(KsegError, match=r"^no-such-dependency has no wheel for Python 3\.11 on manylinux x86-64"):
        wheels.build_wheelhouse(tmp_path / "wheels", "3.11")


def test_a_rehearsal_without_the_competition_s_files_says_where_to_give_them(packaged, tmp_path):
    from kseg.codecomp.rehearse import rehearse

    root, _, result = packaged
    shutil.move(root, tmp_path / "moved")  # the competition's download is not where the config says
    with pytest.raises(KsegError, match=r"the competition's files are not at .*; give --images DIR"):
        rehearse(result.out)
    with pytest.raises(KsegError, match=r"--images .*nowhere is not a folder"):
        rehearse(result.out, images=tmp_path / "nowhere")
    with pytest.raises(KsegError, match=r"kernel-metadata.json does not exist; write the package with 'kseg package'"):
        rehearse(tmp_path)
