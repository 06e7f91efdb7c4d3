"""metrics.json: every number of a run, built from ImageRun records by one function.

Schema (``schema_version`` 3; everything the skeleton wrote is still there, the rest is
additive). The typed model is :class:`pytest_dsocr.report.model.RunMetrics`; this module
builds it from records and writes/reads it. Every statistic below is a :class:`~pytest_dsocr.report.stats.Stats` json:
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
  worker (a batched page counts its share of the batch's wall time); the rates of concurrent
  workers add up. ``pages_per_s`` (vLLM's
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
extra ``sections`` (e.g. ``efficiency``); ``identity`` (what must match for two runs to be
compared: see the regression gate; its ``weights`` say which weights ran) and ``records`` (the
append-only records file the run was built from: ``python -m pytest_dsocr report RUN_DIR``
rebuilds metrics.json from it).

``accuracy`` (only when the dataset has ground truth for a measured page; see
:mod:`pytest_dsocr.report.accuracy`): over the pages of the aggregated stage, each with its
worst read, ``pages``, ``mean_edit_distance`` (normalized, OmniDocBench-style: 0 a perfect
read), ``exact_pages``, ``predicted_boxes``, ``truth_boxes``, ``matched_boxes`` and
``mean_iou`` of the matched boxes. Each sample's own values are its ``accuracy``.

While a run goes on, metrics.json is an interim file (``complete`` false, ``reason`` "still
running") rewritten at bounded cost: its aggregates carry exact count, mean, std, min and max
but no percentiles or intervals, and its ``samples`` are empty once the run has more than
:data:`INTERIM_SAMPLES` of them (the records file has every one). The session end writes the
full file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_dsocr.atomic import atomic_open, json_safe, to_json_text
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.accuracy import AccuracySummary
from pytest_dsocr.report.model import (
    Aggregates,
    ByWorker,
    Counts,
    RunMetrics,
    Throughput,
    WorkerRow,
    primary_stage,
)
from pytest_dsocr.report.stats import Stats
from pytest_dsocr.stages import DECODE, PREFILL, VISION, StageTree, benchmark_stage_rank, vision_parts_in

METRICS_FILE = "metrics.json"
MS_PER_S = 1000.0
INTERIM_SAMPLES = 50  # an interim metrics.json lists its samples up to this many


def sample_metrics(run: ImageRun) -> dict[str, float]:
    """The per-run quantities (ms) of one record, keyed by stage or metric name.

    Keys: prefill, vision, each vision part, decode, ttft, e2e and tpot (absent for a single
    generated token). The one mapping from records to named values: metrics.json aggregates
    and the regression gate both read runs through it.
    """
    values = {PREFILL: float(run.prefill_ms), VISION: float(run.vision_ms)}
    for name, ms in run.substage_ms.items():
        values[name] = float(ms)
    values[DECODE] = float(run.decode_ms)
    values["ttft"] = float(run.ttft_ms)
    if run.tokens > 1:
        values["tpot"] = float(run.decode_ms) / (run.tokens - 1)
    values["e2e"] = float(run.preprocess_ms) + values[PREFILL] + values[DECODE]
    return values


def build_metrics(
    records: Sequence[ImageRun],
    failures: Sequence[SampleFailure],
    *,
    env: dict,
    config: dict,
    tree: StageTree | None = None,
    sections: dict[str, Any] | None = None,
    complete: bool,
    reason: str | None = None,
    counts: dict | None = None,
    memory: dict | None = None,
    identity: dict | None = None,
    records_file: str | None = None,
) -> RunMetrics:
    """The full metrics of a run (complete or not) from its records and failures.

    ``tree`` (the family's stage tree) orders the vision parts; parts it does not list follow
    in the order records first show them. ``counts`` overrides the counts derived here (the
    plugin knows warmup rounds and rounds). ``sections`` adds stages' own sections (e.g.
    ``efficiency``); they may not replace a core key.
    """
    stages = list(dict.fromkeys(run.stage for run in records))
    main_stage = primary_stage(stages)
    main_runs = [run for run in records if run.stage == main_stage]
    parts = vision_parts_in(dict.fromkeys(n for run in records for n in run.substage_ms),
                            tree.vision_parts if tree else ())
    aggregates = aggregate(main_runs, parts)
    by_stage = {}
    if len(stages) > 1:
        by_stage = {stage: aggregate([run for run in records if run.stage == stage], parts)
                    for stage in sorted(stages, key=benchmark_stage_rank)}
    workers = list(dict.fromkeys(run.worker for run in main_runs))
    return RunMetrics(
        complete=bool(complete),
        reason=reason,
        aggregates_stage=main_stage,
        aggregates=aggregates,
        stage_nesting=_nesting(aggregates.stage_ms, tree),
        counts=_counts(records, failures, config, counts),
        error_rate=_error_rate(records, failures),
        memory=memory,
        env=env,
        config=config,
        samples=tuple(records),
        failures=tuple(failures),
        by_stage=by_stage,
        by_worker=_by_worker(main_runs, workers) if len(workers) > 1 else None,
        identity=identity,
        accuracy=AccuracySummary.from_runs(main_runs),
        records=records_file,
        generated_at=now_utc(),
        sections=dict(sections or {}),
    )


def now_utc() -> str:
    """The time a file is generated, as metrics.json states it (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_metrics(run_dir: str | os.PathLike[str], metrics: RunMetrics, durable: bool = True,
                  hooks: Sequence[Callable[[dict], None]] = ()) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; returns its path.

    ``hooks`` may add or change fields of the json form just before it is written (the
    ``pytest_dsocr_update_metrics`` hook), samples included. The samples are encoded one at a
    time into the file, so a run of 100,000 records never holds its whole json text in memory;
    without hooks they are also converted one at a time (their json dicts, some 200 MB at
    100,000 records, are never all held at once).
    """
    path = Path(run_dir) / METRICS_FILE
    data = metrics.to_json(samples=bool(hooks))
    for hook in hooks:
        hook(data)
    samples = data.pop("samples") if hooks else (run.to_json() for run in metrics.samples)
    head = to_json_text(data)
    cut = head.rindex("}")
    with atomic_open(path, durable) as handle:
        handle.write(head[:cut].rstrip().encode("utf-8"))
        handle.write(b',\n  "samples": [')
        for index, sample in enumerate(samples):
            text = _sample_json(sample)
            handle.write((("," if index else "") + "\n    " + text).encode("utf-8"))
        handle.write(b"\n  ]\n}\n")
    return path


def _sample_json(sample: dict) -> str:
    try:
        return json.dumps(sample, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):  # a non-finite time: null, as everywhere in metrics.json
        return json.dumps(json_safe(sample), allow_nan=False, ensure_ascii=False)


def read_metrics(path: str | os.PathLike[str], option: str | None = None) -> RunMetrics:
    """A metrics.json (or a run dir holding one) as :class:`RunMetrics`; DsocrError naming it."""
    file = Path(path)
    if file.is_dir():
        file = file / METRICS_FILE
    name = f"{option}={path}" if option else str(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DsocrError(f"{name}: no metrics.json at {file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsocrError(f"{name}: cannot read {file} as JSON ({exc})") from None
    return RunMetrics.from_json(data, source=name)


def aggregate(runs: Sequence[ImageRun], parts: Sequence[str] = ()) -> Aggregates:
    """The aggregates of the runs of one benchmark stage (see module doc)."""
    per_run = [sample_metrics(run) for run in runs]

    def column(name: str) -> list[float | None]:
        return [values.get(name) for values in per_run]

    stage_ms: dict[str, Stats] = {}
    for name in (PREFILL, VISION, *parts, DECODE):
        stats = Stats.from_values(column(name))
        if stats.count:
            stage_ms[name] = stats
    tokens = Stats.from_values((run.tokens for run in runs), "tokens")
    return Aggregates(
        prefill_ms=Stats.from_values(column(PREFILL)),
        decode_ms=Stats.from_values(column(DECODE)),
        tokens=tokens,
        tokens_per_s=Stats.from_values((_decode_rate(run) for run in runs), "tokens/s"),
        stage_ms=stage_ms,
        preprocess_ms=Stats.from_values(run.preprocess_ms for run in runs),
        ttft_ms=Stats.from_values(column("ttft")),
        tpot_ms=Stats.from_values(column("tpot")),
        e2e_ms=Stats.from_values(column("e2e")),
        sequence_lengths={
            "input": Stats.from_values((run.prefill_len for run in runs), "tokens"),
            "output": tokens,
            "image": Stats.from_values((run.image_tokens for run in runs), "tokens"),
        },
        throughput=_throughput(runs),
    )


def _decode_rate(run: ImageRun) -> float | None:
    if run.tokens < 2 or run.decode_ms <= 0:
        return None
    return (run.tokens - 1) / (run.decode_ms / MS_PER_S)


def _nesting(stage_ms: dict[str, Stats], tree: StageTree | None) -> dict[str, list[str]]:
    """Which measured stage contains which: prefill > vision > its parts."""
    parts = [name for name in stage_ms if name not in (PREFILL, VISION, DECODE)]
    return (tree or StageTree(tuple(parts))).nesting(stage_ms) if stage_ms else {}


def _throughput(runs: Sequence[ImageRun]) -> Throughput:
    totals = {"pages": 0, "output_tokens": 0, "image_tokens": 0, "prompt_tokens": 0}
    rates = dict.fromkeys(totals, 0.0)
    busy_s = 0.0
    by_worker: dict[str, list[ImageRun]] = {}
    for run in runs:
        by_worker.setdefault(run.worker, []).append(run)
    for worker_runs in by_worker.values():
        counted = _token_totals(worker_runs)
        seconds = sum(run.busy_ms for run in worker_runs) / MS_PER_S
        busy_s += seconds
        for key, value in counted.items():
            totals[key] += value
            if seconds > 0:
                rates[key] += value / seconds
    measured = busy_s > 0

    def rate(value: float) -> float | None:
        return value if measured else None

    return Throughput(
        pages_per_s=rate(rates["pages"]),
        output_tokens_per_s=rate(rates["output_tokens"]),
        image_tokens_per_s=rate(rates["image_tokens"]),
        prompt_tokens_per_s=rate(rates["prompt_tokens"]),
        input_tokens_per_s=rate(rates["image_tokens"] + rates["prompt_tokens"]),
        total_tokens_per_s=rate(rates["image_tokens"] + rates["prompt_tokens"] + rates["output_tokens"]),
        workers=len(by_worker),
        busy_s=busy_s,
        input_tokens=totals["image_tokens"] + totals["prompt_tokens"],
        **totals,
    )


def _token_totals(runs: Sequence[ImageRun]) -> dict[str, int]:
    return {
        "pages": len(runs),
        "output_tokens": sum(run.tokens for run in runs),
        "image_tokens": sum(run.image_tokens for run in runs),
        "prompt_tokens": sum(run.prefill_len - run.image_tokens for run in runs),
    }


def _by_worker(runs: Sequence[ImageRun], workers: Sequence[str]) -> ByWorker:
    rows = []
    for worker in workers:
        mine = [run for run in runs if run.worker == worker]
        throughput = _throughput(mine)
        rows.append(WorkerRow(
            worker=worker, device=mine[0].device, measured_runs=len(mine),
            pages_per_s=throughput.pages_per_s, output_tokens_per_s=throughput.output_tokens_per_s,
            e2e_ms=Stats.from_values(sample_metrics(run)["e2e"] for run in mine),
        ))
    total = _throughput(runs)
    return ByWorker(tuple(rows), {
        "workers": len(rows),
        "measured_runs": len(runs),
        "pages_per_s": total.pages_per_s,
        "output_tokens_per_s": total.output_tokens_per_s,
    })


def _counts(runs: Sequence[ImageRun], failures: Sequence[SampleFailure], config: dict,
            given: dict | None) -> Counts:
    infer = config.get("infer") if isinstance(config.get("infer"), dict) else {}
    distinct = {(run.epoch, run.sample_id) for run in runs} | {(f.epoch, f.sample_id) for f in failures}
    counts = {
        "warmup_rounds": infer.get("warmup_rounds"),
        "rounds": infer.get("rounds"),
        "samples": len(distinct),
        "measured_runs": len(runs),
        "failed": len(failures),
    }
    counts.update(given or {})
    return Counts.from_json(counts)


def _error_rate(runs: Iterable[ImageRun], failures: Sequence[SampleFailure]) -> float | None:
    failed = {(f.stage, f.epoch, f.sample_id) for f in failures}
    attempts = failed | {(run.stage, run.epoch, run.sample_id) for run in runs}
    return len(failed) / len(attempts) if attempts else None
