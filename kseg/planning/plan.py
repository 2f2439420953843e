"""The plan: config keys decided from a fingerprint, each with its reason, flagged where it is a guess
(the rules are in ``kseg.planning.rules``; they read the fingerprint only, so each is tested on
fingerprints written by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METRICS = ("row_dice", "row_iou", "dataset_iou", "instance_fbeta")


@dataclass
class Decision:
    """One config key and why.

    Attributes:
        key: Dotted config key (``data.layout``).
        value: Its value; ``None`` with a ``question`` writes the key commented out.
        reason: The evidence, in words.
        sure: ``False`` for a guess the user should check (flagged in the table and the YAML).
        question: What kseg init could not decide, asked in the YAML.
    """

    key: str
    value: Any
    reason: str
    sure: bool = True
    question: str | None = None


@dataclass
class PlanOptions:
    """What the user tells ``kseg init``.

    Attributes:
        metric: ``--metric``: the competition's metric, else decided from the layout.
        gpu_memory: ``--gpu-memory``: the GPU memory the plan fits, GiB.
        names_given: ``--classes`` named the classes.
    """

    metric: str | None = None
    gpu_memory: float = 16.0
    names_given: bool = False


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)

    def add(self, key: str, value: Any, reason: str, sure: bool = True) -> None:
        """Decide ``key`` (a later decision of the same key replaces the earlier one in its place)."""
        self._put(Decision(key, value, reason, sure))

    def ask(self, key: str, suggestion: Any, question: str) -> None:
        """Leave ``key`` undecided: written commented out, with ``suggestion`` and the question."""
        self._put(Decision(key, suggestion, question, sure=False, question=question))

    def _put(self, decision: Decision) -> None:
        for i, d in enumerate(self.decisions):
            if d.key == decision.key:
                self.decisions[i] = decision
                return
        self.decisions.append(decision)

    @property
    def flagged(self) -> list[Decision]:
        return [d for d in self.decisions if not d.sure]

    def tree(self) -> dict[str, Any]:
        """The decided keys as a nested config (questions left out)."""
        out: dict[str, Any] = {}
        for d in self.decisions:
            if d.question is not None:
                continue
            node = out
            *parents, leaf = d.key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = d.value
        return out

    def get(self, key: str) -> Any:
        return next((d.value for d in self.decisions if d.key == key and d.question is None), None)
