"""The torch_profiler stage: torch.profiler around each sample's inferences, tables per stage.

:class:`TorchProfilerHooks` starts one ``torch.profiler.profile`` per sample at its first
inference (CPU activity, plus CUDA when the session runs on a CUDA device), steps it after
every inference (benchmark warmup rounds and measured rounds are the steps its wait/warmup/
active schedule counts), wraps each stage in ``record_function("dsocr::<stage>")`` and each
inference in ``record_function("dsocr::sample:<id>")``, and is stopped by the stage after the
sample's rounds. Every finished profile cycle is folded into an :class:`OperatorTable` and, with
``trace``, exported as a Chrome trace.

:class:`TorchProfilerStage` is what ``benchmarks/test_torch_profiler.py`` drives: per sample it
profiles, measures unprofiled rounds when direct_inference has none for that sample, and
rewrites ``<run>/torch_profiler/operators.md``, ``stage_operators.md`` and ``operators.json``;
at the end it merges the traces into ``trace.json.gz`` (gzipped Chrome trace JSON: open it in
https://ui.perfetto.dev or chrome://tracing) and adds the ``torch_profiler`` and
``profiler_overhead`` sections to metrics.json.
"""

from __future__ import annotations

import gc
import gzip
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, record_function

from pytest_dsocr.engine import NO_HOOKS, ProfilingHooks
from pytest_dsocr.profilers.attribution import TORCH_PREFIX
from pytest_dsocr.profilers.config import TorchProfilerConfig
from pytest_dsocr.profilers.overhead import BASELINE_DIRECT, BASELINE_OWN, overhead_text, profiler_overhead
from pytest_dsocr.profilers.tables import OperatorTable
from pytest_dsocr.report.markdown import fmt
from pytest_dsocr.report.markdown import table as md_table
from pytest_dsocr.records import ImageRun, Sample
from pytest_dsocr.atomic import atomic_open, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STAGE = "torch_profiler"
TRACE_FILE = "trace.json.gz"
RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)
SUMMARY_TOP = 10  # operators in the stakeholder summary and the metrics.json section


def make_schedule(cfg: TorchProfilerConfig):
    """torch.profiler's schedule, or one that records every step after warmup (active=null)."""
    if cfg.active is not None:
        return torch.profiler.schedule(skip_first=cfg.skip_first, wait=cfg.wait, warmup=cfg.warmup,
                                       active=cfg.active, repeat=cfg.repeat)
    idle = cfg.skip_first + cfg.wait

    def schedule(step: int) -> ProfilerAction:
        if step < idle:
            return ProfilerAction.NONE
        if step < idle + cfg.warmup:
            return ProfilerAction.WARMUP
        return ProfilerAction.RECORD

    return schedule


def activities_for(cfg: TorchProfilerConfig, device: torch.device) -> list[ProfilerActivity]:
    activities = [ProfilerActivity.CPU]
    if "cuda" in cfg.activities and device.type == "cuda" and torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    return activities


