"""The house's figures (issue 28): modules per folder, the longest classes and modules, the functions that
take the whole ``Config``, and README.md's length. Reads the source only; seconds.

Usage: python scripts/house_figures.py [--smoke]   (--smoke: the same, it is already small; CI runs it)
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kseg"
CONFIG_TYPES = {"Config", "Config | None"}


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def modules_per_folder(trees: dict[Path, ast.Module]) -> Counter[str]:
    """Modules (``__init__`` left out) per folder of the package; ``kseg`` is the top level."""
    return Counter("/".join(path.relative_to(ROOT).parts[:-1]) for path in trees if path.name != "__init__.py")


def longest_classes(trees: dict[Path, ast.Module], n: int = 5) -> list[tuple[int, str]]:
    rows = [
        (node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}")
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    ]
    return sorted(rows, reverse=True)[:n]


def config_takers(trees: dict[Path, ast.Module]) -> list[str]:
    """Every function with a parameter annotated ``Config`` (one row per such parameter)."""
    rows = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                for param in params:
                    if param.annotation is not None and ast.unparse(param.annotation) in CONFIG_TYPES:
                        rows.append(f"{path.relative_to(ROOT)}:{node.name}({param.arg})")
    return sorted(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same figures (they take seconds)")
    parser.add_argument("--list", action="store_true", help="also list the functions that take Config")
    args = parser.parse_args()
    trees = _trees()
    print("modules per folder (without __init__):")
    for folder, count in sorted(modules_per_folder(trees).items()):
        print(f"  {folder:24s} {count}")
    print("longest classes (lines):")
    for lines, name in longest_classes(trees):
        print(f"  {lines:4d}  {name}")
    longest = max((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in trees)
    print(f"longest module: {longest[1]} ({longest[0]} lines)")
    takers = config_takers(trees)
    print(f"functions that take the whole Config: {len(takers)}")
    if args.list:
        for row in takers:
            print(f"  {row}")
    print(f"README.md: {len((ROOT / 'README.md').read_text().splitlines())} lines")


if __name__ == "__main__":
    main()
