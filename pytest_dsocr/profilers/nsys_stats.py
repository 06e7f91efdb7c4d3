"""``nsys stats`` CSV reports -> GPU time per DeepSeek-OCR stage and top kernels per stage.

Three reports, by their current names (older releases in parentheses):

- ``nvtx_sum`` (``nvtxsum``, ``nvtxppsum``): per NVTX range, CPU-side duration. Columns
  ``Time (%), Total Time (ns), Instances, Avg (ns), Med (ns), Min (ns), Max (ns), StdDev (ns),
  Style, Range``.
- ``cuda_gpu_kern_sum`` (``gpukernsum``): per kernel, GPU execution time. Columns ``Time (%),
  Total Time (ns), Instances, Avg (ns), Med (ns), Min (ns), Max (ns), StdDev (ns), Name``.
- ``nvtx_kern_sum`` (``nvtxkernsum``): per (NVTX range, kernel), the GPU execution time of the
  kernels *launched* inside each range. Columns ``NVTX Range, Style, PID, TID, NVTX Inst, Kern
  Inst, Total Time (ns), Avg (ns), Med (ns), Min (ns), Max (ns), StdDev (ns), Kernel Name``.

GPU time per stage comes from ``nvtx_kern_sum``, never from the NVTX GPU projection report,
which can report the wall time of a range when the GPU is idle inside it. nvtx_kern_sum counts
a kernel in every range on the launching thread's push/pop stack, so its per-range times are
*inclusive* (prefill includes vision includes sam); exclusive times are derived by subtracting
the child stages (see :mod:`pytest_dsocr.profilers.attribution`). Range names of the "dsocr"
domain read ``dsocr:<stage>``. Column headers carry their time unit (``(ns)`` by default,
``(us)``/``(ms)``/``(s)`` with ``--timeunit``), older releases spell some columns differently
(``Average``, ``Time(%)``); both are read.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.attribution import (
    STAGE_PARENT,
    is_sample_range,
    nvtx_range_stage,
    stage_sort_key,
)
from pytest_dsocr.report.markdown import fmt, table

NS_PER_MS = 1e6
UNIT_NS = {"ns": 1.0, "nsec": 1.0, "us": 1e3, "usec": 1e3, "μs": 1e3, "ms": 1e6, "msec": 1e6, "s": 1e9, "sec": 1e9}
_UNIT_RE = re.compile(r"\(([^)]*)\)\s*$")
KERNEL_NAME_WIDTH = 70


@dataclass(frozen=True)
class Column:
    """A column found by one of its spellings, with the factor of its time unit to ns."""

    name: str
    scale: float = 1.0


def _unit_scale(header: str) -> float:
    match = _UNIT_RE.search(header)
    if not match:
        return 1.0
    unit = match.group(1).strip()
    if unit in ("%",):
        return 1.0
    if unit not in UNIT_NS:
        raise DsocrError(f"nsys stats CSV: unknown time unit {unit!r} in column {header!r}")
    return UNIT_NS[unit]


def _base(header: str) -> str:
    return _UNIT_RE.sub("", header).strip().lower()


def find_column(header: Sequence[str], *spellings: str, prefix: bool = False) -> Column | None:
    """The first column whose name (unit stripped, case-insensitive) is one of ``spellings``."""
    wanted = [s.lower() for s in spellings]
    for name in header:
        base = _base(name)
        if base in wanted or (prefix and any(base.startswith(w) for w in wanted)):
            return Column(name, _unit_scale(name))
    return None


def read_csv(text: str, marker: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of one stats CSV; lines before the header (notices) are skipped."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if marker.lower() in line.lower() and "," in line), None)
    if start is None:
        return [], []
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = [h.strip() for h in rows[0]]
    records = [dict(zip(header, row)) for row in rows[1:] if row and len(row) == len(header)]
    return header, records


def _number(row: dict[str, str], column: Column | None) -> float | None:
    if column is None:
        return None
    text = (row.get(column.name) or "").strip().replace(",", "")
    if not text:
        return None
    try:
        return float(text) * column.scale
    except ValueError:
        return None


def _require(column: Column | None, what: str, header: Sequence[str]) -> Column:
    if column is None:
        raise DsocrError(f"nsys stats {what}: no such column in {list(header)}")
    return column


# --- rows -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NvtxRange:
    """nvtx_sum: one NVTX range name, CPU-side duration (push to pop)."""

    range: str
    style: str
    instances: int
    total_ns: float

    @property
    def stage(self) -> str | None:
        return nvtx_range_stage(self.range)


@dataclass(frozen=True)
class KernelSum:
    """cuda_gpu_kern_sum: one kernel, GPU execution time."""

    name: str
    instances: int
    total_ns: float


@dataclass(frozen=True)
class RangeKernel:
    """nvtx_kern_sum: kernels of one name launched inside one NVTX range (one thread)."""

    range: str
    style: str
    pid: str
    tid: str
    nvtx_instances: int
    kernel_instances: int
    total_ns: float
    kernel: str

    @property
    def stage(self) -> str | None:
        return nvtx_range_stage(self.range)


def parse_nvtx_sum(text: str) -> list[NvtxRange]:
    header, rows = read_csv(text, "Total Time")
    if not header:
        return []
    name = _require(find_column(header, "Range", "Name"), "nvtx_sum Range", header)
    total = _require(find_column(header, "Total Time", prefix=True), "nvtx_sum Total Time", header)
    count = _require(find_column(header, "Instances", "Count"), "nvtx_sum Instances", header)
    style = find_column(header, "Style")
    return [NvtxRange(range=row[name.name], style=row.get(style.name, "") if style else "",
                      instances=int(_number(row, count) or 0), total_ns=_number(row, total) or 0.0)
            for row in rows]


def parse_gpu_kern_sum(text: str) -> list[KernelSum]:
    header, rows = read_csv(text, "Total Time")
    if not header:
        return []
    name = _require(find_column(header, "Name", "Kernel Name"), "cuda_gpu_kern_sum Name", header)
    total = _require(find_column(header, "Total Time", prefix=True), "cuda_gpu_kern_sum Total Time", header)
    count = _require(find_column(header, "Instances", "Count"), "cuda_gpu_kern_sum Instances", header)
    return [KernelSum(name=row[name.name], instances=int(_number(row, count) or 0),
                      total_ns=_number(row, total) or 0.0) for row in rows]


def parse_nvtx_kern_sum(text: str) -> list[RangeKernel]:
    header, rows = read_csv(text, "Kern Inst")
    if not header:
        return []
    rng = _require(find_column(header, "NVTX Range", "Range"), "nvtx_kern_sum NVTX Range", header)
    kernel = _require(find_column(header, "Kernel Name", "Name"), "nvtx_kern_sum Kernel Name", header)
    total = _require(find_column(header, "Total Time", prefix=True), "nvtx_kern_sum Total Time", header)
    kern_inst = _require(find_column(header, "Kern Inst"), "nvtx_kern_sum Kern Inst", header)
    nvtx_inst = find_column(header, "NVTX Inst")
    style, pid, tid = (find_column(header, c) for c in ("Style", "PID", "TID"))
    return [RangeKernel(
        range=row[rng.name], style=row.get(style.name, "") if style else "",
        pid=row.get(pid.name, "") if pid else "", tid=row.get(tid.name, "") if tid else "",
        nvtx_instances=int(_number(row, nvtx_inst) or 0), kernel_instances=int(_number(row, kern_inst) or 0),
        total_ns=_number(row, total) or 0.0, kernel=row[kernel.name],
    ) for row in rows]


# --- summary ----------------------------------------------------------------------------------

@dataclass
class NsysTables:
    """The three reports of one or more report files (merged by adding totals)."""

    ranges: list[NvtxRange]
    kernels: list[KernelSum]
    range_kernels: list[RangeKernel]

    @classmethod
    def merge(cls, parts: Iterable[NsysTables]) -> NsysTables:
        parts = list(parts)
        return cls([r for p in parts for r in p.ranges], [k for p in parts for k in p.kernels],
                   [rk for p in parts for rk in p.range_kernels])


def _children(stage: str) -> list[str]:
    return [child for child, parent in STAGE_PARENT.items() if parent == stage]


def stage_kernel_times(range_kernels: Sequence[RangeKernel]) -> dict[str, dict[str, list[float]]]:
    """Inclusive {stage: {kernel: [total_ns, launches]}} over threads, processes and reports."""
    table_: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for row in range_kernels:
        stage = row.stage
        if stage is None:
            continue
        cell_ = table_[stage][row.kernel]
        cell_[0] += row.total_ns
        cell_[1] += row.kernel_instances
    return table_


def exclusive_kernel_times(inclusive: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Per stage, each kernel's time minus what its child stages launched of the same kernel."""
    result: dict[str, dict[str, list[float]]] = {}
    for stage, kernels in inclusive.items():
        if is_sample_range(stage):
            continue
        own: dict[str, list[float]] = {}
        for name, (total, launches) in kernels.items():
            for child in _children(stage):
                child_total, child_launches = inclusive.get(child, {}).get(name, (0.0, 0.0))
                total, launches = total - child_total, launches - child_launches
            if launches > 0 or total > 0:
                own[name] = [max(total, 0.0), max(launches, 0.0)]
        result[stage] = own
    return result


