"""metrics.json: every number of a run, built from ImageRun records by one function.

Schema (``schema_version`` 2; everything the skeleton wrote is still there, the rest is
additive). Every statistic below is a :class:`~pytest_dsocr.report.stats.Stats` json:
``{count, mean, std, min, p50, p90, p95, p99, max, ci_low, ci_high, ci_level, unit, values}``.

``aggregates`` (records of one benchmark stage, named by ``aggregates_stage``:
direct_inference when it ran, else the first stage in BENCHMARK_STAGES order that did, so that
profiler overhead never leaks into the headline numbers):

- ``prefill_ms``, ``decode_ms``: per-run stage times.
- ``tokens``: generated tokens per run (EOS included when emitted).
- ``tokens_per_s``: decode rate per run, ``(tokens - 1) / decode time`` (decode covers
  tokens 2..n, so this is ``1000 / tpot_ms``); runs with a single token have none.
- ``stage_ms.{prefill, vision, <sub-stages>, decode}``: measured stages only. Vision and its
  sub-stages (``sam, clip, projector`` for v1, whatever ``ImageRun.substage_ms`` holds for
  other families) nest inside prefill and are never summed with it; ``stage_nesting`` says
  which stage contains which.
- ``preprocess_ms``; ``ttft_ms`` (time to first token: preprocess + prefill, from the
  record); ``tpot_ms`` (time per output token after the first: decode / (tokens - 1));
  ``e2e_ms`` (preprocess + prefill + decode).
- ``sequence_lengths.{input, output, image}``: prompt length (image tokens included),
  generated tokens, image tokens, per run.
- ``throughput``: sums over runs divided by the summed end-to-end time of the runs of each
  worker; the rates of concurrent workers add up. ``pages_per_s`` (vLLM's
  request_throughput), ``output_tokens_per_s`` (generated text tokens, vLLM's
  output_throughput), ``image_tokens_per_s`` (vision tokens fed to the decoder),
  ``prompt_tokens_per_s`` (text prompt tokens: prompt length minus image tokens),
  ``input_tokens_per_s`` (image + text prompt tokens), ``total_tokens_per_s`` (input +
  output, vLLM's total_token_throughput), and the totals they are made of.

Top level besides: ``counts`` (warmup_rounds, rounds, samples, measured_runs, failed),
``error_rate`` (failed sample attempts / all attempts, an attempt being one sample of one
epoch in one benchmark stage), ``memory`` (peak memory as measured by the caller:
``pytest_dsocr.env.peak_memory``), ``samples`` (every record's ``ImageRun.to_json()``), ``failures``,
``env``, ``config``, ``complete`` and ``reason`` (a run cut short says why), ``by_stage``
(the aggregates of each benchmark stage when several contributed), ``by_worker`` (per
worker/GPU rows and totals when several workers contributed), ``generated_at`` and any
extra ``sections`` (e.g. ``efficiency``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.atomic import atomic_write_json
from pytest_dsocr.report.stats import Stats
from pytest_dsocr.stages import (
    BENCHMARK_STAGES,
    DECODE,
    LATENCY_METRICS,
    PREFILL,
    PRIMARY_STAGE,
    VISION,
    benchmark_stage_rank,
)

SCHEMA_VERSION = 2
METRICS_FILE = "metrics.json"
MS_PER_S = 1000.0

CORE_KEYS = frozenset(
    {
        "schema_version", "generated_at", "complete", "reason", "aggregates_stage",
        "aggregates", "stage_nesting", "counts", "error_rate", "memory", "env", "config",
        "samples", "failures", "by_stage", "by_worker",
    }
)


def sample_metrics(sample: Mapping[str, Any]) -> dict[str, float]:
    """The per-sample quantities (ms) of one record json, keyed by stage or metric name.

    Keys: prefill, vision, each sub-stage, decode, ttft, e2e and tpot (absent for a single
    generated token). The one mapping from records to named values: metrics.json
    aggregates and the regression gate both read samples through it.
    """
    values = {PREFILL: float(sample["prefill_ms"]), VISION: float(sample["vision_ms"])}
    for name, ms in (sample.get("substage_ms") or {}).items():
        values[name] = float(ms)
    values[DECODE] = float(sample["decode_ms"])
    values["ttft"] = float(sample["ttft_ms"])
    tokens = int(sample["tokens"])
    if tokens > 1:
        values["tpot"] = float(sample["decode_ms"]) / (tokens - 1)
    values["e2e"] = float(sample["preprocess_ms"]) + values[PREFILL] + values[DECODE]
    return values


def lookup(mapping: Any, path: Sequence[str]) -> Any:
    """``mapping[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def primary_stage(stages: Iterable[str]) -> str | None:
    """The benchmark stage whose records make the top-level aggregates (see module doc)."""
    present = list(dict.fromkeys(stages))
    for stage in BENCHMARK_STAGES:
        if stage in present:
            return stage
    return present[0] if present else None


def primary_samples(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-sample records of a metrics dict that its top-level aggregates are made of."""
    samples = list(metrics.get("samples") or [])
    stage = metrics.get("aggregates_stage") or primary_stage(s.get("stage", "") for s in samples)
    return [s for s in samples if s.get("stage", stage) == stage]


def build_metrics(
    records: list[ImageRun],
    failures: list[SampleFailure],
    *,
    env: dict,
    config: dict,
    stage_names: dict[str, list[str]] | None = None,
    sections: dict[str, dict] | None = None,
    complete: bool,
    reason: str | None = None,
    counts: dict | None = None,
    memory: dict | None = None,
) -> dict:
    """The metrics.json dict of a run (complete or not) from its records and failures.

    ``stage_names`` orders sub-stages: ``{"vision": ["sam", "clip", "projector"]}`` (a
    family's declared names); names never measured are left out, measured names it does not
    list follow in the order records first show them. ``counts`` overrides the counts
    derived here (the plugin knows warmup rounds and rounds). ``sections`` adds top-level
    sections (e.g. ``efficiency``); they may not replace a core key.
    """
    samples = [record.to_json() for record in records]
    stages = list(dict.fromkeys(s["stage"] for s in samples))
    main_stage = primary_stage(stages)
    main_samples = [s for s in samples if s["stage"] == main_stage]
    substages = _substage_order(samples, (stage_names or {}).get(VISION, []))

    aggregates = aggregate(main_samples, substages)
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": bool(complete),
        "reason": reason,
        "aggregates_stage": main_stage,
        "aggregates": aggregates,
        "stage_nesting": _nesting(aggregates["stage_ms"]),
        "counts": _counts(samples, failures, config, counts),
        "error_rate": _error_rate(samples, failures),
        "memory": memory,
        "env": env,
        "config": config,
        "samples": samples,
        "failures": [failure.to_json() for failure in failures],
    }
    if len(stages) > 1:
        metrics["by_stage"] = {
            stage: aggregate([s for s in samples if s["stage"] == stage], substages)
            for stage in sorted(stages, key=benchmark_stage_rank)
        }
    workers = list(dict.fromkeys(s["worker"] for s in main_samples))
    if len(workers) > 1:
        metrics["by_worker"] = _by_worker(main_samples, workers)
    for key, section in (sections or {}).items():
        if key in CORE_KEYS:
            raise ValueError(f"metrics section {key!r} would replace a core metrics.json key")
        metrics[key] = section
    return metrics


def write_metrics(run_dir: str | os.PathLike[str], metrics: dict) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically (temp file + os.replace); returns its path."""
    return atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


def aggregate(samples: Sequence[Mapping[str, Any]], substages: Sequence[str] = ()) -> dict[str, Any]:
    """The aggregates of a list of record jsons (one benchmark stage; see module doc)."""
    per_sample = [sample_metrics(s) for s in samples]

    def column(name: str) -> list[float | None]:
        return [values.get(name) for values in per_sample]

    def field(name: str) -> list[Any]:
        return [s[name] for s in samples]

    stage_ms: dict[str, Any] = {}
    for name in (PREFILL, VISION, *substages, DECODE):
        stats = Stats.from_values(column(name))
        if stats.count:
            stage_ms[name] = stats.to_json()
    tokens = Stats.from_values(field("tokens"), "tokens").to_json()
    return {
        "prefill_ms": Stats.from_values(column(PREFILL)).to_json(),
        "decode_ms": Stats.from_values(column(DECODE)).to_json(),
        "tokens": tokens,
        "tokens_per_s": Stats.from_values(
            [_decode_rate(s) for s in samples], "tokens/s"
        ).to_json(),
        "stage_ms": stage_ms,
        "preprocess_ms": Stats.from_values(field("preprocess_ms")).to_json(),
        "ttft_ms": Stats.from_values(column("ttft")).to_json(),
        "tpot_ms": Stats.from_values(column("tpot")).to_json(),
        "e2e_ms": Stats.from_values(column("e2e")).to_json(),
        "sequence_lengths": {
            "input": Stats.from_values(field("prefill_len"), "tokens").to_json(),
            "output": tokens,
            "image": Stats.from_values(field("image_tokens"), "tokens").to_json(),
        },
        "throughput": _throughput(samples),
    }


def _decode_rate(sample: Mapping[str, Any]) -> float | None:
    tokens, decode_ms = int(sample["tokens"]), float(sample["decode_ms"])
    if tokens < 2 or decode_ms <= 0:
        return None
    return (tokens - 1) / (decode_ms / MS_PER_S)


def _substage_order(samples: Sequence[Mapping[str, Any]], declared: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(name for s in samples for name in (s.get("substage_ms") or {})))
    return [name for name in declared if name in seen] + [n for n in seen if n not in declared]


def _nesting(stage_ms: Mapping[str, Any]) -> dict[str, list[str]]:
    """Which measured stage contains which: prefill > vision > sub-stages."""
    nesting: dict[str, list[str]] = {}
    substages = [name for name in stage_ms if name not in (PREFILL, VISION, DECODE)]
    if VISION in stage_ms:
        nesting[PREFILL] = [VISION]
        if substages:
            nesting[VISION] = substages
    elif substages:
        nesting[PREFILL] = substages
    return nesting


def _throughput(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    totals = {"pages": 0, "output_tokens": 0, "image_tokens": 0, "prompt_tokens": 0}
    rates = dict.fromkeys(totals, 0.0)
    busy_s = 0.0
    by_worker: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        by_worker.setdefault(sample["worker"], []).append(sample)
    for worker_samples in by_worker.values():
        counted = _token_totals(worker_samples)
        seconds = sum(sample_metrics(s)["e2e"] for s in worker_samples) / MS_PER_S
        busy_s += seconds
        for key, value in counted.items():
            totals[key] += value
            if seconds > 0:
                rates[key] += value / seconds
    measured = busy_s > 0
    result: dict[str, Any] = {
        "unit": "per second of measured end-to-end time",
        "pages_per_s": rates["pages"] if measured else None,
        "output_tokens_per_s": rates["output_tokens"] if measured else None,
        "image_tokens_per_s": rates["image_tokens"] if measured else None,
        "prompt_tokens_per_s": rates["prompt_tokens"] if measured else None,
        "input_tokens_per_s": rates["image_tokens"] + rates["prompt_tokens"] if measured else None,
        "total_tokens_per_s": (
            rates["image_tokens"] + rates["prompt_tokens"] + rates["output_tokens"] if measured else None
        ),
        "workers": len(by_worker),
        "busy_s": busy_s,
    }
    result.update(totals)
    result["input_tokens"] = totals["image_tokens"] + totals["prompt_tokens"]
    return result


def _token_totals(samples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        "pages": len(samples),
        "output_tokens": sum(int(s["tokens"]) for s in samples),
        "image_tokens": sum(int(s["image_tokens"]) for s in samples),
        "prompt_tokens": sum(int(s["prefill_len"]) - int(s["image_tokens"]) for s in samples),
    }


def _by_worker(samples: Sequence[Mapping[str, Any]], workers: Sequence[str]) -> dict[str, Any]:
    rows = []
    for worker in workers:
        mine = [s for s in samples if s["worker"] == worker]
        throughput = _throughput(mine)
        rows.append(
            {
                "worker": worker,
                "device": mine[0]["device"],
                "measured_runs": len(mine),
                "pages_per_s": throughput["pages_per_s"],
                "output_tokens_per_s": throughput["output_tokens_per_s"],
                "e2e_ms": Stats.from_values(sample_metrics(s)["e2e"] for s in mine).to_json(),
            }
        )
    total = _throughput(samples)
    return {
        "rows": rows,
        "totals": {
            "workers": len(rows),
            "measured_runs": len(samples),
            "pages_per_s": total["pages_per_s"],
            "output_tokens_per_s": total["output_tokens_per_s"],
        },
    }


def _counts(
    samples: Sequence[Mapping[str, Any]],
    failures: Sequence[SampleFailure],
    config: Mapping[str, Any],
    given: Mapping[str, Any] | None,
) -> dict[str, Any]:
    infer = config.get("infer") if isinstance(config.get("infer"), Mapping) else {}
    distinct = {(s["epoch"], s["sample_id"]) for s in samples}
    distinct |= {(f.epoch, f.sample_id) for f in failures}
    counts: dict[str, Any] = {
        "warmup_rounds": infer.get("warmup_rounds"),
        "rounds": infer.get("rounds"),
        "samples": len(distinct),
        "measured_runs": len(samples),
        "failed": len(failures),
    }
    counts.update(given or {})
    return counts


def _error_rate(samples: Sequence[Mapping[str, Any]], failures: Sequence[SampleFailure]) -> float | None:
    failed = {(f.stage, f.epoch, f.sample_id) for f in failures}
    attempts = failed | {(s["stage"], s["epoch"], s["sample_id"]) for s in samples}
    return len(failed) / len(attempts) if attempts else None

