"""Session-wide collection of runs, failures and stage sections, written out after every sample.

metrics.json and the stakeholder summary are rewritten (atomically) after each sample with
``"complete": false`` and ``"reason": "still running"``, so a run that is interrupted, or
killed outright, keeps every sample measured so far; the session end rewrites them with
``"complete": true`` (or false and why it stopped) and adds report.md and plots.

Under pytest-xdist a worker's collector (``worker`` set) writes only its own partial
``<run>/workers/<id>/metrics.json``, in the same way after every sample, and stamps its id
on every record; the controller merges those files (:mod:`pytest_dsocr.xdist`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

from pytest_dsocr.atomic import atomic_write_text
from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.metrics import build_metrics, write_metrics
from pytest_dsocr.report.summary import render_report, render_stakeholder_summary

log = logging.getLogger(__name__)

SUMMARY_FILE = "stakeholder_summary.md"
REPORT_FILE = "report.md"
RUNNING = "still running"  # the reason of every write before the session ends
# Key of a worker's partial metrics.json that carries what only the merge needs.
WORKER_KEY = "xdist_worker"


class Collector:
    """Everything measured in one pytest session (or one xdist worker); owns metrics.json."""

    def __init__(self, run_dir: Callable[[], Path], config: dict, env: Callable[[], dict],
                 memory: Callable[[], dict], counts: dict, *, worker: str | None = None) -> None:
        self._run_dir = run_dir  # created lazily: a session that measures nothing writes nothing
        self.config = config
        self._env = env
        self._memory = memory
        self.counts = counts
        self.worker = worker
        self._worker_dir: Path | None = None
        self.records: list[ImageRun] = []
        self.failures: list[SampleFailure] = []
        self.sections: dict[str, dict] = {}
        self.summary_sections: dict[str, str] = {}
        self.hooks_for_metrics: list[Callable[[dict], None]] = []

    @property
    def run_dir(self) -> Path:
        return self._run_dir()

    @property
    def metrics_dir(self) -> Path:
        """Where metrics.json goes: the run dir, or this worker's own folder under it."""
        if self.worker is None:
            return self.run_dir
        if self._worker_dir is None:
            from pytest_dsocr.rundir import new_worker_dir

            self._worker_dir = new_worker_dir(self.run_dir, self.worker)
        return self._worker_dir

    @property
    def worker_label(self) -> str | None:
        """The worker name stamped on records: the id, or ``<id>-N`` for a restarted worker."""
        return None if self.worker is None else self.metrics_dir.name

    @property
    def has_data(self) -> bool:
        return bool(self.records or self.failures or self.sections)

    def add_runs(self, runs: list[ImageRun]) -> None:
        label = self.worker_label
        if label is not None:
            runs = [dataclasses.replace(run, worker=label) for run in runs]
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
        if self.worker is not None and self.has_data:
            self.flush()  # the worker file carries it to the controller's summary

    def replace_contents(self, records: list[ImageRun], failures: list[SampleFailure],
                         sections: dict[str, dict], summary_sections: dict[str, str]) -> None:
        """Take the merged records of every xdist worker (the controller measures nothing)."""
        self.records = list(records)
        self.failures = list(failures)
        self.sections = dict(sections)
        self.summary_sections = {**summary_sections, **self.summary_sections}

    def records_for(self, stage: str) -> list[ImageRun]:
        return [r for r in self.records if r.stage == stage]

    def metrics(self, *, complete: bool, reason: str | None = None) -> dict:
        metrics = build_metrics(
            self.records, self.failures, env=self._env(), config=self.config,
            sections=self.sections, complete=complete, reason=reason, counts=self.counts,
            memory=self._memory(),
        )
        if self.worker is not None:
            metrics[WORKER_KEY] = {"id": self.worker, "label": self.worker_label,
                                   "summary_sections": dict(self.summary_sections)}
        for hook in self.hooks_for_metrics:
            hook(metrics)
        return metrics

    def flush(self, *, complete: bool = False, reason: str | None = RUNNING) -> dict:
        """Rewrite metrics.json (and the summary, outside workers) with what is known now."""
        metrics = self.metrics(complete=complete, reason=reason)
        write_metrics(self.metrics_dir, metrics)
        if self.worker is None:
            self.rewrite_summary(metrics)
        return metrics

    def rewrite_summary(self, metrics: dict) -> None:
        """Re-render the stakeholder summary from final metrics (e.g. after the regression gate)."""
        sections = list(self.summary_sections.items())
        atomic_write_text(self.run_dir / SUMMARY_FILE, render_stakeholder_summary(metrics, sections))

    def finish(self, *, complete: bool, reason: str | None = None) -> dict:
        """Final write: metrics.json, summary, report.md and plots (when matplotlib is there).

        A worker writes only its partial metrics.json; the controller writes the rest.
        """
        if self.worker is not None:
            return self.flush(complete=complete, reason=reason)
        from pytest_dsocr.report.plots import write_plots

        metrics = self.metrics(complete=complete, reason=reason)
        run_dir = self.run_dir
        plots = write_plots(metrics, run_dir)
        metrics["plots"] = plots
        write_metrics(run_dir, metrics)
        self.rewrite_summary(metrics)
        atomic_write_text(run_dir / REPORT_FILE, render_report(metrics, list(self.summary_sections.items())))
        return metrics
