"""The wheelhouse an offline Kaggle notebook installs kseg from: kseg's own wheel and the wheels of every
dependency the notebook's image lacks (all of kseg's requirements except torch, torchvision and what they
bring), pinned to the versions this environment runs, for the target Python and manylinux."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from kseg.errors import KsegError

# what a Kaggle GPU or CPU image gives every notebook, so the wheelhouse leaves it out
PROVIDED = ("torch", "torchvision")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(package: str, python_version: str, extras: frozenset[str] = frozenset()) -> list[tuple[str, frozenset]]:
    """What ``package`` (with ``extras``) requires on ``python_version``, as installed here: names and the
    extras asked of them."""
    from packaging.requirements import Requirement

    try:
        found = md.requires(package) or []
    except md.PackageNotFoundError:
        return []
    where = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    needed = []
    for text in found:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**where, "extra": e}) for e in ("", *extras)):
            needed.append((normalise(req.name), frozenset(req.extras)))
    return needed


def closure(roots: list[str], python_version: str) -> set[str]:
    """Every installed distribution ``roots`` need on ``python_version``, themselves included (with the
    requirements of the extras they ask of each other)."""
    seen: set[tuple[str, frozenset]] = set()
    todo: list[tuple[str, frozenset]] = [(normalise(r), frozenset()) for r in roots]
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo += _requires(item[0], python_version, item[1])
    return {name for name, _ in seen}


def pinned_requirements(python_version: str) -> list[str]:
    """``name==version`` of every dependency the wheelhouse holds: kseg's closure less torch's and
    torchvision's, at the versions installed here."""
    needed = closure(["kseg"], python_version) - closure(list(PROVIDED), python_version) - {"kseg"}
    pins = []
    for name in sorted(needed):
        try:
            pins.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            raise KsegError(f"kseg needs {name}, which is not installed here; pip install -e . first") from None
    return pins


def source_root() -> Path:
    """kseg's source tree (the folder of its ``pyproject.toml``), to build its wheel from."""
    import kseg

    root = Path(kseg.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise KsegError(
            f"kseg package builds kseg's wheel from its source tree, and {root} has no pyproject.toml; install kseg "
            "from a clone with pip install -e ."
        )
    return root


def build_wheelhouse(folder: Path, python_version: str) -> list[Path]:
    """kseg's wheel and its dependencies' wheels into ``folder`` (binary wheels for ``python_version`` on
    manylinux x86-64, from the package index pip is configured with); returns the wheel files.

    Raises:
        KsegError: A dependency has no wheel for the target Python (named), or pip fails otherwise.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder), str(source_root())], "kseg")
    pins = pinned_requirements(python_version)
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    target = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    _pip(["download", "--no-deps", *target, *platforms, "--dest", str(folder), *pins], "dependencies", python_version)
    return sorted(folder.glob("*.whl"))


def _pip(args: list[str], what: str, python_version: str | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode == 0:
        return
    text = done.stderr + done.stdout
    missing = re.search(r"(?:No matching distribution found for|satisfies the requirement) ([^\s(]+)", text)
    if missing and python_version is not None:
        name = re.split(r"[=<>!~]", missing.group(1))[0]
        raise KsegError(
            f"{name} has no wheel for Python {python_version} on manylinux x86-64 in the package index; "
            "choose another --python-version, or install a version of it that has one"
        )
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
    raise KsegError(f"pip could not build the wheels of {what} ({tail}); check the package index pip uses")
