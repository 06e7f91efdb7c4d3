"""The static_analysis stage: analytic costs of the configured model, FLOP-count cross-check,
floor times on the chosen GPU and MFU/MBU of the session's measured runs.

Writes ``static_compute.json`` and ``static_compute.md`` into the stage folder and returns the
sections the stage adds to metrics.json and the stakeholder summary. The workload is the measured
one where runs exist (most common crop grid, their prompt length and generated tokens), else the
config's, else a reference page's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from pytest_dsocr.analytic import efficiency as eff
from pytest_dsocr.analytic.crosscheck import module_params
from pytest_dsocr.analytic.family import AnalyticFamily, analytic_for, workload_for_grid
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import (
    DEFAULT_TEXT_TOKENS,
    Workload,
    dtype_bytes,
    resolve_dtype_name,
)
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.hardware import DTYPE_KEYS, HardwareChoice, select_hardware
from pytest_dsocr.models import build_model
from pytest_dsocr.report.metrics import read_metrics
from pytest_dsocr.atomic import atomic_write_text, json_safe

log = logging.getLogger(__name__)

STAGE_DIR = "static_analysis"
JSON_FILE = "static_compute.json"
MARKDOWN_FILE = "static_compute.md"
# The page whose crop grid is assumed when neither the config nor a measured run gives one:
# A4 portrait scanned at 150 dpi (its 2 x 3 grid is the commonest for document pages).
REFERENCE_PAGE = (1240, 1754)
# The FLOP count runs the module code on the meta device: no memory, no time. MoE experts use
# transformers' batched_mm there (the eager loop needs data: nonzero); it does the same matmuls.
COUNT_DEVICE = "meta"
COUNT_EXPERTS = "batched_mm"
CROSSCHECK_TOLERANCE = 0.01


@dataclass(frozen=True)
class StaticAnalysisResult:
    report: dict  # what static_compute.json holds
    markdown: str  # what static_compute.md holds
    efficiency: dict  # the metrics.json "efficiency" section (the summary renders it)
    summary_markdown: str  # the "Static Analysis" block of the stakeholder summary
    paths: tuple[Path, ...]


def load_measured(cfg: Any, records: Iterable[Any]) -> tuple[list[eff.Measured], Optional[dict]]:
    """Measured runs: from ``static_analysis.metrics`` when set, else this session's
    direct_inference records. Also returns the metrics file's ``env`` (None for the session)."""
    path = cfg.static_analysis.metrics
    if path:
        metrics = read_metrics(path, option="static_analysis.metrics")
        return [eff.Measured.from_run(run) for run in metrics.primary_samples()], dict(metrics.env)
    return [eff.Measured.from_run(r) for r in records if r.stage == eff.MEASURED_RUN_STAGE], None


def choose_hardware(cfg: Any, file_env: Optional[dict]) -> HardwareChoice:
    """``hardware.name`` when set; else the GPU a given metrics.json ran on; else this machine's."""
    name = cfg.hardware.name
    if name or file_env is None:
        return select_hardware(name)
    on_cuda = str(file_env.get("device", "")).startswith("cuda")
    return select_hardware(None, file_env.get("device_name") if on_cuda else None)


def static_workload(cfg: Any, runs: Sequence[eff.Measured], dtype: str, analytic: AnalyticFamily,
                    spec: Any) -> tuple[Workload, tuple[int, int], dict]:
    """The workload the report describes, its crop grid, and where each number came from."""
    views = analytic.views(cfg.model)
    return workload_from_config(
        cfg, runs, dtype, spec.text.max_position_embeddings,
        reference_grid=lambda page: analytic.crop_grid_for(page, views),
        for_grid=lambda grid, **sizes: workload_for_grid(analytic, spec, views, grid, **sizes),
    )


