"""Analytic sweeps: vision cost per crop grid, vision + prefill per grid, decode per context
length and step count.

The cost model is built once; a sweep is one evaluation of it on a :class:`Workload` whose sizes
are numpy arrays (one entry per point), never a rebuild or a config copy per point.
:func:`rebuild_per_point` evaluates the same sweep the slow way (a fresh cost model per point),
for the benchmark and for the test that both give the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pytest_dsocr.analytic.config import CONTEXT_STEP, DEFAULT_DECODE_STEPS
from pytest_dsocr.analytic.efficiency import MS, floor_seconds
from pytest_dsocr.analytic.family import AnalyticFamily, analytic_for
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import Workload, dtype_bytes, resolve_dtype_name
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.hardware import Hardware, select_hardware
from pytest_dsocr.atomic import atomic_save_figure, atomic_write_text

log = logging.getLogger(__name__)

SWEEP_DIR = "sweeps"
SWEEPS = ("vision_crops", "vision_prefill", "decode")
GLOBAL_ONLY = (1, 1)  # the no-crop baseline row of the crop sweeps
MIN_SWEEP_CROPS = 2  # the smallest crop grid of both families' preprocessing has two tiles


@dataclass(frozen=True)
class SweepPoints:
    """Where the three sweeps are evaluated."""

    grids: tuple[tuple[int, int], ...]  # crop sweeps: (1, 1) = global view only
    contexts: np.ndarray  # decode sweep, one entry per point: tokens in the KV cache
    steps: np.ndarray  # decode sweep, one entry per point: decode steps

    @classmethod
    def build(cls, spec, grids: Sequence[tuple[int, int]], context_lengths: Optional[Sequence[int]] = None,
              decode_steps: Sequence[int] = tuple(DEFAULT_DECODE_STEPS)) -> "SweepPoints":
        """The global-only baseline then ``grids`` (a family's candidate crop grids); every
        (context, steps) pair that fits the decoder's position limit (``spec.text``)."""
        limit = spec.text.max_position_embeddings
        if context_lengths is None:
            context_lengths = range(CONTEXT_STEP, limit + 1, CONTEXT_STEP)
        pairs = [(c, n) for c in context_lengths for n in decode_steps if c + n <= limit]
        contexts = np.array([c for c, _ in pairs], dtype=np.int64)
        steps = np.array([n for _, n in pairs], dtype=np.int64)
        return cls((GLOBAL_ONLY, *grids), contexts, steps)


@dataclass(frozen=True)
class SweepSettings:
    """What stays fixed across a sweep."""

    base_size: int = 1024
    image_size: int = 640
    text_tokens: int = 10
    batch: int = 1
    dtype_bytes: int = 2
    attention: str = "flash"
    hardware: Optional[Hardware] = None  # adds floor-time columns when given
    dtype: str = "bfloat16"  # which peak of ``hardware`` applies


Columns = dict[str, np.ndarray]


def _floor_ms(flops, nbytes, s: SweepSettings) -> np.ndarray:
    return floor_seconds(flops, nbytes, s.hardware, s.dtype) / MS


def crop_sweeps(analytic: AnalyticFamily, model: DeepseekOCRCostModel, grids: Sequence[tuple[int, int]],
                s: SweepSettings) -> tuple[Columns, Columns]:
    """Both crop-grid sweeps from one evaluation of the grids' workload, in the token layout of
    the family ``analytic`` describes (see :func:`crop_columns`)."""
    wl = analytic.workload_for_grids(model.spec, s.base_size, s.image_size, grids, text_tokens=s.text_tokens,
                                     batch=s.batch, dtype_bytes=s.dtype_bytes, attention=s.attention)
    return crop_columns(model, wl, grids, s)


def crop_columns(model: DeepseekOCRCostModel, wl: Workload, grids: Sequence[tuple[int, int]], s: SweepSettings
                 ) -> tuple[Columns, Columns]:
    """Both crop-grid sweeps of ``grids``, whose array workload is ``wl``.

    ``vision_crops``: vision tokens, FLOPs and bytes of every grid, with one ``<part>_flops``
    column per part of the model's vision tower. ``vision_prefill``: per grid, vision, then the
    decoder prefill over that grid's image tokens plus the prompt.
    """
    v = model.vision(wl)
    vision, prefill = v["vision"], model.prefill(wl)
    grid_cols = {"grid_w": np.array([g[0] for g in grids]), "grid_h": np.array([g[1] for g in grids]),
                 "crops": wl.crops, "image_tokens": wl.image_tokens}
    crops = {
        **grid_cols,
        **{f"{part}_flops": v[part].flops for part in model.VISION_PARTS},
        "vision_flops": vision.flops, "vision_matmul_flops": vision.matmul_flops,
        "vision_bytes": vision.bytes, "vision_weight_bytes": vision.weight_bytes,
        "vision_activation_bytes": vision.activation_bytes,
    }
    with_prefill = {
        **grid_cols, "prefill_tokens": wl.prefill_tokens,
        "vision_flops": vision.flops, "vision_bytes": vision.bytes,
        "prefill_flops": prefill.flops, "prefill_matmul_flops": prefill.matmul_flops,
        "prefill_bytes": prefill.bytes, "prefill_weight_bytes": prefill.weight_bytes,
        "prefill_kv_bytes": prefill.kv_bytes,
        "total_flops": vision.flops + prefill.flops, "total_bytes": vision.bytes + prefill.bytes,
    }
    if s.hardware is not None:
        vision_floor = _floor_ms(vision.flops, vision.bytes, s)
        prefill_floor = _floor_ms(prefill.flops, prefill.bytes, s)
        crops["vision_floor_ms"] = vision_floor
        with_prefill.update(vision_floor_ms=vision_floor, prefill_floor_ms=prefill_floor,
                            ttft_floor_ms=vision_floor + prefill_floor)
    return crops, with_prefill


def decode(model: DeepseekOCRCostModel, contexts: np.ndarray, steps: np.ndarray, s: SweepSettings) -> Columns:
    """Per (context, steps): the first step, the sum over all steps, and the KV cache size."""
    first = model.decode_step(contexts + 1, s.batch, s.attention, s.dtype_bytes)
    total = model.decode(contexts, steps, s.batch, s.attention, s.dtype_bytes)
    cols = {
        "context": contexts, "steps": steps,
        "step_flops": first.flops, "step_bytes": first.bytes, "step_kv_bytes": first.kv_bytes,
        "decode_flops": total.flops, "decode_bytes": total.bytes,
        "decode_weight_bytes": total.weight_bytes, "decode_kv_bytes": total.kv_bytes,
        "kv_cache_bytes": model.decoder.kv_cache_bytes(s.batch, contexts + steps, s.dtype_bytes),
    }
    if s.hardware is not None:
        cols["step_floor_ms"] = _floor_ms(first.flops, first.bytes, s)
        cols["decode_floor_ms"] = _floor_ms(total.flops, total.bytes, s)
        cols["tpot_floor_ms"] = cols["decode_floor_ms"] / steps
    return cols


def run_sweeps(analytic: AnalyticFamily, model: DeepseekOCRCostModel, points: SweepPoints,
               s: SweepSettings) -> dict[str, Columns]:
    """The three sweeps on one cost model (the reuse path)."""
    crops, with_prefill = crop_sweeps(analytic, model, points.grids, s)
    return {"vision_crops": crops, "vision_prefill": with_prefill,
            "decode": decode(model, points.contexts, points.steps, s)}


def rebuild_per_point(analytic: AnalyticFamily, size: str, points: SweepPoints, s: SweepSettings
                      ) -> dict[str, Columns]:
    """The same sweeps with a fresh cost model of ``size`` for every point (the way the system we
    replace did it, minus its config copies): the baseline for reuse."""

    def stack(rows: list[Columns]) -> Columns:
        return {k: np.concatenate([np.atleast_1d(r[k]) for r in rows]) for k in rows[0]}

    one = np.ones(1, dtype=np.int64)
    crops = [crop_sweeps(analytic, analytic.cost_model(size), [g], s) for g in points.grids]
    return {
        "vision_crops": stack([c for c, _ in crops]),
        "vision_prefill": stack([p for _, p in crops]),
        "decode": stack([decode(analytic.cost_model(size), c * one, n * one, s)
                         for c, n in zip(points.contexts.tolist(), points.steps.tolist())]),
    }


def _column_text(values: np.ndarray) -> list[str]:
    """One column as CSV cells: integers exactly, floats to 6 significant digits."""
    values = np.atleast_1d(values)
    if np.issubdtype(values.dtype, np.floating):
        return [f"{v:.6g}" for v in values.tolist()]
    return list(map(str, values.tolist()))


def to_csv(columns: Columns) -> str:
    """Header and one line per point (the values contain no commas or quotes)."""
    cells = [_column_text(columns[name]) for name in columns]
    return "\n".join([",".join(columns), *map(",".join, zip(*cells))]) + "\n"


def _plot_vision_crops(ax, cols: Columns) -> None:
    ax[0].plot(cols["image_tokens"], cols["vision_flops"] / 1e12, "o")
    ax[0].set(xlabel="image tokens", ylabel="vision TFLOP")
    ax[1].plot(cols["image_tokens"], cols["vision_bytes"] / 1e9, "o")
    ax[1].set(xlabel="image tokens", ylabel="vision GB")


def _plot_vision_prefill(ax, cols: Columns) -> None:
    for key, label in (("vision_flops", "vision"), ("prefill_flops", "prefill"), ("total_flops", "total")):
        ax[0].plot(cols["prefill_tokens"], cols[key] / 1e12, "o", label=label)
    ax[0].set(xlabel="prefill tokens", ylabel="TFLOP")
    ax[0].legend()
    for key, label in (("vision_bytes", "vision"), ("prefill_bytes", "prefill"), ("total_bytes", "total")):
        ax[1].plot(cols["prefill_tokens"], cols[key] / 1e9, "o", label=label)
    ax[1].set(xlabel="prefill tokens", ylabel="GB")
    ax[1].legend()


def _plot_decode(ax, cols: Columns) -> None:
    import matplotlib

    step_counts = np.unique(cols["steps"])
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 1, len(step_counts)))
    for n, color in zip(step_counts, colors):
        sel = cols["steps"] == n
        ax[0].plot(cols["context"][sel], cols["decode_bytes"][sel] / n / 1e9, color=color, label=f"{n} steps")
    ax[0].set(xlabel="context (tokens)", ylabel="GB per decode step")
    ax[0].legend(fontsize="small")
    ax[1].plot(cols["context"], cols["kv_cache_bytes"] / 1e9, ".")
    ax[1].set(xlabel="context (tokens)", ylabel="KV cache GB at the end")


