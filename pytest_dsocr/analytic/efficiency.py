"""Analytic costs against a GPU: floor times, bound, and MFU/MBU from measured stage times.

``floor = max(flops / peak, bytes / bandwidth)``: the time a stage cannot beat on that GPU.
A stage is compute-bound when its arithmetic intensity exceeds the GPU's ridge point
``peak / bandwidth``. MFU = achieved FLOP/s / peak, MBU = achieved bytes/s / bandwidth, both
from the analytic FLOPs and bytes of each measured run's own workload (crop grid, prompt
length, generated tokens) over the measured time. Without a GPU table they are omitted with the
reason, never invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.ops import Number
from pytest_dsocr.analytic.workload import Workload
from pytest_dsocr.families import ALL_STAGES
from pytest_dsocr.hardware import Hardware, HardwareChoice
from pytest_dsocr.stages import DECODE, PREFILL, PRIMARY_STAGE, VISION

MS = 1e-3
# Stages with a measured time in ImageRun records (prefill = decoder prefill + lm_head on the
# last token, i.e. prefill_ms - vision_ms, as vision nests inside prefill_ms). A family measures
# only its own sub-stages (v1: clip, v2: encoder); the others have no times and are skipped.
MEASURED_STAGES = (*ALL_STAGES.vision_parts, VISION, PREFILL, DECODE)
# The figure each stage is judged by: prefill-like stages by compute, decode by bandwidth.
PRIMARY_METRIC = {**dict.fromkeys(MEASURED_STAGES, "mfu"), DECODE: "mbu"}
MEASURED_RUN_STAGE = PRIMARY_STAGE  # profiler stages add overhead; judge plain runs only


def floor_seconds(flops: Number, nbytes: Number, hw: Hardware, dtype: str) -> Number:
    """The stage's lower bound on ``hw``: the slower of compute at peak and traffic at bandwidth."""
    return np.maximum(np.asarray(flops) / hw.peak_flops(dtype), np.asarray(nbytes) / hw.bandwidth)


def bound(flops: float, nbytes: float, hw: Hardware, dtype: str) -> str:
    """"compute" when the arithmetic intensity is above the ridge point, else "memory"."""
    ridge = hw.peak_flops(dtype) / hw.bandwidth
    return "compute" if nbytes and flops / nbytes > ridge else "memory"


@dataclass(frozen=True)
class Measured:
    """Stage times and sizes of one measured run (from an ImageRun or its metrics.json form)."""

    crop_grid: tuple[int, int]
    image_tokens: int
    prefill_len: int
    tokens: int
    times_ms: Mapping[str, Optional[float]]
    device: str

    @classmethod
    def from_run(cls, run) -> "Measured":
        """From an :class:`~pytest_dsocr.records.ImageRun` (a session's record or metrics.json's)."""
        times = {
            **run.substage_ms, "vision": run.vision_ms,
            "prefill": run.prefill_ms - run.vision_ms,
            "decode": run.decode_ms,
        }
        return cls(tuple(run.crop_grid), int(run.image_tokens), int(run.prefill_len), int(run.tokens), times,
                   str(run.device))


def measured_workload(runs: list[Measured], base_size: int, image_size: int, dtype_bytes: int,
                      attention: str) -> Workload:
    """All measured runs as one array workload: each with its grid, prompt and decode steps."""
    crops = np.array([0 if m.crop_grid == (1, 1) else m.crop_grid[0] * m.crop_grid[1] for m in runs],
                     dtype=np.int64)
    image = np.array([m.image_tokens for m in runs], dtype=np.int64)
    return Workload(
        base_size=base_size, image_size=image_size, crops=crops, image_tokens=image,
        text_tokens=np.array([m.prefill_len for m in runs], dtype=np.int64) - image,
        decode_steps=np.array([max(m.tokens - 1, 0) for m in runs], dtype=np.int64),
        batch=1, dtype_bytes=dtype_bytes, attention=attention,
    )


