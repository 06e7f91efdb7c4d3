"""What a session has to tell its user besides the numbers: why stage tests were skipped, and
pytest-dsocr's own warnings.

Both are otherwise easy to miss: pytest shows skip reasons only with ``-rs`` and log records
only with ``--log-cli-level``. :class:`SessionNotes` collects them for the whole session (a
``logging`` handler on the ``pytest_dsocr`` logger at WARNING, and a pytest hook on the test
reports) so the plugin prints them in its terminal section and writes them to metrics.json's
``notes`` section and the summary. Repeated messages are kept once, with a count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pytest_dsocr.stages import BENCHMARK_STAGES

LOGGER = "pytest_dsocr"  # every module logs under it (pytest_dsocr.<module>)
SKIP_PREFIX = "Skipped: "  # pytest's prefix of a skip reason


def skip_reason(longrepr: Any) -> str:
    """The reason of a skipped test's report (``(path, line, "Skipped: why")`` for skips)."""
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = str(reason).strip()
    return reason[len(SKIP_PREFIX):] if reason.startswith(SKIP_PREFIX) else reason


def stage_of(keywords: Mapping[str, Any]) -> str | None:
    """The benchmark stage a test report belongs to (its marker is among the keywords)."""
    return next((stage for stage in BENCHMARK_STAGES if stage in keywords), None)


class SessionNotes(logging.Handler):
    """Skip reasons of stage tests and pytest-dsocr's warnings, collected for one session.

    Registered as a pytest plugin (for the test reports) and, between :meth:`install` and
    :meth:`uninstall`, as a handler of the ``pytest_dsocr`` logger. A session started inside
    another (pytester) installs its own; only the innermost one collects, so the outer session
    never reports the inner one's warnings.
    """

    active: list[SessionNotes] = []  # installed handlers, innermost last

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: dict[str, int] = {}  # message -> times logged
        self.skips: dict[tuple[str, str], int] = {}  # (stage, reason) -> tests skipped
        self._installed = False

    # -- collecting ---------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if not SessionNotes.active or SessionNotes.active[-1] is not self:
            return
        try:
            message = record.getMessage().strip().splitlines()[0]
        except Exception:  # a bad format string in someone's log call must not break the run
            message = str(record.msg)
        self.warnings[message] = self.warnings.get(message, 0) + 1

    def install(self) -> None:
        if not self._installed:
            logging.getLogger(LOGGER).addHandler(self)
            SessionNotes.active.append(self)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            logging.getLogger(LOGGER).removeHandler(self)
            SessionNotes.active.remove(self)
            self._installed = False

    def pytest_runtest_logreport(self, report) -> None:
        if not report.skipped or report.when == "teardown":
            return
        stage = stage_of(report.keywords)
        if stage is not None:
            key = (stage, skip_reason(report.longrepr))
            self.skips[key] = self.skips.get(key, 0) + 1

    # -- reporting ----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self.warnings and not self.skips

    def lines(self) -> list[str]:
        """One line per skip reason and per warning, for the terminal."""
        lines = [f"skipped {stage} ({count} test{'s' if count > 1 else ''}): {reason}"
                 for (stage, reason), count in self.skips.items()]
        lines += [f"warning: {message}" + (f" ({count}x)" if count > 1 else "")
                  for message, count in self.warnings.items()]
        return lines

    def section(self) -> dict[str, Any]:
        """metrics.json's ``notes`` section."""
        return {
            "skipped": [{"stage": stage, "reason": reason, "tests": count}
                        for (stage, reason), count in self.skips.items()],
            "warnings": [{"message": message, "count": count} for message, count in self.warnings.items()],
        }
