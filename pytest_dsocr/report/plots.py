"""PNG plots of a run (optional: needs matplotlib, the ``plots`` extra).

Drawn with matplotlib's object API on the Agg canvas, so no GUI backend is touched and no
global pyplot state changes inside the pytest process. Without matplotlib the result
carries a note instead of files, and the markdown shows the note.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_dsocr.atomic import atomic_write_bytes
from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.metrics import sample_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.report.stats import Stats
from pytest_dsocr.stages import DECODE, PREFILL

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
STAGE_TIMES_PNG = "stage_times.png"
LATENCY_PNG = "latency_distribution.png"
MATPLOTLIB_MISSING_NOTE = "Plots skipped: matplotlib is not installed (pip install 'pytest-dsocr[plots]')."
DPI = 110
FIGURE_WIDTH_IN = 8.0
ROW_HEIGHT_IN = 0.45
MIN_HEIGHT_IN = 2.5
JITTER_WIDTH = 0.08  # horizontal spread of the per-sample dots around each box
MAX_DOTS = 2000  # per box at most this many runs are drawn as dots (every n-th); the box uses all


def write_plots(metrics: RunMetrics, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-stage time bars (mean, std error bars) and the per-sample latency distribution, as
    PNGs under ``<run_dir>/plots/``.

    Returns the ``plots`` entry of metrics.json that the markdown renders: ``{"files": {name:
    path relative to the run dir}, "note": why some or all plots are missing, or None}``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info(MATPLOTLIB_MISSING_NOTE)
        return {"files": {}, "note": MATPLOTLIB_MISSING_NOTE}

    stage_ms = metrics.aggregates.stage_ms
    order = _stage_levels(stage_ms, metrics.stage_nesting)
    samples = _latency_columns(metrics.primary_samples(), [name for name, _, _ in order] + ["e2e"])
    if not stage_ms or not any(samples.values()):
        return {"files": {}, "note": "Plots skipped: no run was measured."}
    files = {}
    for name, filename, draw in (
        ("stage_times", STAGE_TIMES_PNG, _draw_stage_times),
        ("latency_distribution", LATENCY_PNG, _draw_latency),
    ):
        figure = Figure(figsize=(FIGURE_WIDTH_IN, max(MIN_HEIGHT_IN, ROW_HEIGHT_IN * (len(order) + 2))))
        FigureCanvasAgg(figure)
        draw(figure, order, stage_ms, samples)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        atomic_write_bytes(Path(run_dir) / PLOTS_DIR / filename, buffer.getvalue())
        files[name] = f"{PLOTS_DIR}/{filename}"
    return {"files": files, "note": None}


def _stage_levels(stage_ms: Mapping[str, Stats], nesting: Mapping[str, list[str]]) -> list[tuple[str, int, str]]:
    """(stage, nesting depth, label) in reading order: prefill, vision, its parts, decode.

    A nested stage is labelled "parent › stage" so the bars never read as parts to add up.
    """
    levels = [(PREFILL, 0, PREFILL)]
    for child in nesting.get(PREFILL, []):
        levels.append((child, 1, f"{PREFILL} › {child}"))
        levels += [(grandchild, 2, f"{child} › {grandchild}") for grandchild in nesting.get(child, [])]
    levels.append((DECODE, 0, DECODE))
    known = {name for name, _, _ in levels}
    levels += [(name, 0, name) for name in stage_ms if name not in known]
    return [level for level in levels if level[0] in stage_ms]


def _draw_stage_times(figure: Any, order: list[tuple[str, int, str]], stage_ms: Mapping[str, Stats],
                      samples: Mapping[str, list[float]]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    labels = [label for _, _, label in order]
    means = [stage_ms[name].mean for name, _, _ in order]
    stds = [stage_ms[name].std for name, _, _ in order]
    positions = list(range(len(order)))
    colors = [f"C{depth}" for _, depth, _ in order]
    axes.barh(positions, means, xerr=stds, color=colors, capsize=4)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set_xlabel("time per run (ms): mean, error bars = 1 std")
    axes.set_title(f"Per-stage timings ({stage_ms[order[0][0]].count} runs; 'a › b': b is part of a)")
    for position, mean in zip(positions, means, strict=True):
        axes.annotate(f"{mean:.1f}", (mean, position), xytext=(4, 4), textcoords="offset points", fontsize=8)


def _horizontal() -> dict[str, Any]:
    """boxplot's keyword for horizontal boxes: ``orientation`` from matplotlib 3.10 on (``vert``
    is deprecated there), ``vert`` before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _latency_columns(runs: Iterable[ImageRun], names: Sequence[str]) -> dict[str, list[float]]:
    """name -> each run's time, read in one pass over ``runs``."""
    columns: dict[str, list[float]] = {name: [] for name in names}
    for run in runs:
        values = sample_metrics(run)
        for name, column in columns.items():
            if name in values:
                column.append(values[name])
    return columns


def _draw_latency(figure: Any, order: list[tuple[str, int, str]], stage_ms: Mapping[str, Stats],
                  samples: Mapping[str, list[float]]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    names = list(samples)
    columns = list(samples.values())
    positions = list(range(1, len(names) + 1))
    axes.boxplot(columns, positions=positions, widths=0.5, showfliers=False, **_horizontal())
    for position, column in zip(positions, columns, strict=True):
        column = column[::max(1, -(-len(column) // MAX_DOTS))]
        count = len(column)
        offsets = [JITTER_WIDTH * ((i / (count - 1)) * 2 - 1) if count > 1 else 0.0 for i in range(count)]
        axes.scatter(column, [position + o for o in offsets], s=10, alpha=0.6, color="C1")
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.set_xlabel("time per run (ms), one dot per run")
    axes.set_title("Per-sample latency distribution")
    axes.grid(axis="x", alpha=0.3)
