"""pytest-dsocr stays out of sessions that do not use it, and starts by itself in those that do.

Each run is a fresh subprocess: what pytest-dsocr does at configure time (signal handlers,
config loading) must not leak in from this session, which is itself a pytest-dsocr session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

UNRELATED = '''
import signal
import sys

import pytest


def test_nothing_of_dsocr_happened(request):
    from pytest_dsocr.plugin import STATE_KEY

    assert request.config.stash.get(STATE_KEY, None) is None  # no config loaded
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # no handler installed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for module in ("pytest_dsocr.config", "pytest_dsocr.session", "omegaconf", "torch"):
        assert module not in sys.modules, module


@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(n):
    assert n
'''


def assert_untouched(pytester: pytest.Pytester, result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert "pytest-dsocr" not in output and "run dir" not in output
    assert not (pytester.path / "runs").exists()


def test_an_unrelated_session_is_left_alone(pytester):
    pytester.makepyfile(test_unrelated=UNRELATED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert_untouched(pytester, result)
    # Test order is the project's own.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.stdout.fnmatch_lines(["*test_nothing_of_dsocr_happened*", "*test_parametrized?1?*",
                                 "*test_parametrized?2?*"])


def test_an_unrelated_xdist_session_is_left_alone(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_unrelated=UNRELATED.replace('"torch"', '"pytest_dsocr.config"'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=3)
    assert_untouched(pytester, result)


def test_a_dsocr_fixture_starts_the_plugin_without_options(pytester):
    pytester.makepyfile(test_uses_config='''
import signal

def test_config(dsocr_config):
    assert dsocr_config.model.family == "deepseek_ocr"
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the clean-stop handler is on
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "runs").exists()  # nothing measured: no run dir needed


def test_a_stage_test_without_options_makes_its_run(pytester):
    """No option and no -m: the marker collected is enough (as pytest-benchmark's fixture is)."""
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "page_001")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*pytest-dsocr*", "*run dir: *runs*"])
    runs = list((pytester.path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()


def test_stage_tests_under_xdist_without_options_make_one_merged_run(pytester):
    """Workers start pytest-dsocr when they collect a stage test; they share one run dir, and
    the controller (which saw no reason to start) merges and reports it."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-k", "page_005",
                                           timeout=300)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*pytest-dsocr*", "*Run complete*1 measured runs*"])
    runs = list((pytester.path / "runs").iterdir())
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["complete"] is True
    assert [s["sample_id"] for s in metrics["samples"]] == ["page_005"]
    assert {path.name for path in (runs[0] / "workers").iterdir()} <= {"gw0", "gw1"}
