"""``kseg init``: the fingerprint of a download, the plan made from it, and its ``kseg.yaml`` written
with every decision explained."""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kseg.common import Progress
from kseg.config import build_config
from kseg.errors import ConfigError, InitError
from kseg.io import atomic_write_text
from kseg.planning.fingerprint import Fingerprint
from kseg.planning.plan import METRICS, Plan, PlanOptions
from kseg.planning.rules import make_plan
from kseg.planning.survey import take_fingerprint
from kseg.planning.writer import render_yaml

CONFIG_NAME = "kseg.yaml"
CACHE = Path(".kseg-cache") / "fingerprint.json"
_NAME_COLOUR = re.compile(r"^\s*([^=]+?)\s*(?:=\s*(#?[0-9A-Fa-f]{6}))?\s*$")


@dataclass
class InitResult:
    """What ``kseg init`` found, decided and wrote.

    Attributes:
        fingerprint: The download's fingerprint.
        plan: The decisions.
        config: The written ``kseg.yaml`` (``None`` when nothing was written).
        seconds: Wall time.
    """

    fingerprint: Fingerprint
    plan: Plan
    config: Path | None
    seconds: float


def parse_classes(text: str | None) -> list[tuple[str, str | None]] | None:
    """``--classes a,b`` or ``--classes a=#RRGGBB,b=#RRGGBB`` as ``(name, colour or None)`` pairs."""
    if text is None:
        return None
    out: list[tuple[str, str | None]] = []
    for item in text.split(","):
        match = _NAME_COLOUR.match(item)
        if not item.strip() or match is None:
            raise InitError(f"--classes {text!r} is not a list of names (a,b,c) or of name=#RRGGBB pairs; fix the list")
        colour = match.group(2)
        out.append((match.group(1), ("#" + colour.lstrip("#").upper()) if colour else None))
    if len({n for n, _ in out}) != len(out):
        raise InitError(f"--classes {text!r} names a class twice; give each class once")
    if any(c for _, c in out) and not all(c for _, c in out):
        raise InitError(f"--classes {text!r} gives colours to some classes only; give every class its colour, or none")
    return out


def run_init(
    root: Path,
    *,
    out: Path | None = None,
    force: bool = False,
    metric: str | None = None,
    classes: str | None = None,
    gpu_memory: float = 16.0,
    workers: int | None = None,
    write: bool = True,
    on_progress: Progress | None = None,
) -> InitResult:
    """Fingerprint ``root``, plan the run, and write the config (``out``, default ``root/kseg.yaml``).

    Args:
        root: The unpacked download.
        out: Where to write the config; its ``data.root`` points back at ``root``.
        force: Replace an existing config.
        metric: The competition's metric (``submission.metric``), else decided from the layout.
        classes: ``--classes``: names (``a,b``) or names with colours (``a=#RRGGBB,...``).
        gpu_memory: GiB of GPU memory the plan fits.
        workers: Processes that read files.
        write: ``False`` decides without writing (``kseg init --json``).
        on_progress: Optional ``callback(done, total)`` over the files read.

    Raises:
        InitError: If the config exists (without ``force``), the folder is not a download, or its files
            contradict each other; nothing is written then.
    """
    started = time.perf_counter()
    root = Path(root)
    out = Path(out) if out is not None else root / CONFIG_NAME
    if write and out.exists() and not force:
        raise InitError(f"{out} exists; pass --force to replace it (it is kept until the new one is written)")
    if metric is not None and metric not in METRICS:
        raise InitError(f"--metric {metric!r} is not one of {', '.join(METRICS)}; pick one of those")
    names = parse_classes(classes)
    fp = take_fingerprint(root, names=names, workers=workers, cache=out.parent / CACHE, on_progress=on_progress)
    plan = make_plan(fp, PlanOptions(metric=metric, gpu_memory=gpu_memory, names_given=names is not None))
    relative = os.path.relpath(Path(fp.root), out.parent.resolve())
    where = relative if not relative.startswith("..") else fp.root  # near this file: relative; else absolute
    plan.add("data.root", where, "the download" + (": this file's folder" if where == "." else ""))
    written = _write(out, plan, fp) if write else None
    return InitResult(fp, plan, written, time.perf_counter() - started)


def _header(fp: Fingerprint, plan: Plan) -> list[str]:
    today = datetime.date.today().isoformat()
    return [
        f"kseg config written by `kseg init` on {today} from {fp.root}.",
        "Each key says why it was chosen. 'CHECK' marks a guess the files could not prove; a commented key is a",
        "question kseg init could not answer. Sizes and batch are planned for the GPU memory given to",
        "kseg init --gpu-memory. Relative paths are resolved against this file's folder.",
        f"to check: {', '.join(d.key for d in plan.flagged)}",
        "",
    ]


def _write(out: Path, plan: Plan, fp: Fingerprint) -> Path:
    """Write the config atomically, once its text loads as a valid config from ``out``'s folder."""
    text = render_yaml(plan, _header(fp, plan))
    try:
        build_config(yaml.safe_load(text), out.parent.resolve(), str(out))
    except ConfigError as exc:  # a rule wrote what the schema refuses: a bug, reported as one line
        raise InitError(f"kseg init planned a config that does not load ({exc}); please report this") from None
    atomic_write_text(out, text)
    return out
