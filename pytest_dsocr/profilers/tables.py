"""Operator tables of the torch_profiler stage, per DeepSeek-OCR stage.

:func:`attribute_events` gives every operator event of a torch profile the innermost
``dsocr::<stage>`` range that encloses it. The profiler already nests the CPU events of one
thread by time (``FunctionEvent.cpu_parent``: each event's parent is the innermost event of
the same thread whose interval contains it), so the first ``dsocr::`` ancestor on that chain is
the innermost stage range. An event with none on its own thread (work on another thread) is
placed by time: the deepest stage range, of any thread, whose interval contains it. Device
(CUDA) time is read from the CPU operator that launched the kernels
(``self_device_time_total``), so device events themselves are not counted twice.

:class:`OperatorTable` sums the attributed events per (stage, operator name): calls, self and
total CPU time, self and total device time, FLOPs, memory, frequent input shapes. It renders
``operators.md`` (top operators by self device time, or self CPU time on a CPU-only profile,
with their share of the stage), ``stage_operators.md`` (top operators of each stage) and
``operators.json`` (everything).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from pytest_dsocr.profilers.attribution import (
    OTHER,
    OUTSIDE,
    is_sample_range,
    stage_depth,
    stage_sort_key,
    torch_range_stage,
)
from pytest_dsocr.report.markdown import fmt, table

US_PER_MS = 1000.0
STEP_PREFIX = "ProfilerStep"  # torch.profiler's own per-step range
TOP_SHAPES = 3
NAME_WIDTH = 60
SORT_DEVICE, SORT_CPU = "self_device", "self_cpu"


def _is_cpu(event) -> bool:
    device_type = getattr(event, "device_type", None)
    return device_type is None or str(device_type).endswith("CPU")


def _self_device_us(event) -> float:
    value = getattr(event, "self_device_time_total", None)
    if value is None:  # torch < 2.4
        value = getattr(event, "self_cuda_time_total", 0.0)
    return float(value or 0.0)


def _device_total_us(event) -> float:
    value = getattr(event, "device_time_total", None)
    if value is None:
        value = getattr(event, "cuda_time_total", 0.0)
    return float(value or 0.0)


def _interval(event) -> tuple[float, float]:
    return float(event.time_range.start), float(event.time_range.end)


def attribute_events(events: Iterable) -> list[tuple[str, str | None, object]]:
    """(stage, sample id, event) for every operator event; stage ranges themselves are left out.

    ``stage`` is the innermost enclosing ``dsocr::`` stage range, ``other`` inside a sample range
    but outside every stage, ``outside`` with no dsocr range around it at all.
    """
    events = [e for e in events if _is_cpu(e) and not getattr(e, "is_async", False)]
    ranges = []  # (start, end, stage or sample range)
    for event in events:
        stage = torch_range_stage(event.name)
        if stage is not None:
            ranges.append((*_interval(event), stage))
    out = []
    for event in events:
        if event.name.startswith(STEP_PREFIX) or torch_range_stage(event.name) is not None:
            continue
        stage, sample = None, None
        parent = getattr(event, "cpu_parent", None)
        while parent is not None:
            found = torch_range_stage(parent.name)
            if found is not None:
                if is_sample_range(found):
                    sample = sample or found.split(":", 1)[1]
                elif stage is None:
                    stage = found
            parent = parent.cpu_parent
        if stage is None:
            stage, sample = _by_time(_interval(event), ranges, sample)
        out.append((stage, sample, event))
    return out


def _by_time(interval: tuple[float, float], ranges, sample: str | None) -> tuple[str, str | None]:
    start, end = interval
    best = None
    for r_start, r_end, name in ranges:
        if r_start <= start and end <= r_end:
            if is_sample_range(name):
                sample = sample or name.split(":", 1)[1]
            elif best is None or stage_depth(name) > stage_depth(best):
                best = name
    if best is not None:
        return best, sample
    return (OTHER if sample else OUTSIDE), sample


@dataclass
class OperatorStats:
    """Sums over the calls of one operator name in one stage (times in microseconds)."""

    calls: int = 0
    self_cpu_us: float = 0.0
    cpu_total_us: float = 0.0
    self_device_us: float = 0.0
    device_total_us: float = 0.0
    flops: float = 0.0
    self_cpu_memory_bytes: float = 0.0
    self_device_memory_bytes: float = 0.0
    shapes: Counter = field(default_factory=Counter)

    def add(self, event, record_shapes: bool) -> None:
        self.calls += int(getattr(event, "count", 1) or 1)
        self.self_cpu_us += float(event.self_cpu_time_total)
        self.cpu_total_us += float(event.cpu_time_total)
        self.self_device_us += _self_device_us(event)
        self.device_total_us += _device_total_us(event)
        self.flops += float(getattr(event, "flops", 0) or 0)
        self.self_cpu_memory_bytes += float(getattr(event, "self_cpu_memory_usage", 0) or 0)
        self.self_device_memory_bytes += float(getattr(event, "self_device_memory_usage", 0) or 0)
        if record_shapes and getattr(event, "input_shapes", None):
            self.shapes[str(event.input_shapes)] += 1

    def merge(self, other: OperatorStats) -> None:
        for name in ("calls", "self_cpu_us", "cpu_total_us", "self_device_us", "device_total_us", "flops",
                     "self_cpu_memory_bytes", "self_device_memory_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shapes.update(other.shapes)


@dataclass
class RangeStats:
    """The stage ranges themselves: how often and how long (inclusive, CPU clock)."""

    count: int = 0
    cpu_us: float = 0.0
    device_us: float = 0.0


class OperatorTable:
    """Attributed operator sums of every recorded iteration of the stage."""

    def __init__(self, record_shapes: bool = False) -> None:
        self.record_shapes = record_shapes
        self.ops: dict[tuple[str, str], OperatorStats] = defaultdict(OperatorStats)
        self.ranges: dict[str, RangeStats] = defaultdict(RangeStats)
        self.samples: Counter = Counter()  # sample id -> recorded iterations
        self.iterations = 0

    def add_events(self, events: Iterable) -> None:
        events = list(events)
        for event in events:
            if not _is_cpu(event):
                continue
            stage = torch_range_stage(event.name)
            if stage is None:
                continue
            if is_sample_range(stage):
                self.samples[stage.split(":", 1)[1]] += 1
                self.iterations += 1
            else:
                ranges = self.ranges[stage]
                ranges.count += 1
                ranges.cpu_us += float(event.cpu_time_total)
                ranges.device_us += _device_total_us(event)
        for stage, _sample, event in attribute_events(events):
            self.ops[(stage, event.name)].add(event, self.record_shapes)

    # --- views ----------------------------------------------------------------------------

    @property
    def sort_by(self) -> str:
        """Self device time when the profile has any (CUDA activity), else self CPU time."""
        return SORT_DEVICE if any(s.self_device_us > 0 for s in self.ops.values()) else SORT_CPU

    def _key(self, stats: OperatorStats) -> float:
        return stats.self_device_us if self.sort_by == SORT_DEVICE else stats.self_cpu_us

    def _total_key(self, stats: OperatorStats) -> float:
        return stats.device_total_us if self.sort_by == SORT_DEVICE else stats.cpu_total_us

    def stage_totals(self) -> dict[str, dict]:
        """Per stage: exclusive operator self times and the inclusive range times (ms)."""
        totals: dict[str, dict] = {}
        stages = {stage for stage, _ in self.ops} | set(self.ranges)
        for stage in sorted(stages, key=stage_sort_key):
            members = [s for (st, _), s in self.ops.items() if st == stage]
            rng = self.ranges.get(stage)
            totals[stage] = {
                "operators": len(members),
                "calls": sum(s.calls for s in members),
                "self_cpu_ms": sum(s.self_cpu_us for s in members) / US_PER_MS,
                "self_device_ms": sum(s.self_device_us for s in members) / US_PER_MS,
                "ranges": rng.count if rng else 0,
                "range_cpu_ms": rng.cpu_us / US_PER_MS if rng else None,
                "range_cpu_ms_per_inference": (rng.cpu_us / US_PER_MS / self.iterations)
                if rng and self.iterations else None,
            }
        return totals

    def rows(self) -> list[dict]:
        """One row per (stage, operator), largest self time (device, else CPU) first."""
        stage_self = defaultdict(float)
        for (stage, _), stats in self.ops.items():
            stage_self[stage] += self._key(stats)
        rows = []
        for (stage, name), stats in self.ops.items():
            row = {
                "stage": stage, "operator": name, "calls": stats.calls,
                "self_cpu_ms": stats.self_cpu_us / US_PER_MS, "cpu_total_ms": stats.cpu_total_us / US_PER_MS,
                "self_device_ms": stats.self_device_us / US_PER_MS,
                "device_total_ms": stats.device_total_us / US_PER_MS,
                "share_of_stage_pct": (100.0 * self._key(stats) / stage_self[stage]) if stage_self[stage] else None,
                "flops": stats.flops or None,
                "self_cpu_memory_bytes": stats.self_cpu_memory_bytes or None,
                "self_device_memory_bytes": stats.self_device_memory_bytes or None,
            }
            if self.record_shapes:
                row["top_input_shapes"] = [{"shapes": s, "calls": n} for s, n in stats.shapes.most_common(TOP_SHAPES)]
            rows.append(row)
        rows.sort(key=lambda r: (-r[f"{self.sort_by}_ms"], stage_sort_key(r["stage"]), r["operator"]))
        return rows

    def by_operator(self) -> list[dict]:
        """Operators summed over stages, largest self time first."""
        merged: dict[str, OperatorStats] = defaultdict(OperatorStats)
        for (_, name), stats in self.ops.items():
            merged[name].merge(stats)
        total = sum(self._key(s) for s in merged.values())
        rows = [{"operator": name, "calls": s.calls, "self_cpu_ms": s.self_cpu_us / US_PER_MS,
                 "cpu_total_ms": s.cpu_total_us / US_PER_MS, "self_device_ms": s.self_device_us / US_PER_MS,
                 "device_total_ms": s.device_total_us / US_PER_MS,
                 "share_pct": (100.0 * self._key(s) / total) if total else None}
                for name, s in merged.items()]
        rows.sort(key=lambda r: (-r[f"{self.sort_by}_ms"], r["operator"]))
        return rows

    def to_json(self, top_k: int | None = None) -> dict:
        rows = self.rows()
        return {
            "sort_by": self.sort_by,
            "attribution": "innermost dsocr:: record_function range (cpu_parent chain; by time on other threads)",
            "profiled_iterations": self.iterations,
            "samples": dict(self.samples),
            "stages": self.stage_totals(),
            "operators": rows if top_k is None else rows[:top_k],
            "by_operator": self.by_operator() if top_k is None else self.by_operator()[:top_k],
        }

    # --- markdown -------------------------------------------------------------------------

    def _time_columns(self) -> tuple[str, str, str]:
        if self.sort_by == SORT_DEVICE:
            return "self_device_ms", "device_total_ms", "device"
        return "self_cpu_ms", "cpu_total_ms", "CPU"

    def operators_markdown(self, top_k: int, header: str = "") -> str:
        self_col, total_col, clock = self._time_columns()
        parts = ["# torch.profiler operators per DeepSeek-OCR stage", ""]
        if header:
            parts += [header, ""]
        parts += [
            f"{self.iterations} profiled inferences of {len(self.samples)} samples. Sorted by self {clock} time. "
            "Each operator call belongs to the innermost `dsocr::<stage>` range around it: vision calls "
            "are split into sam/clip/projector, prefill keeps the decoder's prefill (the stage ranges nest "
            "as in metrics.json's stage_nesting). Share = the operator's part of its stage's self "
            f"{clock} time. Times are totals over the profiled inferences.",
            "", "## Stages", "",
        ]
        rows = [[stage, t["ranges"], t["range_cpu_ms"], t["range_cpu_ms_per_inference"], t["calls"],
                 t["self_cpu_ms"], t["self_device_ms"] if self.sort_by == SORT_DEVICE else None]
                for stage, t in self.stage_totals().items()]
        parts.append(table(["Stage", "Ranges", "Range CPU ms (incl.)", "Range ms / inference", "Op calls",
                            "Op self CPU ms", "Op self device ms"], rows))
        parts += ["", f"## Top {top_k} operators", ""]
        rows = [[_short(r["operator"]), r["stage"], r["calls"], r[self_col], r[total_col],
                 fmt(r["share_of_stage_pct"], 1)] for r in self.rows()[:top_k]]
        parts.append(table(["Operator", "Stage", "Calls", f"Self {clock} ms", f"Total {clock} ms",
                            "% of stage"], rows, numeric_from=2))
        return "\n".join(parts) + "\n"

    def stage_operators_markdown(self, top_k: int) -> str:
        self_col, total_col, clock = self._time_columns()
        parts = ["# torch.profiler operators, stage by stage", "",
                 f"Top {top_k} operators of each stage by self {clock} time (exclusive stages: "
                 "an operator inside sam is not repeated under vision or prefill).", ""]
        rows_by_stage = defaultdict(list)
        for row in self.rows():
            rows_by_stage[row["stage"]].append(row)
        for stage in sorted(rows_by_stage, key=stage_sort_key):
            rows = rows_by_stage[stage][:top_k]
            parts += [f"## {stage}", ""]
            parts.append(table(["Operator", "Calls", f"Self {clock} ms", f"Total {clock} ms", "% of stage"],
                               [[_short(r["operator"]), r["calls"], r[self_col], r[total_col],
                                 fmt(r["share_of_stage_pct"], 1)] for r in rows]))
            parts.append("")
        return "\n".join(parts)


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"
