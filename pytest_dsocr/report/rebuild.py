"""``python -m pytest_dsocr report RUN_DIR``: metrics.json, the summary and report.md rebuilt
from the run's records file(s), as the session end writes them.

Works on any run dir, finished or not: after a crash, a kill or a power cut, the records
(``records.jsonl``; under xdist one per worker, concatenated) still hold every sample that
finished, and this turns them into the same files the session would have written. A run that
never reached its end is marked ``complete: false`` with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from pytest_dsocr.atomic import atomic_write_text
from pytest_dsocr.collector import REPORT_FILE, SUMMARY_FILE
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.recordlog import RECORDS_FILE, RecordLog, RunLog, read_records
from pytest_dsocr.report.metrics import build_metrics, read_metrics, write_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.report.plots import write_plots
from pytest_dsocr.report.summary import render_report, render_stakeholder_summary
from pytest_dsocr.report.workers import WorkerPart, apply_merge, read_worker_parts, workers_reason, xdist_section
from pytest_dsocr.rundir import WORKERS_DIR
from pytest_dsocr.stages import StageTree

HELP = "rebuild metrics.json, stakeholder_summary.md and report.md from a run's records"
NOT_ENDED = "rebuilt from records: the session did not end (crashed, killed or still running)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding records.jsonl "
                        "(or workers/*/records.jsonl)")


def run(args: argparse.Namespace) -> int:
    metrics = rebuild(args.run_dir)
    state = "complete" if metrics.complete else f"incomplete ({metrics.reason})"
    print(f"{Path(args.run_dir) / 'metrics.json'}: {len(metrics.samples)} measured runs, "
          f"{len(metrics.failures)} failures, {state}")
    return 0


def rebuild(run_dir: str | Path) -> RunMetrics:
    """Rewrite the run's metrics.json, summary and report.md from its records; returns the metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DsocrError(f"RUN_DIR={run_dir}: not a directory")
    own = run_dir / RECORDS_FILE
    logs = [read_records(own)] if own.is_file() else []
    parts = read_worker_parts(run_dir)
    if not logs and not parts:
        raise DsocrError(f"RUN_DIR={run_dir}: no {RECORDS_FILE} there or under {WORKERS_DIR}/*/; "
                         "was it written by pytest-dsocr 0.1 or later?")
    combined = _combine(logs + [part.log for part in parts if part.log is not None])
    session = combined.session
    end = combined.end if not parts else _merged_end(combined, parts)
    tree = StageTree(tuple(session["stage_tree"])) if session.get("stage_tree") else None
    metrics = build_metrics(
        combined.runs, combined.failures, env=dict(session.get("env") or {}), config=dict(session.get("config") or {}),
        tree=tree, sections=combined.sections, complete=bool(end and end.get("complete")),
        reason=(end or {}).get("reason") if end else NOT_ENDED, counts=session.get("counts"),
        memory=(end or {}).get("memory"), identity=session.get("identity"), records_file=RECORDS_FILE,
    )
    if parts:
        metrics = apply_merge(metrics, parts, xdist_section(parts, {}, None, None))
    metrics = metrics.with_sections(plots=write_plots(metrics, run_dir))
    write_metrics(run_dir, metrics)
    extra = list(combined.summary_sections.items())
    atomic_write_text(run_dir / SUMMARY_FILE, render_stakeholder_summary(metrics, extra))
    atomic_write_text(run_dir / REPORT_FILE, render_report(metrics, extra))
    return metrics


def _combine(logs: list[RunLog]) -> RunLog:
    """Several records files as one: runs and failures concatenated in order, the first session
    header that has a config, sections and summary sections first-wins."""
    combined = RunLog(path=logs[0].path)
    for log in logs:
        if not combined.session.get("config") and log.session.get("config"):
            combined.session = log.session
        combined.runs += log.runs
        combined.failures += log.failures
        for name, data in log.sections.items():
            combined.sections.setdefault(name, data)
        for title, markdown in log.summary_sections.items():
            combined.summary_sections.setdefault(title, markdown)
        if log.end is not None:
            combined.end = log.end
    return combined


def _merged_end(combined: RunLog, parts: list[WorkerPart]) -> dict[str, Any] | None:
    """The end of an xdist run: every worker ended complete, else the first unfinished one's reason."""
    reason = workers_reason(parts)
    if combined.end is not None and not combined.end.get("complete"):
        return combined.end
    if reason is not None:
        return {"complete": False, "reason": reason, "memory": None}
    return combined.end or {"complete": True, "reason": None, "memory": None}


def add_section(run_dir: str | Path, name: str, data: Any) -> bool:
    """Add a stage's section to a finished run (``nsys-report`` after the session): appended to
    its records, then metrics.json rewritten with it. False when the run has no metrics.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        return False
    if (run_dir / RECORDS_FILE).is_file():
        log = RecordLog(run_dir / RECORDS_FILE)
        log.append("section", {"name": name, "data": data})
        log.close()
    metrics = read_metrics(run_dir)
    write_metrics(run_dir, dataclasses.replace(metrics).with_sections(**{name: data}))
    return True
