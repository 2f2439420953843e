"""The prepared GPU check (issue 19): its wheel list against kseg's requirements, its CPU form end to end,
and the GPU paths as tests marked ``gpu`` (skipped without CUDA)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# what the bare GPU machines have (issue 19), and therefore what those packages need, except pydantic:
# the machines lack it (their typer predates its dependency on pydantic)
GPU_HAS = ["torch", "torchvision", "timm", "opencv-python-headless", "pandas", "typer", "rich", "matplotlib"]
GPU_LACKS = ["pydantic"]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _requires(package: str, extras: tuple[str, ...] = ()) -> list[str]:
    try:
        found = md.requires(package) or []
    except md.PackageNotFoundError:
        return []
    out = []
    for text in found:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            out.append(_name(req.name))
    return out


def _closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _requires(name)
    return seen


def _listed() -> set[str]:
    text = (REPO / "scripts" / "gpu_wheels.sh").read_text()
    body = text.split("PACKAGES=(", 1)[1].split(")", 1)[0]
    return {_name(word) for line in body.splitlines() for word in line.split("#", 1)[0].split()}


def test_the_wheel_list_is_what_kseg_needs_and_the_gpu_machine_lacks():
    needed = _closure(_requires("kseg")) - {"kseg"}
    present = _closure(GPU_HAS) - _closure(GPU_LACKS)
    missing = sorted(needed - present - _listed())
    assert not missing, f"scripts/gpu_wheels.sh lacks {missing}: kseg needs them and the GPU machine has none"
    # nothing listed that kseg (with its dev extra, for ttach) does not need
    everything = _closure(_requires("kseg", ("dev",)))
    assert _listed() <= everything, sorted(_listed() - everything)
    assert {"pydantic", "segmentation-models-pytorch", "albumentations", "scipy", "ttach"} <= _listed()


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form runs where there is no CUDA")
def test_the_cpu_form_runs_every_row_and_writes_its_figures(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "no CUDA GPU here: the GPU paths fall back to the CPU; toy sizes, no GPU figures"
    assert lines[-1] == "12 rows, 0 failed"  # the table comes last
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {row["name"]: row["status"] for row in figures["rows"]}
    assert status.pop("inference GPU = CPU") == "skipped"
    assert set(status.values()) == {"ok"}, status
    job = next(r for r in figures["rows"] if r["name"] == "drone-sized job")
    assert job["detail"]["rows"] == figures["sizes"]["job_images"] * 12
    assert not (tmp_path / "out" / "work").exists()  # scratch files removed


# ------------------------------------------------------------------------------------- GPU only

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_comp(tmp_path_factory):
    script = _script()
    root = tmp_path_factory.mktemp("gpu")
    return script, script.make_comp(root / "comp", 16, 4, 32, 64, 6), root


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(gpu_comp, amp):
    script, comp, root = gpu_comp
    text, detail = script.check_training(comp, root / amp, "cuda", amp, f"runtime.amp={amp}")
    assert detail["losses"][-1] < detail["losses"][0]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("label", "tol", "key"), [("channels_last", 1e-3, "channels_last"), ("compile", 1e-2, "compile")]
)
def test_channels_last_and_compile_match_eager_fp32_on_cuda(gpu_comp, label, tol, key):
    script, comp, root = gpu_comp
    script.check_close_first_epoch(comp, root / label, "cuda", label, tol, f"runtime.{key}=true", "runtime.amp='off'")


@pytest.mark.gpu
@gpu
def test_a_fold_resumed_on_cuda_equals_an_uninterrupted_one(gpu_comp):
    script, comp, root = gpu_comp
    script.check_resume(comp, root / "resume", "cuda")


@pytest.mark.gpu
@gpu
def test_inference_on_cuda_equals_the_cpu_and_an_fp16_bundle_agrees(gpu_comp):
    script, comp, root = gpu_comp
    script.check_training(comp, root / "trained", "cuda", "bf16", "runtime.amp=bf16")
    script.check_gpu_equals_cpu(comp, root / "trained", root / "infer")
    script.check_half_bundle(comp, root / "trained", script.fresh(root / "bundle"), "cuda")


@pytest.mark.gpu
@gpu
def test_torchrun_trains_with_nccl(gpu_comp):
    script, comp, root = gpu_comp
    script.check_torchrun(comp, root / "ddp", "cuda")
