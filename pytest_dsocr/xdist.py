"""Many GPUs through pytest-xdist: ``pytest benchmarks -n 4 --dist loadgroup``.

The controller (the process the user started) measures nothing. It

- creates the run directory once and hands its path to every worker (``workerinput``), so
  all workers write into one run and nothing collides;
- gives each worker one GPU when several are visible: ``CUDA_VISIBLE_DEVICES`` round-robin
  over the visible GPUs by worker number (gw0 -> first GPU, gw1 -> second, ...), set in the
  worker's environment by execnet before the worker imports anything, so it holds before
  CUDA initialises there. With one GPU the workers share it, with none they run on the CPU,
  and ``model.device=cpu`` or ``cuda:N``, or a ``CUDA_VISIBLE_DEVICES`` of the worker's own
  ``--tx env:`` spec, is left alone;
- merges the workers' partial records into the one ``<run>/metrics.json`` and summary,
  with per-worker (per-GPU) rows and totals whose pages/s add up across GPUs; it re-merges
  while tests finish (at most every :data:`MERGE_INTERVAL_S`) and once more at the end,
  also when the run is interrupted.

That is the controller that started pytest-dsocr (a dsocr option or a stage in ``-m``).
Without either, the workers start it when they collect a stage test and share one run dir;
:mod:`pytest_dsocr.xdist_setup` says how, and what both sides agree on before starting.

Each worker loads its own model, measures with the stage timers (pytest-benchmark switches
itself off under xdist, so its table is absent and metrics.json never depends on it), and
appends every sample to ``<run>/workers/<id>/records.jsonl``; the controller's merge is the
concatenation of those files. Stage outputs go to the
shared stage folders: viz folders are named by the md5 of the image path, and the tests of
one image stay on one worker (below), so no two workers write the same folder;
``predictions.jsonl`` stays one file per stage, each line appended under an exclusive
``flock`` (:class:`LockedPredictionWriter`), so lines of different workers never mix.

``--dist loadgroup`` groups (the ``xdist_group`` marks added on workers, unless a test has
its own): direct_inference tests by image (``direct_inference-<sample_id>``), so that
several epochs of one page run on one worker and write its viz folder once while pages
spread over the workers; every other stage as a whole (its name), because those stages keep
module-wide state (a profiler, a kernel table) and write stage-wide files (operators.md,
trace.json.gz, kernels.csv) that one worker must own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_dsocr.outputs.writers import PredictionWriter
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.report.workers import (
    WorkerPart,
    apply_merge,
    merge_parts,
    read_worker_parts,
    workers_reason,
    xdist_section,
)
from pytest_dsocr.state import finish_run
from pytest_dsocr.stages import BENCHMARK_STAGES
from pytest_dsocr.xdist_setup import ANY_GPU_DEVICES, GPU_KEY, RUN_DIR_KEY, assign_gpus, visible_gpus

try:
    import fcntl
except ImportError:  # not POSIX: appends go unlocked
    fcntl = None

log = logging.getLogger(__name__)

PER_IMAGE_STAGE = "direct_inference"  # stages whose tests may spread over workers image by image
MERGE_INTERVAL_S = 5.0  # the controller re-merges worker records at most this often while running


# --- test grouping --------------------------------------------------------------------------


def group_for(item: pytest.Item) -> str | None:
    """The ``xdist_group`` of a stage test (see the module docstring); None: no group."""
    for stage in BENCHMARK_STAGES:
        if item.get_closest_marker(stage) is None:
            continue
        if stage == PER_IMAGE_STAGE:
            sample = getattr(getattr(item, "callspec", None), "params", {}).get("dsocr_sample")
            return f"{stage}-{sample.sample_id}" if sample is not None else stage
        return stage
    return None


def add_group_marks(config: pytest.Config, items: Sequence[pytest.Item]) -> None:
    """On a worker under ``--dist loadgroup``: mark stage tests with their group."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue  # the test chose its own group
        group = group_for(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


# --- predictions shared by workers -------------------------------------------------------------


class LockedPredictionWriter(PredictionWriter):
    """predictions.jsonl shared by several processes: each line is appended under ``flock``.

    The lock (on ``.predictions.jsonl.lock`` beside the file) also covers the check for a
    line cut short by a crash, so one worker never "repairs" a line another is writing.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._lock_fd: int | None = None

    def write(self, record: dict[str, Any]) -> None:
        if fcntl is None:
            super().write(record)
            return
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self.path.with_name(f".{self.path.name}.lock")
            self._lock_fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o666)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            super().write(record)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# --- the controller ------------------------------------------------------------------------------


class XdistController:
    """Controller-side hooks, registered only when this process distributes to xdist workers."""

    def __init__(self, state) -> None:
        self.state = state
        self.gpus: dict[str, str] = {}
        self.parts: list[WorkerPart] = []
        self.started = time.monotonic()
        self.section_sources: dict[str, str] = {}
        self._last_merge: float | None = None
        self._hooked = False

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: list) -> None:
        device = str(self.state.cfg.model.device)
        gpus = visible_gpus() if device in ANY_GPU_DEVICES else []
        self.gpus = assign_gpus(specs, gpus, device)
        if self.gpus:
            log.info("pytest-dsocr: one GPU per xdist worker: %s",
                     ", ".join(f"{w}={g}" for w, g in self.gpus.items()))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        # Created here, once, so every worker writes into the same run; removed again at the
        # end when no worker measured anything.
        node.workerinput[RUN_DIR_KEY] = str(self.state.run_dir)
        node.workerinput[GPU_KEY] = self.gpus.get(node.gateway.id)

    @pytest.hookimpl(trylast=True)  # after xdist's own, which stops the workers
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        finish_run(self.state, session, exitstatus)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown" or not self.state.has_run_dir:
            return
        now = time.monotonic()
        if self._last_merge is not None and now - self._last_merge < MERGE_INTERVAL_S:
            return
        self._last_merge = now
        if self.merge():
            self.state.collector.flush(force=True)

    def merge(self) -> bool:
        """Read every worker's records into the controller's collector; True if any."""
        if not self.state.has_run_dir:
            return False
        self.parts = read_worker_parts(self.state.run_dir)
        if not self.parts:
            return False
        merged = merge_parts(self.parts)
        collector = self.state.collector
        collector.replace_contents(merged.records, merged.failures, merged.sections, merged.summary_sections)
        if not self._hooked:
            collector.transforms.insert(0, self._complete_metrics)
            self._hooked = True
        self.section_sources = merged.section_sources
        return True

    def _complete_metrics(self, metrics: RunMetrics) -> RunMetrics:
        dist = getattr(self.state.pytest_config.option, "dist", None)
        section = xdist_section(self.parts, self.gpus, dist, round(time.monotonic() - self.started, 3))
        section["sections_from"] = dict(self.section_sources)
        return apply_merge(metrics, self.parts, section)

    def reason(self) -> str | None:
        return workers_reason(self.parts)