def summarize(tables: NsysTables, top_k: int = 10) -> dict:
    """The ``nsys`` section of metrics.json (times in ms)."""
    inclusive = stage_kernel_times(tables.range_kernels)
    exclusive = exclusive_kernel_times(inclusive)
    wall: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for rng in tables.ranges:
        if rng.stage is not None:
            wall[rng.stage][0] += rng.total_ns
            wall[rng.stage][1] += rng.instances
    inferences = int(wall["prefill"][1]) if "prefill" in wall else None

    stages: dict[str, dict] = {}
    for stage in sorted((s for s in inclusive if not is_sample_range(s)), key=stage_sort_key):
        gpu_ns = sum(t for t, _ in inclusive[stage].values())
        excl_ns = sum(t for t, _ in exclusive.get(stage, {}).values())
        launches = int(sum(n for _, n in inclusive[stage].values()))
        wall_ns, instances = wall.get(stage, (None, None))
        stages[stage] = {
            "gpu_ms": gpu_ns / NS_PER_MS,
            "gpu_ms_exclusive": excl_ns / NS_PER_MS,
            "gpu_ms_per_inference": (gpu_ns / NS_PER_MS / inferences) if inferences else None,
            "kernel_launches": launches,
            "range_instances": int(instances) if instances is not None else None,
            "wall_ms": (wall_ns / NS_PER_MS) if wall_ns is not None else None,
            "gpu_busy_pct": (100.0 * gpu_ns / wall_ns) if wall_ns else None,
            "parent": STAGE_PARENT.get(stage),
        }

    samples = {}
    for stage, kernels in inclusive.items():
        if is_sample_range(stage):
            samples[stage.split(":", 1)[1]] = {
                "gpu_ms": sum(t for t, _ in kernels.values()) / NS_PER_MS,
                "kernel_launches": int(sum(n for _, n in kernels.values())),
            }

    top = {}
    for stage in stages:
        kernels = exclusive.get(stage, {})
        stage_total = sum(t for t, _ in kernels.values()) or None
        ranked = sorted(kernels.items(), key=lambda item: (-item[1][0], item[0]))[:top_k]
        top[stage] = [{"kernel": name, "gpu_ms": total / NS_PER_MS, "launches": int(launches),
                       "avg_us": (total / launches / 1e3) if launches else None,
                       "share_pct": (100.0 * total / stage_total) if stage_total else None}
                      for name, (total, launches) in ranked]

    total_kernel_ns = sum(k.total_ns for k in tables.kernels)
    overall: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for kernel in tables.kernels:
        overall[kernel.name][0] += kernel.total_ns
        overall[kernel.name][1] += kernel.instances
    top_overall = [{"kernel": name, "gpu_ms": total / NS_PER_MS, "launches": int(n),
                    "share_pct": (100.0 * total / total_kernel_ns) if total_kernel_ns else None}
                   for name, (total, n) in sorted(overall.items(), key=lambda item: (-item[1][0], item[0]))[:top_k]]
    attributed_ns = sum(sum(t for t, _ in kernels.values()) for stage, kernels in inclusive.items()
                        if is_sample_range(stage))
    return {
        "method": "nvtx_kern_sum (GPU execution time of kernels launched inside each range); "
                  "stage times inclusive of nested stages, *_exclusive without them",
        "inferences": inferences,
        "stages": stages,
        "samples": samples,
        "top_kernels": top,
        "total_gpu_kernel_ms": total_kernel_ns / NS_PER_MS,
        "attributed_gpu_ms": attributed_ns / NS_PER_MS,
        "top_kernels_overall": top_overall,
    }


