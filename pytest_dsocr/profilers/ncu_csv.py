"""Nsight Compute's raw page as CSV (``ncu --csv --page raw``) -> one record per kernel launch.

Format: a header row (``"ID","Process ID","Process Name","Host Name", ..., "Kernel Name", ...,
<metric names>``), a units row (``"","","",...,"nsecond","%",...``), then one row per profiled
kernel launch. With ``--nvtx`` ncu adds a column describing the NVTX push/pop stack of the
launching thread (header ``thread Domain:Push/Pop_Range:...``), from which the stage is taken.
Lines ncu prints around the table (``==PROF== ...``, the program's own output when the CSV goes
to stdout) are skipped. Values may carry thousands separators (``1,234.5``) or be ``n/a``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.attribution import KNOWN_STAGES, stage_of_nvtx_text, stage_sort_key
from pytest_dsocr.report.markdown import fmt, table

DURATION = "gpu__time_duration.sum"
SM_THROUGHPUT = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
MEMORY_THROUGHPUT = "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"
DRAM_THROUGHPUT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
DRAM_BYTES = "dram__bytes.sum"
DRAM_BYTES_PARTS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
# FLOPs per CUDA-core instruction kind: an FMA is two operations.
FLOP_METRICS: dict[str, int] = {
    f"sm__sass_thread_inst_executed_op_{precision}{op}_pred_on.sum": (2 if op == "fma" else 1)
    for precision in ("f", "h", "d") for op in ("add", "mul", "fma")
}
NVTX_COLUMN_MARKERS = ("Push/Pop_Range", "Start/Stop_Range", "NVTX")
HEADER_FIRST_CELL = "ID"
NOT_AVAILABLE = {"", "n/a", "N/A", "nan", "(!)"}

TIME_UNITS_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
                 "second": 1e9, "s": 1e9}
SI_PREFIX = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}

BOUND_COMPUTE, BOUND_MEMORY, BOUND_LATENCY = "compute", "memory", "latency"
KERNEL_NAME_WIDTH = 70  # characters of a kernel name shown in kernels.md (full names in kernels.csv)
CSV_FIELDS = ("id", "sample", "stage", "range", "kernel", "duration_us", "sm_throughput_pct", "memory_throughput_pct",
              "dram_throughput_pct", "achieved_occupancy_pct", "flops", "dram_bytes", "arithmetic_intensity",
              "bound", "block_size", "grid_size", "nvtx")


def unit_scale(unit: str) -> float:
    """Factor to base units: time to nanoseconds, ``Kbyte``/``Mbyte``... to bytes (decimal, as ncu)."""
    unit = unit.strip()
    if unit in TIME_UNITS_NS:
        return TIME_UNITS_NS[unit]
    if len(unit) > 1 and unit[0] in SI_PREFIX and unit[1:2].islower():
        return SI_PREFIX[unit[0]]
    return 1.0


def parse_number(text: str | None) -> float | None:
    """``"1,234.5"`` -> 1234.5; ``n/a`` and empty -> None."""
    if text is None:
        return None
    value = text.strip().strip('"')
    if value in NOT_AVAILABLE:
        return None
    try:
        number = float(value.replace(",", ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_raw_csv(text: str) -> tuple[list[str], dict[str, str], list[dict[str, str]]]:
    """(header, units by column, one dict per kernel row) of ncu's raw CSV page."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f'"{HEADER_FIRST_CELL}"')), None)
    if start is None:
        raise DsocrError("ncu raw CSV: no header row (a line starting with \"ID\"); "
                         "did ncu profile any kernel? (check the NVTX filter and --launch-count)")
    body = [line for line in lines[start:] if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(body))))
    header = rows[0]
    if len(rows) < 2:
        return header, {}, []
    units = dict(zip(header, rows[1]))
    records = [dict(zip(header, row)) for row in rows[2:] if len(row) == len(header)]
    return header, units, records


@dataclass(frozen=True)
class NcuKernel:
    """One profiled kernel launch."""

    id: int
    kernel: str
    sample: str | None
    stage: str
    nvtx: str
    duration_ns: float | None
    sm_throughput_pct: float | None
    memory_throughput_pct: float | None
    dram_throughput_pct: float | None
    achieved_occupancy_pct: float | None
    dram_bytes: float | None
    flops: float | None
    block_size: str = ""
    grid_size: str = ""
    range: str = ""  # the ncu pass (profiling.ncu.ranges entry) that profiled it

    @property
    def arithmetic_intensity(self) -> float | None:
        """CUDA-core FLOPs per DRAM byte (tensor-core work is not in the SASS FP counters)."""
        if self.flops is None or not self.dram_bytes:
            return None
        return self.flops / self.dram_bytes

    def bound(self, latency_pct: float) -> str | None:
        """Nsight Compute's speed-of-light reading: the busier unit limits the kernel; when
        neither reaches ``latency_pct`` of its peak, latency does."""
        memory = self.memory_throughput_pct if self.memory_throughput_pct is not None else self.dram_throughput_pct
        return classify_bound(self.sm_throughput_pct, memory, latency_pct)

    def to_row(self, latency_pct: float) -> dict:
        return {
            "id": self.id, "sample": self.sample or "", "stage": self.stage, "range": self.range,
            "kernel": self.kernel,
            "duration_us": None if self.duration_ns is None else self.duration_ns / 1e3,
            "sm_throughput_pct": self.sm_throughput_pct, "memory_throughput_pct": self.memory_throughput_pct,
            "dram_throughput_pct": self.dram_throughput_pct, "achieved_occupancy_pct": self.achieved_occupancy_pct,
            "flops": self.flops, "dram_bytes": self.dram_bytes, "arithmetic_intensity": self.arithmetic_intensity,
            "bound": self.bound(latency_pct), "block_size": self.block_size, "grid_size": self.grid_size,
            "nvtx": self.nvtx,
        }


