"""The perf scripts' goals: a missed goal prints MISSED and makes the script exit non-zero."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parent.parent / "benchmarks" / "perf"


def load(name: str):
    """A perf script as a module (they are scripts, not a package: their folder goes on sys.path)."""
    if str(PERF) not in sys.path:
        sys.path.insert(0, str(PERF))
    spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_missed_goal_prints_missed_and_exits_non_zero(capsys):
    goals = load("goals")
    assert goals.report([goals.Goal("flush", 2.0, "<=", 5.0, "ms")]) == 0
    assert capsys.readouterr().out == "MET    flush: 2.000 ms (goal <= 5 ms)\n"
    assert goals.report([goals.Goal("flush", 2.0, "<=", 5.0, "ms"), goals.Goal("ratio", 45.0, ">=", 100.0, "x")]) \
        == goals.EXIT_MISSED != 0
    assert "MISSED ratio: 45.000 x (goal >= 100 x)" in capsys.readouterr().out


def test_bench_sweeps_judges_its_end_to_end_ratio_and_time():
    bench = load("bench_sweeps")
    missed = {goal.name for goal in bench.goals(45.0, 12.0, True, True) if not goal.met}
    assert missed == {"end to end rebuild / reuse"}
    missed = {goal.name for goal in bench.goals(150.0, 80.0, True, False) if not goal.met}
    assert missed == {"all three sweeps end to end", "identical numbers and CSV files (1 = yes)"}
    assert all(goal.met for goal in bench.goals(150.0, 12.0, True, True))
