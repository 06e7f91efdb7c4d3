"""The progress lines of long runs and long decodes: counts, rates and ETA from a fake clock;
quiet when short or -q."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_dsocr.progress import (DECODE_EVERY_S, DECODE_START_AFTER_S, START_AFTER_S, DecodeProgress, Progress,
                                   ProgressReporter, format_duration, terminal_writer)


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


def decode(progress: DecodeProgress, clock: Clock, steps: int, step_s: float, label: str = "page_003") -> None:
    """One decode of ``steps`` tokens, each step taking ``step_s`` on the fake clock."""
    progress.on_decode_start(label)
    for tokens in range(1, steps + 1):
        clock.now += step_s
        progress.on_decode_step(tokens)
    progress.on_decode_end(steps)


def test_a_short_decode_prints_nothing():
    clock, lines = Clock(), []
    progress = DecodeProgress(lines.append, clock)
    decode(progress, clock, steps=100, step_s=(DECODE_START_AFTER_S - 0.5) / 100)
    assert lines == []


def test_a_long_decode_prints_tokens_and_rate_at_most_once_per_interval():
    clock, lines = Clock(), []
    progress = DecodeProgress(lines.append, clock)
    # 1,800 tokens at 180 tokens/s: 10 s of decoding
    decode(progress, clock, steps=1800, step_s=1 / 180)
    decoding = [line for line in lines if " decoding: " in line]
    # from the threshold to the end, one line per interval (the clock steps in 1/180 s)
    assert len(decoding) == int((10.0 - DECODE_START_AFTER_S) / DECODE_EVERY_S) + 1
    assert decoding[0] == f"pytest-dsocr: page_003 decoding: {int(DECODE_START_AFTER_S * 180)} tokens, 180 tokens/s"
    assert "pytest-dsocr: page_003 decoding: 1,260 tokens, 180 tokens/s" in decoding
    assert lines[-1] == "pytest-dsocr: page_003 decoded: 1,800 tokens in 10s, 180 tokens/s"
    # the next decode starts quiet again
    lines.clear()
    decode(progress, clock, steps=10, step_s=0.01, label="page_004")
    assert lines == []


def test_a_step_before_the_threshold_only_reads_the_clock():
    reads = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    progress = DecodeProgress(lambda line: reads.append(line), clock)
    progress.on_decode_start("page_001")
    for tokens in range(1, 1001):
        progress.on_decode_step(tokens)
    progress.on_decode_end(1000)
    assert reads == [1] * 1001  # one read at the start, one per step, nothing written


def test_decode_lines_pass_the_output_capture():
    events = []

    class Capture:
        def global_and_fixture_disabled(self):
            class Suspended:
                def __enter__(self):
                    events.append("suspended")

                def __exit__(self, *exc):
                    events.append("resumed")
            return Suspended()

    terminal = Terminal()
    write = terminal_writer(terminal, Capture())
    write("pytest-dsocr: page_001 decoding: 5 tokens, 1 tokens/s")
    assert events == ["suspended", "resumed"] and terminal.lines == ["pytest-dsocr: page_001 decoding: 5 tokens, 1 tokens/s"]
    terminal_writer(terminal)("no capture manager")  # -s / -p no:capture
    assert terminal.lines[-1] == "no capture manager"