def classify_bound(sm_pct: float | None, memory_pct: float | None, latency_pct: float) -> str | None:
    if sm_pct is None and memory_pct is None:
        return None
    sm, memory = sm_pct or 0.0, memory_pct or 0.0
    if max(sm, memory) < latency_pct:
        return BOUND_LATENCY
    return BOUND_COMPUTE if sm >= memory else BOUND_MEMORY


def _metric(row: dict[str, str], units: dict[str, str], name: str) -> float | None:
    value = parse_number(row.get(name))
    return None if value is None else value * unit_scale(units.get(name, ""))


def _nvtx_text(header: Sequence[str], row: dict[str, str]) -> str:
    columns = [name for name in header if any(marker in name for marker in NVTX_COLUMN_MARKERS)]
    return " | ".join(row[name] for name in columns if row.get(name))


def parse_raw_csv(text: str, known_stages: Iterable[str] = KNOWN_STAGES, range_name: str = "") -> list[NcuKernel]:
    """Kernel records of ``ncu --csv --page raw`` output, each with its innermost stage
    (``range_name`` tags them with the ncu pass that profiled them)."""
    header, units, rows = read_raw_csv(text)
    kernels = []
    for index, row in enumerate(rows):
        nvtx = _nvtx_text(header, row)
        sample, stage = stage_of_nvtx_text(nvtx, known_stages)
        flops = None
        for name, per_inst in FLOP_METRICS.items():
            count = _metric(row, units, name)
            if count is not None:
                flops = (flops or 0.0) + per_inst * count
        dram_bytes = _metric(row, units, DRAM_BYTES)
        if dram_bytes is None:
            parts = [_metric(row, units, name) for name in DRAM_BYTES_PARTS]
            dram_bytes = sum(parts) if all(p is not None for p in parts) else None
        kernel_id = parse_number(row.get("ID"))
        kernels.append(NcuKernel(
            id=int(kernel_id) if kernel_id is not None else index,
            kernel=row.get("Kernel Name", "") or row.get("Function Name", ""),
            sample=sample, stage=stage, nvtx=nvtx,
            duration_ns=_metric(row, units, DURATION),
            sm_throughput_pct=_metric(row, units, SM_THROUGHPUT),
            memory_throughput_pct=_metric(row, units, MEMORY_THROUGHPUT),
            dram_throughput_pct=_metric(row, units, DRAM_THROUGHPUT),
            achieved_occupancy_pct=_metric(row, units, OCCUPANCY),
            dram_bytes=dram_bytes, flops=flops,
            block_size=row.get("Block Size", ""), grid_size=row.get("Grid Size", ""), range=range_name,
        ))
    return kernels


# --- tables -----------------------------------------------------------------------------------

def _weighted(kernels: Sequence[NcuKernel], attr: str) -> float | None:
    """Duration-weighted mean of a percentage (the share of time each unit was busy)."""
    pairs = [(getattr(k, attr), k.duration_ns or 0.0) for k in kernels if getattr(k, attr) is not None]
    weight = sum(w for _, w in pairs)
    if not pairs:
        return None
    if weight <= 0:
        return sum(v for v, _ in pairs) / len(pairs)
    return sum(v * w for v, w in pairs) / weight


def _sum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def summarize_group(kernels: Sequence[NcuKernel], latency_pct: float) -> dict:
    """Totals and duration-weighted utilizations of a group of launches."""
    duration = _sum(k.duration_ns for k in kernels)
    flops, dram = _sum(k.flops for k in kernels), _sum(k.dram_bytes for k in kernels)
    sm = _weighted(kernels, "sm_throughput_pct")
    memory = _weighted(kernels, "memory_throughput_pct")
    dram_pct = _weighted(kernels, "dram_throughput_pct")
    bounds: dict[str, int] = defaultdict(int)
    for kernel in kernels:
        label = kernel.bound(latency_pct)
        if label:
            bounds[label] += 1
    return {
        "launches": len(kernels),
        "duration_ms": None if duration is None else duration / 1e6,
        "mean_us": None if duration is None or not kernels else duration / len(kernels) / 1e3,
        "sm_throughput_pct": sm,
        "memory_throughput_pct": memory,
        "dram_throughput_pct": dram_pct,
        "achieved_occupancy_pct": _weighted(kernels, "achieved_occupancy_pct"),
        "flops": flops,
        "dram_bytes": dram,
        "arithmetic_intensity": (flops / dram) if flops is not None and dram else None,
        "bound": classify_bound(sm, memory if memory is not None else dram_pct, latency_pct),
        "bound_counts": dict(bounds),
    }


