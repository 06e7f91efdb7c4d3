"""Session-wide collection of runs, failures and stage sections: recorded as they come, derived
into metrics.json and the summary at bounded cost while the run goes on, in full at the end.

Every event goes to the append-only records file first (:mod:`pytest_dsocr.recordlog`): one
line, flushed before the call returns, so a killed run keeps every sample it finished and
``python -m pytest_dsocr report RUN_DIR`` rebuilds the same metrics.json and summary from it.
metrics.json and the stakeholder summary are rewritten from cheap running aggregates
(:mod:`pytest_dsocr.report.running`) at most every :data:`INTERIM_INTERVAL_S` seconds with
``"complete": false, "reason": "still running"``; the session end writes the full files
(percentiles, intervals, every sample), report.md and plots.

Under pytest-xdist a worker's collector (``worker`` set) keeps its records file and interim
metrics.json in ``<run>/workers/<id>/`` and stamps its id on every record; the controller
concatenates the workers' records (:mod:`pytest_dsocr.xdist`).

The run dir also gets ``resolved_config.yaml`` (the whole resolved config, written with the
first record and again at the end; report.md links it rather than printing it) and, at the
end, ``viz/index.md`` and ``viz/index.json`` in every stage's visualization folder.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from pytest_dsocr.atomic import BackgroundWriter, atomic_write_text
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.outputs.writers import write_viz_indexes
from pytest_dsocr.recordlog import (
    END,
    FAILURE,
    RECORDS_FILE,
    RUN,
    SECTION,
    SESSION,
    SUMMARY_SECTION,
    RecordLog,
    run_texts,
)
from pytest_dsocr.records import ImageRun, RunRows, SampleFailure
from pytest_dsocr.report.metrics import (
    INTERIM_SAMPLES,
    METRICS_FILE,
    build_metrics,
    metrics_chunks,
    now_utc,
    write_metrics,
)
from pytest_dsocr.report.model import Counts, RunMetrics, primary_stage
from pytest_dsocr.report.plots import write_plots
from pytest_dsocr.report.running import RunningAggregates
from pytest_dsocr.report.summary import RESOLVED_CONFIG_FILE, render_report, render_stakeholder_summary
from pytest_dsocr.rundir import new_worker_dir
from pytest_dsocr.stages import StageTree, vision_parts_in

log = logging.getLogger(__name__)

SUMMARY_FILE = "stakeholder_summary.md"
REPORT_FILE = "report.md"
RESOLVED_CONFIG_HEADER = ("# The resolved configuration of this run: schema defaults, presets, config file and\n"
                          "# --dsocr-set overrides applied (metrics.json `config` holds the same).\n")
RUNNING = "still running"  # the reason of every write before the session ends
INTERIM_INTERVAL_S = 2.0  # interim metrics.json/summary rewrites at most this often

MetricsTransform = Callable[[RunMetrics], RunMetrics]


class Collector:
    """Everything measured in one pytest session (or one xdist worker); owns its records file,
    metrics.json and summary."""

    def __init__(self, run_dir: Callable[[], Path], config: dict, env: Callable[[], dict],
                 memory: Callable[[], dict], counts: dict, *, worker: str | None = None,
                 tree: StageTree | None = None, identity: dict | None = None,
                 interim_interval_s: float = INTERIM_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._run_dir = run_dir  # created lazily: a session that measures nothing writes nothing
        self.config = config
        self._env_source = env
        self._env: dict | None = None
        self._memory = memory
        self.counts = counts
        self.worker = worker
        self.tree = tree
        self.identity = identity
        self.interim_interval_s = interim_interval_s
        self._clock = clock
        self._worker_dir: Path | None = None
        self._log: RecordLog | None = None
        self._running = RunningAggregates()
        self._attempts = Attempts()  # distinct (epoch, sample) measured or failed
        self._last_interim: float | None = None
        self._finished = False  # the full files are written: no interim rewrite after that
        self._writer = BackgroundWriter("dsocr-interim-writer")  # interim files: off the sample's path
        self._merged = False  # the runs are the workers' (replace_contents), not this records file's
        self._records_failed = False  # a write to the records file failed: it may lack lines
        self._runs = RunRows()  # every measured run, compact (see RunRows: no GC pauses at 100,000)
        self.failures: list[SampleFailure] = []
        self.sections: dict[str, Any] = {}
        # Sections recorded with the first sample (run or failure): what the samples came from
        # (the dataset), never written by a session that measures nothing.
        self.sample_sections: dict[str, Any] = {}
        self._sample_sections_recorded = False
        self.summary_sections: dict[str, str] = {}
        # RunMetrics -> RunMetrics before every write (the xdist controller completes env/memory)
        self.transforms: list[MetricsTransform] = []
        # dict -> None on the json form before every write (the user's pytest_dsocr_update_metrics)
        self.json_hooks: list[Callable[[dict], None]] = []

    # -- where ----------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self._run_dir()

    @property
    def metrics_dir(self) -> Path:
        """Where metrics.json and records.jsonl go: the run dir, or this worker's folder under it."""
        if self.worker is None:
            return self.run_dir
        if self._worker_dir is None:
            self._worker_dir = new_worker_dir(self.run_dir, self.worker)
        return self._worker_dir

    @property
    def records_path(self) -> Path:
        return self.metrics_dir / RECORDS_FILE

    @property
    def worker_label(self) -> str | None:
        """The worker name stamped on records: the id, or ``<id>-N`` for a restarted worker."""
        return None if self.worker is None else self.metrics_dir.name

    @property
    def has_data(self) -> bool:
        return bool(len(self._runs) or self.failures or self.sections)

    @property
    def env(self) -> dict:
        """The environment, collected once (git, device properties) and reused by every write."""
        if self._env is None:
            self._env = self._env_source()
        return self._env

    # -- events ---------------------------------------------------------------------------

    def open_records(self) -> None:
        """Start the records file (its session line) if no event has yet: a run stopped before its
        first sample ends still leaves one, so its run dir reads as a run that measured nothing."""
        if self._log is not None:
            return
        self._log = RecordLog(self.records_path)
        self._log.append(SESSION, {
            "config": self.config, "env": self.env, "counts": self.counts, "identity": self.identity,
            "worker": self.worker_label, "stage_tree": list(self.tree.vision_parts) if self.tree else None,
        })
        if self.worker is None and self._finished:
            write_resolved_config(self.run_dir, self.config)
        elif self.worker is None:  # off the sample's path; the session end writes it again, durably
            self._writer.submit({self.run_dir / RESOLVED_CONFIG_FILE: resolved_config_text(self.config).encode("utf-8")})

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        self.open_records()
        self._log.append(kind, payload)

    def _record_sample_sections(self) -> None:
        if self._sample_sections_recorded:
            return
        self._sample_sections_recorded = True
        for name, data in self.sample_sections.items():
            self._record(SECTION, {"name": name, "data": data})
            self.sections[name] = data

    def add_runs(self, runs: Sequence[ImageRun]) -> None:
        self._record_sample_sections()
        label = self.worker_label
        for run in runs:
            if label is not None:
                run = dataclasses.replace(run, worker=label)
            self._record(RUN, run.to_json())
            self._runs.append(run)
            self._running.add(run)
            self._attempts.add(run.epoch, run.sample_id)
        self.flush()

    def add_failure(self, failure: SampleFailure) -> None:
        self._record_sample_sections()
        self._record(FAILURE, failure.to_json())
        self.failures.append(failure)
        self._attempts.add(failure.epoch, failure.sample_id)
        self.flush(force=True)

    def add_section(self, name: str, data: Any) -> None:
        """A stage's own section of metrics.json (e.g. static_analysis, nsys, parity)."""
        self._record(SECTION, {"name": name, "data": data})
        self.sections[name] = data
        self.flush(force=True)

    def add_summary_section(self, title: str, markdown: str) -> None:
        """A titled markdown block appended to the stakeholder summary."""
        self._record(SUMMARY_SECTION, {"title": title, "markdown": markdown})
        self.summary_sections[title] = markdown
        self.flush(force=True)

    def replace_contents(self, records: list[ImageRun], failures: list[SampleFailure],
                         sections: dict[str, Any], summary_sections: dict[str, str]) -> None:
        """Take the concatenated records of every xdist worker (the controller measures nothing)."""
        self._runs = RunRows(records)
        self._merged = True
        self.failures = list(failures)
        self.sections = dict(sections)
        self.summary_sections = {**summary_sections, **self.summary_sections}
        self._running = RunningAggregates()
        for run in records:
            self._running.add(run)
        self._attempts = Attempts()
        for item in (*records, *self.failures):
            self._attempts.add(item.epoch, item.sample_id)

    def iter_records(self) -> Iterator[ImageRun]:
        """Every measured run so far, in order, one at a time (each read back from the kept
        runs as it is asked for: a long run's are never all in memory as objects)."""
        return iter(self._runs)

    def records_for(self, stage: str, sample_id: str) -> list[ImageRun]:
        """The measured runs of one sample in ``stage``, in order."""
        return self._runs.of_page(stage, sample_id)

    # -- metrics --------------------------------------------------------------------------

    def metrics(self, *, complete: bool, reason: str | None = None) -> RunMetrics:
        """The full metrics of what is known now (every statistic, every sample)."""
        metrics = build_metrics(
            self._runs, self.failures, env=self.env, config=self.config, tree=self.tree,
            sections=self.sections, complete=complete, reason=reason, counts=self.counts,
            memory=self._memory(), identity=self.identity, records_file=RECORDS_FILE if self._log else None,
        )
        return self._transformed(metrics)

    def interim_metrics(self) -> RunMetrics:
        """Metrics at constant cost: running aggregates of the headline stage, no percentiles,
        samples only while there are few (the records file has them all)."""
        stage = primary_stage(self._running.stages)
        parts = vision_parts_in(self._substage_names(), self.tree.vision_parts if self.tree else ())
        aggregates = self._running.aggregates(stage, parts)
        measured = len(self._runs)
        infer = self.config.get("infer") or {}
        counts = Counts.from_json({
            "warmup_rounds": infer.get("warmup_rounds"), "rounds": infer.get("rounds"),
            "samples": self._attempts.count, "measured_runs": measured, "failed": len(self.failures),
            **self.counts,
        })
        metrics = RunMetrics(
            complete=False, reason=RUNNING, aggregates_stage=stage, aggregates=aggregates,
            stage_nesting=(self.tree or StageTree(tuple(parts))).nesting(aggregates.stage_ms),
            counts=counts, error_rate=None, memory=self._memory(), env=self.env, config=self.config,
            samples=tuple(self._runs) if measured <= INTERIM_SAMPLES else (),
            failures=tuple(self.failures), identity=self.identity, records=RECORDS_FILE,
            sections=dict(self.sections),
        )
        return self._transformed(metrics)

    def _substage_names(self) -> dict[str, None]:
        names: dict[str, None] = {}
        for run in self._runs.last(1):
            names.update(dict.fromkeys(run.substage_ms))
        return names

    def _transformed(self, metrics: RunMetrics) -> RunMetrics:
        metrics = dataclasses.replace(metrics, generated_at=now_utc())
        for transform in self.transforms:
            metrics = transform(metrics)
        return metrics

    def _write_interim(self, metrics: RunMetrics) -> None:
        """The interim files' content is made here (hooks included), written by the background
        writer: not fsynced, metrics.json on one line (the records file is the durable copy)."""
        files = {self.metrics_dir / METRICS_FILE: b"".join(metrics_chunks(metrics, self.json_hooks, compact=True))}
        if self.worker is None:
            summary = render_stakeholder_summary(metrics, list(self.summary_sections.items()))
            files[self.run_dir / SUMMARY_FILE] = summary.encode("utf-8")
        self._writer.submit(files)

    def wait_for_writes(self) -> None:
        """Return once the interim files submitted so far are written (a writer thread writes
        them, off the sample's path; the records file is written by each add_* itself)."""
        self._writer.wait()

    def flush(self, *, force: bool = False) -> None:
        """Rewrite the interim metrics.json and summary when due (at most every
        ``interim_interval_s``; ``force`` for rare events such as a failure or a section)."""
        if self._finished:
            return
        now = self._clock()
        if not force and self._last_interim is not None and now - self._last_interim < self.interim_interval_s:
            return
        self._last_interim = now
        self._write_interim(self.interim_metrics())

    def _sample_texts(self) -> Iterator[str] | None:
        """The samples' json as the records file holds it, when its runs are this collector's
        (not after an xdist merge replaced them): copied into metrics.json, not encoded again."""
        if self._log is None or self._merged or self._records_failed:
            return None
        return run_texts(self.records_path)

    def rewrite_summary(self, metrics: RunMetrics) -> None:
        """Re-render the stakeholder summary (e.g. after the regression gate)."""
        sections = list(self.summary_sections.items())
        atomic_write_text(self.run_dir / SUMMARY_FILE, render_stakeholder_summary(metrics, sections))

    def finish(self, *, complete: bool, reason: str | None = None) -> RunMetrics:
        """Final write: metrics.json, summary, report.md and plots (when matplotlib is there).

        A worker writes only its records' end line and its metrics.json; the controller the rest.
        """
        self._finished = True
        self._writer.close()  # no interim write may land after the final files
        if self._log is not None:
            try:
                self._log.append(END, {"complete": complete, "reason": reason, "memory": self._memory()})
                self._log.close()
            except DsocrError as exc:  # the records file lost lines: the final files come from memory
                self._records_failed = True
                log.error("pytest-dsocr: %s; metrics.json is written from the records held in memory", exc)
        metrics = self.metrics(complete=complete, reason=reason)
        if self.worker is not None:
            write_metrics(self.metrics_dir, metrics, hooks=self.json_hooks, sample_texts=self._sample_texts())
            return metrics
        run_dir = self.run_dir
        write_resolved_config(run_dir, self.config)
        write_viz_indexes(run_dir, self.config)
        metrics = metrics.with_sections(plots=write_plots(metrics, run_dir))
        write_metrics(run_dir, metrics, hooks=self.json_hooks, sample_texts=self._sample_texts())
        self.rewrite_summary(metrics)
        atomic_write_text(run_dir / REPORT_FILE, render_report(metrics, list(self.summary_sections.items())))
        return metrics


class Attempts:
    """Counts distinct (epoch, sample) pairs with what grows with the dataset, not with the run:
    a set of epochs (small ints) per sample id, so the cycle collector never walks one entry
    per record of a long run (see :class:`~pytest_dsocr.records.RunRows`)."""

    def __init__(self) -> None:
        self._epochs: dict[str, set[int]] = {}
        self.count = 0

    def add(self, epoch: int, sample_id: str) -> None:
        epochs = self._epochs.setdefault(sample_id, set())
        if epoch not in epochs:
            epochs.add(epoch)
            self.count += 1


def write_resolved_config(run_dir: Path, config: dict) -> Path:
    """``<run>/resolved_config.yaml``: the config report.md links instead of printing it."""
    return atomic_write_text(Path(run_dir) / RESOLVED_CONFIG_FILE, resolved_config_text(config))


# libyaml's dumper where PyYAML has it: the pure-Python one takes some 7 ms for a full config,
# paid by the first sample of a run.
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def resolved_config_text(config: dict) -> str:
    text = yaml.dump(config, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return RESOLVED_CONFIG_HEADER + text
