"""Progress of a long run in the terminal: one line per finished sample, and lines of a long decode.

``pytest-dsocr: 120/1355 samples, 2 failed, 1.84 samples/s, ETA 11m 1s`` after each stage test
once the run has gone on for :data:`START_AFTER_S` (short runs stay as quiet as pytest is);
nothing under ``-q``. The rate is samples over the wall time since the first stage test
started, so warmup rounds, outputs and the harness are in it: the ETA is what the user waits.

A page that decodes for longer than :data:`DECODE_START_AFTER_S` also gets
``pytest-dsocr: page_003 decoding: 1,200 tokens, 180 tokens/s`` at most every
:data:`DECODE_EVERY_S` (:class:`DecodeProgress`, the engine's decode observer), written past
pytest's output capture because the test is still running; a short decode prints nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from pytest_dsocr.stages import BENCHMARK_STAGES

START_AFTER_S = 5.0  # no progress lines in a run that has not taken this long yet
DECODE_START_AFTER_S = 3.0  # no decode lines for a decode that has not taken this long yet
DECODE_EVERY_S = 1.0  # at most one decode line this often


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
    """pytest hooks that print :class:`Progress` after each finished stage test; :attr:`decodes`
    is the decode observer the session's engine reports to (lines of long decodes)."""

    def __init__(self, terminalreporter, total: int | None, clock: Callable[[], float] = time.monotonic,
                 capture_manager=None) -> None:
        self.terminal = terminalreporter
        self.progress = Progress(total, clock)
        self.decodes = DecodeProgress(terminal_writer(terminalreporter, capture_manager), clock)

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


class DecodeProgress:
    """Lines of one long decode: tokens so far and tokens/s, at most every :data:`DECODE_EVERY_S`;
    a :class:`pytest_dsocr.engine.DecodeObserver` (structurally: this module does not load torch).

    The engine calls :meth:`on_decode_step` once per step inside the timed decode, so all it
    does before the first line is due is one clock read and one comparison.
    """

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 start_after_s: float | None = None, every_s: float = DECODE_EVERY_S) -> None:
        """``start_after_s`` defaults to :data:`DECODE_START_AFTER_S` as it is now (tests lower it)."""
        self.write = write
        self.clock = clock
        self.start_after_s = DECODE_START_AFTER_S if start_after_s is None else start_after_s
        self.every_s = every_s
        self.label = ""
        self.started = 0.0
        self.next_line = float("inf")  # no decode running: never due
        self.lines = 0  # lines written for the running decode

    def on_decode_start(self, label: str) -> None:
        self.label = label
        self.started = self.clock()
        self.next_line = self.started + self.start_after_s
        self.lines = 0

    def on_decode_step(self, tokens: int) -> None:
        now = self.clock()
        if now < self.next_line:
            return
        self.next_line = now + self.every_s
        self.lines += 1
        self.write(self.line("decoding", tokens, now))

    def on_decode_end(self, tokens: int) -> None:
        if self.lines:  # a decode that showed progress says how it ended
            self.write(self.line("decoded", tokens, self.clock()))
        self.next_line = float("inf")
        self.lines = 0

    def line(self, verb: str, tokens: int, now: float) -> str:
        elapsed = now - self.started
        rate = f", {tokens / elapsed:,.0f} tokens/s" if elapsed > 0 else ""
        took = f" in {format_duration(elapsed)}" if verb == "decoded" else ""
        return f"pytest-dsocr: {self.label} {verb}: {tokens:,} tokens{took}{rate}"


def terminal_writer(terminalreporter, capture_manager=None) -> Callable[[str], None]:
    """Write one line to the terminal from inside a running test: past pytest's output capture
    (as pytest-benchmark does), or a captured line would only show if the test failed."""

    def suspended() -> AbstractContextManager:
        return capture_manager.global_and_fixture_disabled() if capture_manager is not None else nullcontext()

    def write(line: str) -> None:
        with suspended():
            terminalreporter.ensure_newline()
            terminalreporter.write_line(line)

    return write