def workload_from_config(cfg: Any, runs: Sequence[eff.Measured], dtype: str, max_positions: int, *,
                         reference_grid: Callable[[tuple[int, int]], tuple[int, int]],
                         for_grid: Callable[..., Workload]) -> tuple[Workload, tuple[int, int], dict]:
    """The workload, its crop grid and each number's source, by the rules of every family: the
    config, else the measured runs, else :data:`REFERENCE_PAGE` / the default prompt /
    ``infer.max_new_tokens`` within the decoder's ``max_positions``.

    ``reference_grid(page_wh)`` is the family's crop grid of a page; ``for_grid(grid, **sizes)``
    its workload of one page cut into ``grid``.
    """
    sa = cfg.static_analysis
    sources = {}
    if sa.crop_grid is not None:
        grid, sources["crop_grid"] = tuple(int(g) for g in sa.crop_grid), "config"
        if len(grid) != 2 or min(grid) < 1:
            raise DsocrError(f"static_analysis.crop_grid={list(grid)} must be [w, h] with w, h >= 1")
    elif runs:
        grid, sources["crop_grid"] = Counter(m.crop_grid for m in runs).most_common(1)[0][0], "measured (most common)"
    else:
        grid = reference_grid(REFERENCE_PAGE)
        sources["crop_grid"] = f"reference page {REFERENCE_PAGE[0]}x{REFERENCE_PAGE[1]}"
    if sa.text_tokens is not None:
        text, sources["text_tokens"] = sa.text_tokens, "config"
    elif runs:
        text = round(sum(m.prefill_len - m.image_tokens for m in runs) / len(runs))
        sources["text_tokens"] = "measured (mean)"
    else:
        text, sources["text_tokens"] = DEFAULT_TEXT_TOKENS, "default"
    wl = for_grid(grid, text_tokens=int(text), batch=int(sa.batch_size), dtype_bytes=dtype_bytes(dtype),
                  attention=str(sa.attention))
    if sa.decode_steps is not None:
        steps, sources["decode_steps"] = sa.decode_steps, "config"
    elif runs:
        steps = round(sum(max(m.tokens - 1, 0) for m in runs) / len(runs))
        sources["decode_steps"] = "measured (mean)"
    else:  # up to max_new_tokens, within the decoder's positions ("inf": all of them)
        room = max_positions - int(wl.prefill_tokens)
        max_new = cfg.infer.max_new_tokens
        steps = min(int(max_new) - 1, room) if isinstance(max_new, int) else room
        sources["decode_steps"] = f"infer.max_new_tokens={max_new}"
    return dataclasses.replace(wl, decode_steps=max(int(steps), 0)), tuple(grid), sources


def _flop_count(cfg: Any, model: DeepseekOCRCostModel, wl: Workload, crosscheck: Callable) -> dict:
    module = build_model(cfg.model.family, cfg.model.size, device=COUNT_DEVICE,
                         experts_implementation=COUNT_EXPERTS)
    rows = crosscheck(module, model, wl)
    params = module_params(module)
    return {
        "device": COUNT_DEVICE,
        "module_params": params,
        "analytic_params": model.params,
        "stages": [row.to_json() for row in rows],
        "within_tolerance": params == model.params
        and all(abs(row.ratio - 1) <= CROSSCHECK_TOLERANCE for row in rows),
    }


def _stage_rows(model: DeepseekOCRCostModel, wl: Workload, choice: HardwareChoice, dtype: str) -> dict:
    rows = {}
    for name, stage in model.stages(wl).items():
        row = stage.to_json()
        hw = choice.hardware
        if hw is not None:
            row["floor_ms"] = float(eff.floor_seconds(row["flops"], row["bytes"], hw, dtype)) / eff.MS
            row["bound"] = eff.bound(row["flops"], row["bytes"], hw, dtype)
        rows[name] = row
    return rows


def _layers_json(model: DeepseekOCRCostModel, wl: Workload) -> dict:
    return {
        part: [{"layer": layer.name, "count": layer.count, "params_each": layer.params,
                **{k: int(v) for k, v in layer.cost.as_dict().items()}}
               for layer in layers]
        for part, layers in model.layer_breakdown(wl).items()
    }


