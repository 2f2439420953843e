"""The rehearsal's inner process (``python -m kseg.codecomp.runner SPEC.json``), started inside a network
namespace with nothing but a down loopback: it runs the notebook cell by cell with the Jupyter client in
the rehearsal's virtual environment (its kernel talks over Unix sockets, so it needs no network at all),
times each cell, and writes what happened to the spec's ``report`` file. Each cell's output tail is kept
for the report of a failure."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _tail(cell: dict, lines: int = 12) -> str:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(output.get("text", ""))
        elif output.get("output_type") == "error":
            texts.append(f"{output.get('ename')}: {output.get('evalue')}")
        elif "data" in output:
            texts.append(str(output["data"].get("text/plain", "")))
    return "\n".join("".join(texts).strip().splitlines()[-lines:])


def _peak_mib(manager) -> float:
    """The kernel process's peak resident memory (``VmHWM``), MiB; 0 where ``/proc`` does not say."""
    process = getattr(getattr(manager, "provisioner", None), "process", None)
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()  # type: ignore[union-attr]
    except (AttributeError, OSError):
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) / 1024


def main(spec_path: str) -> int:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    spec = json.loads(Path(spec_path).read_text())
    notebook = nbformat.read(spec["notebook"], as_version=4)
    # Kaggle's image, not this machine: no pip configuration, constraints or package index of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(spec["env"], PIP_CONFIG_FILE=os.devnull)
    kernels = Path(spec["scratch"]) / "jupyter" / "kernels" / "kseg-rehearsal"
    kernels.mkdir(parents=True, exist_ok=True)
    argv = [spec["python"], "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "rehearsal", "language": "python"}))
    os.environ["JUPYTER_PATH"] = str(kernels.parents[1])
    os.environ["JUPYTER_RUNTIME_DIR"] = str(Path(spec["scratch"]) / "runtime")
    manager = KernelManager(kernel_name="kseg-rehearsal", transport="ipc")
    manager.ip = str(Path(spec["scratch"]) / "kernel-ipc")  # absolute: the kernel runs in another folder
    resources = {"metadata": {"path": spec["working"]}}
    client = NotebookClient(notebook, km=manager, timeout=spec["timeout"], allow_errors=False, resources=resources)
    cells: list[dict] = []
    failed = None
    with client.setup_kernel(env=env, cwd=spec["working"]):
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            started = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except CellExecutionError:
                failed = index
            seconds = time.perf_counter() - started
            cells.append(
                {"index": index, "seconds": seconds, "first_line": cell.source.splitlines()[0], "tail": _tail(cell)}
            )
            if failed is not None:
                break
        peak = _peak_mib(manager)
    nbformat.write(notebook, spec["executed"])
    Path(spec["report"]).write_text(json.dumps({"cells": cells, "failed": failed, "peak_mib": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