def efficiency(model: DeepseekOCRCostModel, runs: Iterable[Measured], choice: HardwareChoice, dtype: str,
               base_size: int, image_size: int, dtype_bytes: int, attention: str) -> dict:
    """The ``efficiency`` section: per stage achieved TFLOP/s and GB/s, MFU and MBU.

    Totals over runs (sum of analytic work / sum of measured time), so long runs weigh more.
    ``{"omitted": reason}`` when there is nothing to judge against.
    """
    runs = list(runs)
    if not runs:
        return {"omitted": "no measured runs (run the direct_inference stage in the same session, "
                           "or set static_analysis.metrics=PATH/metrics.json)"}
    devices = sorted({m.device for m in runs})
    if not any(d.startswith("cuda") for d in devices):
        return {"omitted": f"measured on {', '.join(devices)}: MFU/MBU are defined against a GPU's "
                           "peak FLOP/s and bandwidth"}
    if choice.hardware is None:
        return {"omitted": choice.reason}
    hw = choice.hardware
    runs = [m for m in runs if m.device.startswith("cuda")]
    wl = measured_workload(runs, base_size, image_size, dtype_bytes, attention)
    costs = model.vision(wl)
    costs["prefill"] = model.prefill(wl)
    costs["decode"] = model.decode(wl.prefill_tokens, wl.decode_steps, 1, attention, dtype_bytes)
    stages = {}
    for stage in MEASURED_STAGES:
        times = np.array([m.times_ms.get(stage) if m.times_ms.get(stage) is not None else np.nan
                          for m in runs], dtype=float)
        have = ~np.isnan(times)
        if not have.any() or times[have].sum() <= 0:
            continue
        seconds = times[have].sum() * MS
        flops = float(np.asarray(costs[stage].flops)[have].sum())
        nbytes = float(np.asarray(costs[stage].bytes)[have].sum())
        achieved_flops, achieved_bytes = flops / seconds, nbytes / seconds
        stages[stage] = {
            "runs": int(have.sum()),
            "measured_ms": seconds / MS,
            "flops": flops,
            "bytes": nbytes,
            "achieved_tflops": achieved_flops / 1e12,
            "achieved_gb_s": achieved_bytes / 1e9,
            "mfu": achieved_flops / hw.peak_flops(dtype),
            "mbu": achieved_bytes / hw.bandwidth,
            "floor_ms": float(floor_seconds(flops, nbytes, hw, dtype)) / MS,
            "primary": PRIMARY_METRIC[stage],
        }
    return {"hardware": hw.to_json(), "hardware_choice": choice.reason, "dtype": dtype,
            "attention": attention, "stages": stages}


def efficiency_markdown(section: Mapping[str, Any]) -> str:
    """The "Efficiency" table of the stakeholder summary (or the reason it is omitted)."""
    if "omitted" in section:
        return f"MFU/MBU omitted: {section['omitted']}."
    hw = section["hardware"]
    lines = [
        f"Against {hw['display_name']} ({section['dtype']}, {section['hardware_choice']}); analytic "
        f"FLOPs and bytes of each run's own workload over its measured time. Prefill is the decoder "
        f"part (prefill_ms - vision_ms). Bold: the figure the stage is judged by.",
        "",
        "| stage | runs | measured ms | floor ms | TFLOP/s | MFU | GB/s | MBU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, s in section["stages"].items():
        mfu, mbu = f"{s['mfu']:.1%}", f"{s['mbu']:.1%}"
        if s["primary"] == "mfu":
            mfu = f"**{mfu}**"
        else:
            mbu = f"**{mbu}**"
        lines.append(f"| {stage} | {s['runs']} | {s['measured_ms']:.2f} | {s['floor_ms']:.3f} | "
                     f"{s['achieved_tflops']:.2f} | {mfu} | {s['achieved_gb_s']:.1f} | {mbu} |")
    return "\n".join(lines)
