"""``kseg.yaml`` from a plan: every key with its reason as a comment, guesses marked ``CHECK``, undecided
keys written commented out with their question."""

from __future__ import annotations

from typing import Any

import yaml

from kseg.planning.plan import Decision, Plan

COMMENT_COLUMN = 44
SECTIONS = ("workdir", "data", "model", "train", "runtime", "split", "infer", "submission")


def scalar(value: Any) -> str:
    """A value as one line of YAML (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment(d: Decision) -> str:
    mark = "CHECK: " if not d.sure and d.question is None else ""
    return f"# {mark}{d.reason}"


def _line(indent: int, key: str, d: Decision) -> str:
    if d.question is not None:
        body = f"{'  ' * indent}# {key}: {scalar(d.value)}"
        return f"{body.ljust(COMMENT_COLUMN)}  # QUESTION: {d.question}"
    body = f"{'  ' * indent}{key}: {scalar(d.value)}"
    return f"{body.ljust(COMMENT_COLUMN)}  {_comment(d)}"


def render_yaml(plan: Plan, header: list[str]) -> str:
    """The config's text: ``header`` lines as comments, then the sections in ``SECTIONS`` order, keys in
    the order the rules decided them, nested by their dots."""
    lines = [f"# {h}" if h else "#" for h in header]
    by_section: dict[str, list[Decision]] = {}
    for d in plan.decisions:
        by_section.setdefault(d.key.split(".")[0], []).append(d)
    for section in sorted(by_section, key=lambda s: SECTIONS.index(s) if s in SECTIONS else len(SECTIONS)):
        decisions = by_section[section]
        if section == decisions[0].key:  # a top-level key
            lines += [_line(0, section, d) for d in decisions]
            continue
        lines.append(f"{section}:")
        opened: set[str] = set()
        parents: dict[str, int] = {}
        for d in decisions:
            parents.setdefault(d.key.rpartition(".")[0], len(parents))
        decisions = sorted(decisions, key=lambda d: parents[d.key.rpartition(".")[0]])  # stable: nested keys together
        for d in decisions:
            parts = d.key.split(".")[1:]
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                if parent not in opened:
                    opened.add(parent)
                    lines.append(f"{'  ' * depth}{parts[depth - 1]}:")
            lines.append(_line(len(parts), parts[-1], d))
    return "\n".join(lines) + "\n"
