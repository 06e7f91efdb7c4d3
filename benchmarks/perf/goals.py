"""Goals of the perf scripts: each check prints one MET or MISSED line, and a script that
misses any goal exits non-zero, so a run that falls short never reads as a pass.

    from goals import Goal, report
    return report([Goal("end to end", 12.5, "<=", 50.0, "ms")])
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

COMPARISONS = {"<=": operator.le, ">=": operator.ge}
EXIT_MISSED = 1  # a script's exit status when a goal was missed


@dataclass(frozen=True)
class Goal:
    """``value`` must be ``comparison`` (``<=`` or ``>=``) ``target``."""

    name: str
    value: float
    comparison: str
    target: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return COMPARISONS[self.comparison](self.value, self.target)

    def line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        verdict = "MET   " if self.met else "MISSED"
        return f"{verdict} {self.name}: {self.value:.3f}{unit} (goal {self.comparison} {self.target:g}{unit})"


def report(goals: list[Goal]) -> int:
    """Print one line per goal; the exit status: 0 when every goal is met, else EXIT_MISSED."""
    for goal in goals:
        print(goal.line())
    return 0 if all(goal.met for goal in goals) else EXIT_MISSED