def _short(name: str) -> str:
    return name if len(name) <= KERNEL_NAME_WIDTH else name[: KERNEL_NAME_WIDTH - 1] + "…"


def summary_markdown(section: dict, reports: Sequence[str] = ()) -> str:
    """nsys/summary.md."""
    parts = ["# Nsight Systems: GPU time per DeepSeek-OCR stage", ""]
    if reports:
        parts += ["Reports: " + ", ".join(f"`{r}`" for r in reports), ""]
    parts += [
        "GPU time is the execution time of the kernels launched inside each stage's NVTX range "
        "(nsys `nvtx_kern_sum`), not the NVTX GPU projection. Inclusive: vision is inside prefill, "
        "sam/clip/projector inside vision; exclusive leaves the nested stages out. Wall is the "
        "range's CPU-side duration (`nvtx_sum`); GPU busy = inclusive GPU time / wall.",
        "",
    ]
    inferences = section.get("inferences")
    parts += [f"Profiled inferences: {inferences if inferences is not None else 'n/a'}. "
              f"GPU kernel time captured: {fmt(section.get('total_gpu_kernel_ms'), 3)} ms, of which "
              f"{fmt(section.get('attributed_gpu_ms'), 3)} ms inside sample ranges.", "", "## Per stage", ""]
    rows = [[stage, s["gpu_ms"], s["gpu_ms_exclusive"], s["gpu_ms_per_inference"], s["kernel_launches"],
             s["range_instances"], s["wall_ms"], fmt(s["gpu_busy_pct"], 1)]
            for stage, s in section["stages"].items()]
    parts.append(table(["Stage", "GPU ms", "GPU ms (exclusive)", "GPU ms / inference", "Kernels",
                        "Ranges", "Wall ms", "GPU busy %"], rows))
    if section.get("samples"):
        parts += ["", "## Per sample", ""]
        rows = [[name, s["gpu_ms"], s["kernel_launches"]] for name, s in sorted(section["samples"].items())]
        parts.append(table(["Sample", "GPU ms", "Kernels"], rows))
    for stage, kernels in section["top_kernels"].items():
        if not kernels:
            continue
        parts += ["", f"## Top kernels: {stage} (exclusive)", ""]
        rows = [[_short(k["kernel"]), k["gpu_ms"], k["launches"], k["avg_us"], fmt(k["share_pct"], 1)] for k in kernels]
        parts.append(table(["Kernel", "GPU ms", "Launches", "Avg us", "% of stage"], rows))
    if section.get("top_kernels_overall"):
        parts += ["", "## Top kernels: whole capture", ""]
        rows = [[_short(k["kernel"]), k["gpu_ms"], k["launches"], fmt(k["share_pct"], 1)]
                for k in section["top_kernels_overall"]]
        parts.append(table(["Kernel", "GPU ms", "Launches", "% of GPU time"], rows))
    return "\n".join(parts) + "\n"