PLOTTERS: dict[str, Callable] = {
    "vision_crops": _plot_vision_crops, "vision_prefill": _plot_vision_prefill, "decode": _plot_decode,
}


def write_sweeps(results: dict[str, Columns], out_dir: Path, plots: bool = True) -> tuple[list[Path], list[str]]:
    """``<name>.csv`` for every sweep, ``<name>.png`` when matplotlib is installed.

    Returns the files written and notes (a skipped plot says why; the CSV is always written).
    """
    out_dir = Path(out_dir)
    paths = [atomic_write_text(out_dir / f"{name}.csv", to_csv(cols)) for name, cols in results.items()]
    notes: list[str] = []
    if not plots:
        return paths, ["plots disabled (sweep.plots=false)"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note = "plots skipped: matplotlib is not installed (pip install 'pytest-dsocr[plots]'); CSVs written"
        log.info(note)
        return paths, [note]
    for name, cols in results.items():
        fig, ax = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        PLOTTERS[name](ax, cols)
        fig.suptitle(f"DeepSeek-OCR analytic sweep: {name}")
        path = out_dir / f"{name}.png"
        atomic_save_figure(path, fig, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths, notes


@dataclass(frozen=True)
class SweepStageResult:
    results: dict[str, Columns]
    paths: tuple[Path, ...]
    notes: tuple[str, ...]
    section: dict  # the metrics.json "sweep" section


def _positive_ints(key: str, values) -> list[int]:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise DsocrError(f"{key}={values}: expected a non-empty list of integers >= 1")
    return values


def run_sweep_stage(cfg, out_dir: Path) -> SweepStageResult:
    """Everything the sweep stage does: the three default sweeps of the configured model
    (family and size), evaluated on one cost model, written as CSV (and PNG) under ``out_dir``."""
    analytic = analytic_for(cfg.model)
    views = analytic.views(cfg.model)
    model = analytic.cost_model(cfg.model.size)
    sweep = cfg.sweep
    max_crops = sweep.max_crops if sweep.max_crops is not None else cfg.model.max_crops
    if max_crops < MIN_SWEEP_CROPS:
        raise DsocrError(f"sweep.max_crops={max_crops}: must be >= {MIN_SWEEP_CROPS} (the smallest crop grid)")
    contexts = None if sweep.context_lengths is None else _positive_ints(
        "sweep.context_lengths", sweep.context_lengths)
    steps = _positive_ints("sweep.decode_steps", sweep.decode_steps)
    choice = select_hardware(cfg.hardware.name)
    dtype = resolve_dtype_name(str(cfg.model.dtype), choice.hardware is not None)
    settings = SweepSettings(
        base_size=views.base_size, image_size=views.tile_size, text_tokens=int(sweep.text_tokens),
        batch=int(sweep.batch_size), dtype_bytes=dtype_bytes(dtype), attention=str(sweep.attention),
        hardware=choice.hardware, dtype=dtype,
    )
    points = SweepPoints.build(model.spec, analytic.candidate_grids(int(max_crops)), contexts, steps)
    started = time.perf_counter()
    results = run_sweeps(analytic, model, points, settings)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    paths, notes = write_sweeps(results, out_dir, plots=bool(sweep.plots))
    if choice.hardware is None:
        notes.append(f"floor-time columns omitted: {choice.reason}")
    section = {
        "model_family": cfg.model.family, "model_size": cfg.model.size, "dtype": dtype,
        "attention": settings.attention,
        "hardware": choice.hardware.name if choice.hardware else None, "hardware_choice": choice.reason,
        "points": {name: int(len(np.atleast_1d(next(iter(cols.values()))))) for name, cols in results.items()},
        "evaluate_ms": elapsed_ms,
        "files": [str(p) for p in paths],
        "notes": notes,
    }
    return SweepStageResult(results, tuple(paths), tuple(notes), section)
