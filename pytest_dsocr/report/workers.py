"""The records of an xdist run's workers, read back and merged into one run.

Each worker appends to ``<run>/workers/<id>/records.jsonl``; the merged run is their
concatenation in worker order (gw2 before gw10), plus an ``xdist`` section with one entry per
worker (its GPU, whether it finished, its peak memory). The controller merges while the run
goes on (:mod:`pytest_dsocr.xdist`) and ``python -m pytest_dsocr report`` after it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dsocr.collector import RUNNING
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.recordlog import RECORDS_FILE, RunLog, read_records
from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.rundir import WORKERS_DIR


@dataclass
class WorkerPart:
    """One worker's records file as read by the controller."""

    label: str  # its folder under <run>/workers: gw0, or gw0-2 for a restarted worker
    path: Path
    log: RunLog | None = None
    error: str | None = None  # why it could not be read

    @property
    def complete(self) -> bool:
        return self.log is not None and self.log.complete

    @property
    def reason(self) -> str | None:
        if self.error:
            return self.error
        if self.complete:
            return None
        end = self.log.end if self.log is not None else None
        return (end or {}).get("reason") or RUNNING

    @property
    def env(self) -> dict[str, Any]:
        return dict((self.log.session if self.log else {}).get("env") or {})

    @property
    def memory(self) -> dict[str, Any] | None:
        end = self.log.end if self.log is not None else None
        return (end or {}).get("memory")


def _worker_order(path: Path) -> tuple:
    numbers = [int(n) for n in re.findall(r"\d+", path.name)]
    return (numbers, path.name)


def read_worker_parts(run_dir: Path) -> list[WorkerPart]:
    """Every ``<run>/workers/*/records.jsonl``, in worker order (gw2 before gw10)."""
    parts = []
    folder = Path(run_dir) / WORKERS_DIR
    if not folder.is_dir():
        return parts
    for worker_dir in sorted((p for p in folder.iterdir() if p.is_dir()), key=_worker_order):
        label, path = worker_dir.name, worker_dir / RECORDS_FILE
        if not path.is_file():
            continue  # reserved, nothing recorded yet
        try:
            parts.append(WorkerPart(label, path, log=read_records(path)))
        except DsocrError as exc:
            parts.append(WorkerPart(label, path, error=f"worker {label}: {exc}"))
    return parts


@dataclass
class Merged:
    records: list[ImageRun]
    failures: list[SampleFailure]
    sections: dict[str, Any]
    summary_sections: dict[str, str]
    section_sources: dict[str, str]  # section name -> the worker it was taken from


def merge_parts(parts: Sequence[WorkerPart]) -> Merged:
    """The workers' records concatenated, in worker order.

    A stage section written by several workers (which the stage groups prevent) is taken
    from the first worker; each worker's own file keeps its copy.
    """
    merged = Merged([], [], {}, {}, {})
    for part in parts:
        if part.log is None:
            continue
        merged.records += part.log.runs
        merged.failures += part.log.failures
        for key, value in part.log.sections.items():
            if key not in merged.sections:
                merged.sections[key] = value
                merged.section_sources[key] = part.label
        for title, markdown in part.log.summary_sections.items():
            merged.summary_sections.setdefault(title, markdown)
    return merged


def workers_reason(parts: Sequence[WorkerPart]) -> str | None:
    """Why the merged run is incomplete on the workers' side, or None when every part is."""
    unfinished = [f"{part.label}: {part.reason}" for part in parts if not part.complete]
    return f"worker(s) did not finish ({'; '.join(unfinished)})" if unfinished else None


def xdist_section(parts: Sequence[WorkerPart], gpus: Mapping[str, str], dist: str | None,
                  wall_s: float | None) -> dict[str, Any]:
    """The ``xdist`` section of the merged metrics.json: one entry per worker process."""
    workers = {}
    for part in parts:
        env = part.env
        worker = env.get("xdist_worker") or part.label
        log = part.log
        workers[part.label] = {
            "records": str(part.path.relative_to(part.path.parent.parent.parent)),
            "complete": part.complete,
            "reason": part.reason,
            "cuda_visible_devices": env.get("cuda_visible_devices") or gpus.get(worker),
            "device": env.get("device"),
            "device_name": env.get("device_name"),
            "measured_runs": len(log.runs) if log else 0,
            "failed": len(log.failures) if log else 0,
            "memory": part.memory,
        }
    return {
        "dist": dist,
        "workers": workers,
        "gpu_assignment": dict(gpus),
        "wall_s": wall_s,
        "predictions": "one predictions.jsonl per stage, lines appended under flock by every worker",
    }


def apply_merge(metrics: RunMetrics, parts: Sequence[WorkerPart], section: dict) -> RunMetrics:
    """Complete the controller's metrics with what only the workers know."""
    env, memory = dict(metrics.env), metrics.memory
    readable = [part for part in parts if part.log is not None]
    if readable:
        env = {**readable[0].env, "argv": metrics.env.get("argv", readable[0].env.get("argv"))}
        env.pop("xdist_worker", None)
        env["xdist_workers"] = len(parts)
        memory = {}
        for part in parts:
            for key, value in (part.memory or {}).items():
                if isinstance(value, (int, float)):
                    memory[key] = max(memory.get(key, value), value)  # the largest of any worker
    by_worker = metrics.by_worker
    if by_worker is not None:
        workers = section["workers"]
        rows = []
        for row in by_worker.rows:
            gpu = (workers.get(row.worker) or {}).get("cuda_visible_devices")
            rows.append(dataclasses.replace(row, device=f"{row.device} (CUDA_VISIBLE_DEVICES={gpu})")
                        if gpu is not None else row)
        by_worker = dataclasses.replace(by_worker, rows=tuple(rows))
    return dataclasses.replace(metrics, env=env, memory=memory, by_worker=by_worker).with_sections(xdist=section)
