"""Progress of a long run in the terminal: one line per finished sample.

``pytest-dsocr: 120/1355 samples, 2 failed, 1.84 samples/s, ETA 11m 1s`` after each stage test
once the run has gone on for :data:`START_AFTER_S` (short runs stay as quiet as pytest is);
nothing under ``-q``. The rate is samples over the wall time since the first stage test
started, so warmup rounds, outputs and the harness are in it: the ETA is what the user waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pytest_dsocr.stages import BENCHMARK_STAGES

START_AFTER_S = 5.0  # no progress lines in a run that has not taken this long yet


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


@dataclass
class Progress:
    """Counts finished stage tests and says how far the run is."""

    total: int | None  # stage tests collected (None: unknown, e.g. an xdist controller)
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    failed: int = 0
    started: float | None = field(default=None)

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def finish_one(self, failed: bool) -> None:
        self.start()
        self.done += 1
        self.failed += int(failed)

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def line(self) -> str:
        elapsed = self.elapsed_s
        rate = self.done / elapsed if elapsed > 0 else None
        parts = [f"{self.done}/{self.total} samples" if self.total else f"{self.done} samples",
                 f"{self.failed} failed"]
        if rate:
            parts.append(f"{rate:.2f} samples/s")
            if self.total:
                parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return "pytest-dsocr: " + ", ".join(parts)


class ProgressReporter:
    """pytest hooks that print :class:`Progress` after each finished stage test."""

    def __init__(self, terminalreporter, total: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.terminal = terminalreporter
        self.progress = Progress(total, clock)

    @staticmethod
    def is_stage_report(report) -> bool:
        return any(stage in report.keywords for stage in BENCHMARK_STAGES)

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        self.progress.start()

    def pytest_runtest_logreport(self, report) -> None:
        if not self.is_stage_report(report):
            return
        finished = report.when == "call" or (report.when == "setup" and not report.passed)
        if not finished:
            return
        self.progress.finish_one(failed=report.failed)
        if self.progress.elapsed_s >= START_AFTER_S:
            self.terminal.ensure_newline()
            self.terminal.write_line(self.progress.line())
