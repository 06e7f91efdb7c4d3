"""Session-wide collection of runs, failures and stage sections, written out after every sample.

metrics.json and the stakeholder summary are rewritten (atomically) after each sample with
``"complete": false``, so an interrupted run keeps every sample measured so far; the session
end rewrites them with ``"complete": true`` and adds report.md and plots.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.metrics import build_metrics, write_metrics
from pytest_dsocr.report.summary import render_report, render_stakeholder_summary
from pytest_dsocr.atomic import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY_FILE = "stakeholder_summary.md"
REPORT_FILE = "report.md"


class Collector:
    """Everything measured in one pytest session; owns metrics.json and the summaries."""

    def __init__(self, run_dir: Callable[[], Path], config: dict, env: Callable[[], dict],
                 memory: Callable[[], dict], counts: dict) -> None:
        self._run_dir = run_dir  # created lazily: a session that measures nothing writes nothing
        self.config = config
        self._env = env
        self._memory = memory
        self.counts = counts
        self.records: list[ImageRun] = []
        self.failures: list[SampleFailure] = []
        self.sections: dict[str, dict] = {}
        self.summary_sections: dict[str, str] = {}
        self.hooks_for_metrics: list[Callable[[dict], None]] = []

    @property
    def run_dir(self) -> Path:
        return self._run_dir()

    @property
    def has_data(self) -> bool:
        return bool(self.records or self.failures or self.sections)

    def add_runs(self, runs: list[ImageRun]) -> None:
        self.records.extend(runs)
        self.flush()

    def add_failure(self, failure: SampleFailure) -> None:
        self.failures.append(failure)
        self.flush()

    def add_section(self, name: str, data: dict) -> None:
        """A stage's own section of metrics.json (e.g. static_analysis, nsys, parity)."""
        self.sections[name] = data
        self.flush()

    def add_summary_section(self, title: str, markdown: str) -> None:
        """A titled markdown block appended to the stakeholder summary."""
        self.summary_sections[title] = markdown

    def records_for(self, stage: str) -> list[ImageRun]:
        return [r for r in self.records if r.stage == stage]

    def metrics(self, *, complete: bool, reason: str | None = None) -> dict:
        metrics = build_metrics(
            self.records, self.failures, env=self._env(), config=self.config,
            sections=self.sections, complete=complete, reason=reason, counts=self.counts,
            memory=self._memory(),
        )
        for hook in self.hooks_for_metrics:
            hook(metrics)
        return metrics

    def flush(self, *, complete: bool = False, reason: str | None = None) -> dict:
        metrics = self.metrics(complete=complete, reason=reason)
        write_metrics(self.run_dir, metrics)
        self.rewrite_summary(metrics)
        return metrics

    def rewrite_summary(self, metrics: dict) -> None:
        """Re-render the stakeholder summary from final metrics (e.g. after the regression gate)."""
        sections = list(self.summary_sections.items())
        atomic_write_text(self.run_dir / SUMMARY_FILE, render_stakeholder_summary(metrics, sections))

    def finish(self, *, complete: bool, reason: str | None = None) -> dict:
        """Final write: metrics.json, summary, report.md and plots (when matplotlib is there)."""
        from pytest_dsocr.report.plots import write_plots

        metrics = self.metrics(complete=complete, reason=reason)
        run_dir = self.run_dir
        plots = write_plots(metrics, run_dir)
        metrics["plots"] = plots
        write_metrics(run_dir, metrics)
        self.rewrite_summary(metrics)
        atomic_write_text(run_dir / REPORT_FILE, render_report(metrics, list(self.summary_sections.items())))
        return metrics