def _fmt(value: float, unit: float, digits: int = 3) -> str:
    return f"{value / unit:.{digits}f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    wl, hw = report["workload"], report["hardware"]
    lines = [
        f"# Static analysis: {report['model']['family']} {report['model']['size']}",
        "",
        f"Workload: global view {wl['base_size']} px, crop grid {wl['crop_grid'][0]}x{wl['crop_grid'][1]} "
        f"of {wl['image_size']} px, {wl['image_tokens']} image + {wl['text_tokens']} text tokens "
        f"(prefill {wl['prefill_tokens']}), {wl['decode_steps']} decode steps, batch {wl['batch']}, "
        f"{report['dtype']} ({wl['dtype_bytes']} B), {wl['attention']} attention.",
        "",
        (f"Hardware: {hw['display_name']} ({report['hardware_choice']}): peak "
         f"{hw['peak_tflops'][DTYPE_KEYS[report['dtype']]]:.1f} TFLOP/s, {hw['memory_bandwidth_gb_s']:.0f} GB/s."
         if hw else f"Hardware: none ({report['hardware_choice']}); floor times omitted."),
        "",
        "| stage | params (M) | GFLOP | matmul GFLOP | GB | weights GB | KV GB | FLOP/B | bound | floor ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, s in report["stages"].items():
        floor = f"{s['floor_ms']:.3f}" if "floor_ms" in s else "n/a"
        lines.append(
            f"| {name} | {_fmt(s['params'], 1e6, 1)} | {_fmt(s['flops'], 1e9, 2)} | "
            f"{_fmt(s['matmul_flops'], 1e9, 2)} | "
            f"{_fmt(s['bytes'], 1e9)} | {_fmt(s['weight_bytes'], 1e9)} | {_fmt(s['kv_bytes'], 1e9)} | "
            f"{s['arithmetic_intensity']:.1f} | {s.get('bound', 'n/a')} | {floor} |"
        )
    lines += ["", "decode_step is the first decode step (context = prefill + 1); decode sums all steps. "
              "prefill is the decoder over the prompt plus lm_head on the last position; vision is "
              "reported apart. Other FLOPs (norms, softmax, activations) are estimates kept out of "
              "the matmul column, which is what FlopCounterMode counts."]
    counter = report["flop_counter"]
    lines += ["", "## FlopCounterMode cross-check", ""]
    if "skipped" in counter:
        lines.append(f"Skipped: {counter['skipped']}.")
    else:
        lines += [f"torch's FlopCounterMode on the module ({counter['device']} device); parameters: "
                  f"module {counter['module_params']:,}, analytic {counter['analytic_params']:,}.", "",
                  "| stage | analytic matmul FLOPs | FlopCounterMode | ratio |", "|---|---:|---:|---:|"]
        for row in counter["stages"]:
            lines.append(f"| {row['stage']} | {row['analytic_matmul_flops']:,} | "
                         f"{row['flop_counter_flops']:,} | {row['ratio']:.6f} |")
    return "\n".join(lines) + "\n"


def summary_markdown(report: Mapping[str, Any]) -> str:
    lines = ["| stage | GFLOP | GB | FLOP/B | bound | floor ms |", "|---|---:|---:|---:|---|---:|"]
    for name in ("vision", "prefill", "decode_step", "decode"):
        s = report["stages"][name]
        floor = f"{s['floor_ms']:.3f}" if "floor_ms" in s else "n/a"
        lines.append(f"| {name} | {_fmt(s['flops'], 1e9, 2)} | {_fmt(s['bytes'], 1e9)} | "
                     f"{s['arithmetic_intensity']:.1f} | {s.get('bound', 'n/a')} | {floor} |")
    hw = report["hardware"]
    lines.append("")
    lines.append(f"Floor times on {hw['display_name']}." if hw else
                 f"Floor times omitted: {report['hardware_choice']}.")
    return "\n".join(lines)


def run_static_analysis(cfg: Any, out_dir: Path, records: Iterable[Any] = ()) -> StaticAnalysisResult:
    """Everything the static_analysis stage does, given the resolved config and the session's
    runs, on the cost model of ``model.family`` (its registry entry names it)."""
    analytic = analytic_for(cfg.model)
    model = analytic.cost_model(cfg.model.size)
    runs, file_env = load_measured(cfg, records)
    choice = choose_hardware(cfg, file_env)
    if runs:
        on_cuda = any(m.device.startswith("cuda") for m in runs)
    else:
        on_cuda = choice.hardware is not None
    dtype = resolve_dtype_name(str(cfg.model.dtype), on_cuda)
    wl, grid, sources = static_workload(cfg, runs, dtype, analytic, model.spec)
    report = {
        "model": {"family": cfg.model.family, "size": cfg.model.size, "params": model.params},
        "workload": {
            "base_size": wl.base_size, "image_size": wl.image_size,
            "crop_grid": list(grid),
            "crops": int(wl.crops), "image_tokens": int(wl.image_tokens), "text_tokens": int(wl.text_tokens),
            "prefill_tokens": int(wl.prefill_tokens), "decode_steps": int(wl.decode_steps),
            "batch": int(wl.batch), "dtype_bytes": wl.dtype_bytes, "attention": wl.attention,
            "sources": sources,
        },
        "dtype": dtype,
        "hardware": choice.hardware.to_json() if choice.hardware else None,
        "hardware_choice": choice.reason,
        "stages": _stage_rows(model, wl, choice, dtype),
        "kv_cache_bytes": int(model.decoder.kv_cache_bytes(wl.batch, wl.prefill_tokens + wl.decode_steps,
                                                           wl.dtype_bytes)),
        "layers": _layers_json(model, wl),
    }
    report["flop_counter"] = (_flop_count(cfg, model, wl, analytic.crosscheck) if cfg.static_analysis.flop_counter
                              else {"skipped": "static_analysis.flop_counter=false"})
    markdown = render_markdown(report)
    out_dir = Path(out_dir)
    paths = (
        atomic_write_text(out_dir / JSON_FILE, json.dumps(json_safe(report), indent=2) + "\n"),
        atomic_write_text(out_dir / MARKDOWN_FILE, markdown),
    )
    section = eff.efficiency(model, runs, choice, dtype, wl.base_size, wl.image_size, wl.dtype_bytes,
                             wl.attention)
    return StaticAnalysisResult(report, markdown, section, summary_markdown(report), paths)


def metrics_section(result: StaticAnalysisResult) -> dict:
    """The compact ``static_analysis`` section of metrics.json: per stage FLOPs, bytes, floor."""
    report = result.report
    return {
        "workload": report["workload"],
        "dtype": report["dtype"],
        "hardware": report["hardware"]["name"] if report["hardware"] else None,
        "hardware_choice": report["hardware_choice"],
        "stages": {name: {k: v for k, v in s.items() if k in (
            "flops", "matmul_flops", "bytes", "params", "arithmetic_intensity", "floor_ms", "bound")}
            for name, s in report["stages"].items()},
        "flop_counter": report["flop_counter"],
        "files": [str(p) for p in result.paths],
    }

