"""The progress line of long runs: counts, rate and ETA from a fake clock; quiet when short or -q."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_dsocr.progress import START_AFTER_S, Progress, ProgressReporter, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def ensure_newline(self) -> None:
        pass

    def write_line(self, line: str) -> None:
        self.lines.append(line)


def report(when="call", outcome="passed", stage="direct_inference"):
    return SimpleNamespace(when=when, failed=outcome == "failed", passed=outcome == "passed",
                           keywords={stage: 1, "test_x": 1})


def test_line_counts_rate_and_eta():
    clock = Clock()
    progress = Progress(total=10, clock=clock)
    progress.start()
    clock.now += 8.0
    progress.finish_one(failed=False)
    progress.finish_one(failed=True)
    assert progress.line() == "pytest-dsocr: 2/10 samples, 1 failed, 0.25 samples/s, ETA 32s"
    assert Progress(total=None, clock=clock).line() == "pytest-dsocr: 0 samples, 0 failed"
    assert format_duration(3725) == "1h 2m" and format_duration(61) == "1m 1s"


def test_reporter_speaks_only_for_stage_tests_of_a_long_run():
    clock, terminal = Clock(), Terminal()
    reporter = ProgressReporter(terminal, total=3, clock=clock)
    reporter.pytest_runtest_logstart("t1", None)
    clock.now += 1.0
    reporter.pytest_runtest_logreport(report())  # 1 s into the run: still quiet
    assert terminal.lines == []
    clock.now += START_AFTER_S
    reporter.pytest_runtest_logreport(report(when="setup"))  # a passed setup is no sample
    reporter.pytest_runtest_logreport(report(stage="not_a_stage"))
    reporter.pytest_runtest_logreport(report(outcome="failed"))
    assert terminal.lines == ["pytest-dsocr: 2/3 samples, 1 failed, 0.33 samples/s, ETA 3s"]
    reporter.pytest_runtest_logreport(report(when="setup", outcome="failed"))  # failed before the call
    assert terminal.lines[-1].startswith("pytest-dsocr: 3/3 samples, 2 failed")
