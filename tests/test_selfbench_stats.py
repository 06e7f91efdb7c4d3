"""The verdicts and intervals the GPU self-benchmark prints (benchmarks/perf/common.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "perf"))
from common import judge, median_interval, ratio_interval  # noqa: E402


def test_a_goal_is_met_only_by_the_whole_interval():
    assert judge(0.8, 0.95, 1.0, at_most=True) == "MET"
    assert judge(0.9, 1.1, 1.0, at_most=True) == "within noise"  # the interval holds the goal
    assert judge(1.05, 1.2, 1.0, at_most=True) == "MISSED"
    assert judge(8.5, 9.0, 8.0, at_most=False) == "MET"
    assert judge(7.0, 7.9, 8.0, at_most=False) == "MISSED"


def test_paired_ratio_interval_holds_the_ratio_of_medians():
    slow = [10.0, 11.0, 12.0, 10.5, 11.5]
    fast = [5.0, 5.6, 6.1, 5.2, 5.7]
    value, low, high = ratio_interval(fast, slow)
    assert value == pytest.approx(5.6 / 11.0)
    assert low <= value <= high < 1.0
    median, low, high = median_interval(slow)
    assert median == 11.0 and low <= median <= high