def per_stage(kernels: Sequence[NcuKernel], latency_pct: float) -> dict[str, dict]:
    groups: dict[str, list[NcuKernel]] = defaultdict(list)
    for kernel in kernels:
        groups[kernel.stage].append(kernel)
    return {stage: summarize_group(groups[stage], latency_pct) for stage in sorted(groups, key=stage_sort_key)}


def top_kernels(kernels: Sequence[NcuKernel], latency_pct: float, top_k: int) -> list[dict]:
    """Launches grouped by (stage, kernel name), longest total duration first."""
    groups: dict[tuple[str, str], list[NcuKernel]] = defaultdict(list)
    for kernel in kernels:
        groups[(kernel.stage, kernel.kernel)].append(kernel)
    rows = []
    for (stage, name), members in groups.items():
        rows.append({"stage": stage, "kernel": name, **summarize_group(members, latency_pct)})
    rows.sort(key=lambda r: (-(r["duration_ms"] or 0.0), stage_sort_key(r["stage"]), r["kernel"]))
    return rows[:top_k]


def short_name(name: str, width: int = KERNEL_NAME_WIDTH) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _num(value: float | None, digits: int = 1) -> str:
    return fmt(None if value is None else float(value), digits)


def kernels_markdown(kernels: Sequence[NcuKernel], latency_pct: float, top_k: int, header: str = "") -> str:
    """ncu/kernels.md: stages, then the longest kernels with their limiter."""
    stages = per_stage(kernels, latency_pct)
    parts = ["# Nsight Compute kernels per DeepSeek-OCR stage", ""]
    if header:
        parts += [header, ""]
    parts += [
        f"{len(kernels)} profiled kernel launches. Each launch belongs to the innermost dsocr NVTX "
        "range around it (vision launches are split into sam/clip/projector; prefill keeps the "
        "decoder's prefill). Percentages are duration-weighted means of % of peak. Bound: the "
        f"busier of SM and memory throughput; latency when both stay under {latency_pct:g}% "
        "(Nsight Compute's speed-of-light reading; Memory % is the busiest memory unit, L1/L2/DRAM, "
        "so a kernel can be memory-bound at a low DRAM %). Arithmetic intensity counts CUDA-core FLOPs "
        "(SASS add/mul/fma, fp16/32/64) per DRAM byte: tensor-core GEMMs are not in those counters.",
        "", "## Per stage", "",
    ]
    rows = [[stage, s["launches"], _num(s["duration_ms"], 3), _num(s["sm_throughput_pct"]),
             _num(s["memory_throughput_pct"]), _num(s["dram_throughput_pct"]),
             _num(s["achieved_occupancy_pct"]), _num(s["arithmetic_intensity"], 2), s["bound"] or "n/a"]
            for stage, s in stages.items()]
    parts.append(table(["Stage", "Launches", "Time (ms)", "SM %", "Memory %", "DRAM %", "Occupancy %",
                        "FLOP/byte", "Bound"], rows))
    parts += ["", f"## Top {top_k} kernels (by total duration)", ""]
    rows = [[r["stage"], short_name(r["kernel"]), r["launches"], _num(r["duration_ms"], 3), _num(r["mean_us"], 2),
             _num(r["sm_throughput_pct"]), _num(r["memory_throughput_pct"]), _num(r["dram_throughput_pct"]),
             _num(r["achieved_occupancy_pct"]), _num(r["arithmetic_intensity"], 2), r["bound"] or "n/a"]
            for r in top_kernels(kernels, latency_pct, top_k)]
    parts.append(table(["Stage", "Kernel", "Launches", "Total (ms)", "Mean (us)", "SM %", "Memory %", "DRAM %",
                        "Occupancy %", "FLOP/byte", "Bound"], rows, numeric_from=2))
    return "\n".join(parts) + "\n"


def kernels_csv(kernels: Sequence[NcuKernel], latency_pct: float) -> str:
    """ncu/kernels.csv: one row per launch, base units (us, bytes, FLOPs)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for kernel in kernels:
        writer.writerow({k: ("" if v is None else v) for k, v in kernel.to_row(latency_pct).items()})
    return out.getvalue()


def ncu_section(kernels: Sequence[NcuKernel], latency_pct: float, top_k: int) -> dict:
    """The ``ncu`` section of metrics.json."""
    return {
        "launches": len(kernels),
        "per_stage": per_stage(kernels, latency_pct),
        "top_kernels": top_kernels(kernels, latency_pct, top_k),
        "latency_bound_pct": latency_pct,
    }


def kernel_to_json(kernel: NcuKernel) -> dict:
    return asdict(kernel)