class TorchProfilerHooks(ProfilingHooks):
    """One torch.profiler profile per sample, stepped per inference."""

    name = "torch"

    def __init__(self, cfg: TorchProfilerConfig, device: torch.device, trace_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.activities = activities_for(cfg, device)
        self.trace_dir = trace_dir if cfg.trace else None
        self.table = OperatorTable(record_shapes=bool(cfg.record_shapes))
        self.traces: list[Path] = []
        self.traced_samples: list[str] = []
        self.recorded: list[ImageRun] = []  # measured runs inside a recording step
        self._profile: torch.profiler.profile | None = None
        self._sample: Sample | None = None
        self._cycle = 0

    @property
    def cuda(self) -> bool:
        return ProfilerActivity.CUDA in self.activities

    def _start(self, sample: Sample) -> None:
        self._sample, self._cycle = sample, 0
        self._profile = torch.profiler.profile(
            activities=self.activities, schedule=make_schedule(self.cfg), on_trace_ready=self._ready,
            record_shapes=bool(self.cfg.record_shapes), profile_memory=bool(self.cfg.profile_memory),
            with_flops=bool(self.cfg.with_flops), with_stack=bool(self.cfg.with_stack),
            with_modules=bool(self.cfg.with_modules),
        )
        self._profile.start()

    def _wants_trace(self) -> bool:
        if self.trace_dir is None or self._sample is None:
            return False
        limit = self.cfg.trace_max_samples
        test_id = self._sample.test_id
        return test_id in self.traced_samples or limit is None or len(self.traced_samples) < limit

    def _ready(self, profile: torch.profiler.profile) -> None:
        self.table.add_events(profile.events())
        if self._wants_trace():
            if self._sample.test_id not in self.traced_samples:
                self.traced_samples.append(self._sample.test_id)
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            suffix = f"-{self._cycle}" if self._cycle else ""
            path = self.trace_dir / f"{self._sample.test_id}{suffix}.json"
            profile.export_chrome_trace(str(path))
            self.traces.append(path)
        self._cycle += 1

    def on_iter_start(self, sample: Sample, round_index: int, measured: bool) -> None:
        if self._profile is None or self._sample != sample:
            self.end_sample()
            self._start(sample)

    def on_iter_end(self, sample: Sample, round_index: int, measured: bool, run: ImageRun | None) -> None:
        if self._profile is None:
            return
        if measured and run is not None and self._profile.current_action in RECORDING:
            self.recorded.append(run)
        self._profile.step()

    def context_provider(self, sample: Sample, measured: bool) -> AbstractContextManager:
        return record_function(f"{TORCH_PREFIX}sample:{sample.sample_id}")

    def stage_range(self, name: str) -> AbstractContextManager:
        return record_function(f"{TORCH_PREFIX}{name}")

    def end_sample(self) -> None:
        """Stop the sample's profile: a cycle still recording is handed to the tables."""
        if self._profile is not None:
            profile, self._profile = self._profile, None
            profile.stop()
        self._sample = None

    def recorded_for(self, sample_id: str) -> list[ImageRun]:
        return [run for run in self.recorded if run.sample_id == sample_id]


def merge_chrome_traces(paths: list[Path], destination: Path) -> Path:
    """Write one gzipped Chrome trace of several, streaming event by event.

    Kineto's timestamps of one process share one clock, so the events of successive profiles
    simply follow each other; repeated metadata events (process and thread names) are kept
    once. Written atomically (a temporary file beside ``destination``, renamed into place).
    """
    header: dict | None = None
    seen_meta: set[str] = set()
    with atomic_open(destination) as raw:
        with gzip.open(raw, "wt", encoding="utf-8") as out:
            out.write('{"traceEvents": [')
            first = True
            for path in paths:
                data = json.loads(path.read_text(encoding="utf-8"))
                if header is None:
                    header = {key: value for key, value in data.items() if key != "traceEvents"}
                for event in data.get("traceEvents", []):
                    text = json.dumps(event, separators=(",", ":"))
                    if event.get("ph") == "M":
                        if text in seen_meta:
                            continue
                        seen_meta.add(text)
                    out.write(text if first else "," + text)
                    first = False
                del data
            out.write("]")
            for key, value in (header or {}).items():
                out.write(f",{json.dumps(key)}:{json.dumps(value)}")
            out.write("}")
    return destination


class TorchProfilerStage:
    """Per-session driver of the torch_profiler stage (see the module docstring)."""

    def __init__(self, cfg: TorchProfilerConfig, *, device: torch.device, run_dir: Path, collector) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir) / STAGE
        self.tmp = Path(run_dir) / "tmp" / STAGE
        self.collector = collector
        self.hooks = TorchProfilerHooks(cfg, device, trace_dir=self.tmp / "traces")
        self.baselines: dict[str, list[ImageRun]] = {}
        self.sources: dict[str, str] = {}

    @contextmanager
    def profiling(self, sample: Sample) -> Iterator[TorchProfilerHooks]:
        """The hooks for one sample's measure(); the profile is stopped on the way out.

        A profile leaves hundreds of thousands of events linked parent <-> child, garbage only
        the cycle collector frees; collected here, it would otherwise pause whichever timed
        inference comes next (the unprofiled baseline or the next sample's rounds).
        """
        try:
            yield self.hooks
        finally:
            self.hooks.end_sample()
            gc.collect()

    def baseline(self, sample: Sample, session, rounds: int) -> None:
        """Unprofiled runs of ``sample``: direct_inference's records, else ``rounds`` own runs."""
        direct = self.collector.records_for(BASELINE_DIRECT, sample.sample_id)
        if direct:
            self.baselines[sample.sample_id], self.sources[sample.sample_id] = direct, BASELINE_DIRECT
            return
        runs = [session.run(sample, stage=STAGE, hooks=NO_HOOKS, round_index=index, measured=True)
                for index in range(max(rounds, 1))]
        self.baselines[sample.sample_id], self.sources[sample.sample_id] = runs, BASELINE_OWN

    def header(self) -> str:
        cfg = self.cfg
        active = "all remaining" if cfg.active is None else str(cfg.active)
        activities = ", ".join(a.name for a in self.hooks.activities)
        return (f"Activities: {activities}. Schedule per sample: skip_first {cfg.skip_first}, wait {cfg.wait}, "
                f"warmup {cfg.warmup}, active {active}. record_shapes={cfg.record_shapes}, "
                f"profile_memory={cfg.profile_memory}, with_flops={cfg.with_flops}. "
                f"Trace: `{TRACE_FILE}` (open in https://ui.perfetto.dev), "
                f"{'every sample' if cfg.trace_max_samples is None else f'first {cfg.trace_max_samples} samples'}.")

    def write_tables(self) -> None:
        table = self.hooks.table
        atomic_write_text(self.dir / "operators.md", table.operators_markdown(self.cfg.top_k, self.header()))
        atomic_write_text(self.dir / "stage_operators.md", table.stage_operators_markdown(self.cfg.top_k))
        atomic_write_json(self.dir / "operators.json", table.to_json())

    def overhead(self) -> dict:
        return profiler_overhead("torch", self.hooks.recorded, self.baselines, self.sources)

    def section(self) -> dict:
        data = self.hooks.table.to_json(top_k=SUMMARY_TOP)
        data["files"] = {"operators_md": f"{STAGE}/operators.md", "stage_operators_md": f"{STAGE}/stage_operators.md",
                         "operators_json": f"{STAGE}/operators.json",
                         "trace": f"{STAGE}/{TRACE_FILE}" if self.hooks.traces else None}
        data["traced_samples"] = list(self.hooks.traced_samples)
        data["config"] = {k: getattr(self.cfg, k) for k in ("skip_first", "wait", "warmup", "active", "repeat",
                                                             "record_shapes", "profile_memory", "with_flops")}
        data["activities"] = [a.name for a in self.hooks.activities]
        return data

    def write_trace(self) -> Path | None:
        """trace.json.gz from the per-sample traces, which are then removed from tmp/."""
        if not self.hooks.traces:
            return None
        path = merge_chrome_traces(self.hooks.traces, self.dir / TRACE_FILE)
        shutil.rmtree(self.tmp / "traces", ignore_errors=True)
        return path

    def summary_markdown(self, overhead: dict) -> str:
        table = self.hooks.table
        lines = [f"Profiled inferences: {table.iterations}; operators sorted by self "
                 f"{'device' if table.sort_by == 'self_device' else 'CPU'} time, "
                 f"full tables in `{STAGE}/operators.md`.",
                 "", overhead_text(overhead), ""]
        self_col = "self_device_ms" if table.sort_by == "self_device" else "self_cpu_ms"
        rows = [[r["operator"], r["stage"], r["calls"], r[self_col], fmt(r["share_of_stage_pct"], 1)]
                for r in table.rows()[:SUMMARY_TOP]]
        lines.append(md_table(["Operator", "Stage", "Calls", "Self ms", "% of stage"], rows, numeric_from=2))
        return "\n".join(lines)

    def after_sample(self) -> None:
        """Tables as they stand after a sample (an interrupted run keeps them)."""
        self.write_tables()

    def finish(self) -> None:
        """End of the stage: trace, final tables, metrics.json sections, summary section."""
        self.hooks.end_sample()
        if not self.hooks.table.iterations and not self.hooks.recorded:
            log.warning("torch_profiler: no profiled inference (schedule %s recorded nothing)", self.cfg)
        self.write_tables()
        self.write_trace()
        overhead = self.overhead()
        self.collector.add_section(STAGE, self.section())
        self.collector.add_section("profiler_overhead", overhead)
        self.collector.add_summary_section("Torch profiler", self.summary_markdown(overhead))
