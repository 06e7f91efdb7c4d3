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
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_dsocr.atomic import atomic_open, json_safe, to_json_text
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import ImageRun, RunRows, SampleFailure
from pytest_dsocr.report.accuracy import AccuracySummary, WorstReads
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

    The records are read in one pass, one at a time, into per-stage columns of numbers: a run
    of 100,000 records (a :class:`~pytest_dsocr.records.RunRows`, which unpickles each as it is
    read) is never all in memory as objects. The metrics' ``samples`` are ``records`` itself.

    ``tree`` (the family's stage tree) orders the vision parts; parts it does not list follow
    in the order records first show them. ``counts`` overrides the counts derived here (the
    plugin knows warmup rounds and rounds). ``sections`` adds stages' own sections (e.g.
    ``efficiency``); they may not replace a core key.
    """
    stages: dict[str, _StageColumns] = {}
    names: dict[str, None] = {}
    measured = 0
    attempts: set[tuple[int, str]] = set()
    stage_attempts: set[tuple[str, int, str]] = set()
    for run in records:
        columns = stages.get(run.stage)
        if columns is None:
            columns = stages[run.stage] = _StageColumns()
        columns.add(run)
        measured += 1
        names.update(dict.fromkeys(run.substage_ms))
        attempts.add((run.epoch, run.sample_id))
        stage_attempts.add((run.stage, run.epoch, run.sample_id))
    failed = {(f.stage, f.epoch, f.sample_id) for f in failures}
    attempts |= {(f.epoch, f.sample_id) for f in failures}
    stage_attempts |= failed
    main_stage = primary_stage(stages)
    main = stages.get(main_stage or "", _StageColumns())
    parts = vision_parts_in(names, tree.vision_parts if tree else ())
    aggregates = main.aggregates(parts)
    by_stage = {}
    if len(stages) > 1:
        by_stage = {stage: stages[stage].aggregates(parts) for stage in sorted(stages, key=benchmark_stage_rank)}
    return RunMetrics(
        complete=bool(complete),
        reason=reason,
        aggregates_stage=main_stage,
        aggregates=aggregates,
        stage_nesting=_nesting(aggregates.stage_ms, tree),
        counts=_counts(len(attempts), measured, len(failures), config, counts),
        error_rate=len(failed) / len(stage_attempts) if stage_attempts else None,
        memory=memory,
        env=env,
        config=config,
        samples=records if isinstance(records, RunRows) else tuple(records),
        failures=tuple(failures),
        by_stage=by_stage,
        by_worker=main.by_worker() if len(main.workers) > 1 else None,
        identity=identity,
        accuracy=AccuracySummary.from_pages(main.accuracy.pages.values()),
        records=records_file,
        generated_at=now_utc(),
        sections=dict(sections or {}),
    )


class _StageColumns:
    """The runs of one benchmark stage as columns of numbers (see :func:`build_metrics`)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[float]] = {}  # sample_metrics name -> its values
        self.other: dict[str, list[float]] = {name: [] for name in _OTHER}
        self.workers: dict[str, _WorkerColumns] = {}
        self.accuracy = WorstReads()

    def add(self, run: ImageRun) -> None:
        values = sample_metrics(run)
        for name, value in values.items():
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = []
            column.append(value)
        other = self.other
        other["preprocess"].append(float(run.preprocess_ms))
        rate = _decode_rate(run)
        if rate is not None:
            other["tokens_per_s"].append(rate)
        other["tokens"].append(run.tokens)
        other["input"].append(run.prefill_len)
        other["image"].append(run.image_tokens)
        worker = self.workers.get(run.worker)
        if worker is None:
            worker = self.workers[run.worker] = _WorkerColumns(run.device)
        worker.add(run, values["e2e"])
        self.accuracy.add(run)

    def stats(self, name: str, unit: str = "ms") -> Stats:
        """A stage or latency column, by :func:`sample_metrics` name."""
        return Stats.from_values(self.columns.get(name) or (), unit)

    def other_stats(self, name: str, unit: str = "ms") -> Stats:
        """One of the per-run quantities besides stage times (:data:`_OTHER`)."""
        return Stats.from_values(self.other[name], unit)

    def aggregates(self, parts: Sequence[str] = ()) -> Aggregates:
        stage_ms: dict[str, Stats] = {}
        for name in (PREFILL, VISION, *parts, DECODE):
            stats = self.stats(name)
            if stats.count:
                stage_ms[name] = stats
        tokens = self.other_stats("tokens", "tokens")
        return Aggregates(
            prefill_ms=self.stats(PREFILL),
            decode_ms=self.stats(DECODE),
            tokens=tokens,
            tokens_per_s=self.other_stats("tokens_per_s", "tokens/s"),
            stage_ms=stage_ms,
            preprocess_ms=self.other_stats("preprocess"),
            ttft_ms=self.stats("ttft"),
            tpot_ms=self.stats("tpot"),
            e2e_ms=self.stats("e2e"),
            sequence_lengths={
                "input": self.other_stats("input", "tokens"),
                "output": tokens,
                "image": self.other_stats("image", "tokens"),
            },
            throughput=_throughput(self.workers.values()),
        )

    def by_worker(self) -> ByWorker:
        rows = []
        for name, worker in self.workers.items():
            throughput = _throughput([worker])
            rows.append(WorkerRow(
                worker=name, device=worker.device, measured_runs=worker.pages,
                pages_per_s=throughput.pages_per_s, output_tokens_per_s=throughput.output_tokens_per_s,
                e2e_ms=Stats.from_values(worker.e2e),
            ))
        total = _throughput(self.workers.values())
        return ByWorker(tuple(rows), {
            "workers": len(rows),
            "measured_runs": sum(worker.pages for worker in self.workers.values()),
            "pages_per_s": total.pages_per_s,
            "output_tokens_per_s": total.output_tokens_per_s,
        })


_OTHER = ("preprocess", "tokens_per_s", "tokens", "input", "image")  # per-run quantities besides stage times


class _WorkerColumns:
    """One worker's sums within a stage: busy time, pages and tokens (throughput), e2e times."""

    def __init__(self, device: str) -> None:
        self.device = device  # of its first run
        self.busy_ms = 0.0
        self.pages = 0
        self.output_tokens = 0
        self.image_tokens = 0
        self.prompt_tokens = 0
        self.e2e: list[float] = []

    def add(self, run: ImageRun, e2e_ms: float) -> None:
        self.busy_ms += run.busy_ms
        self.pages += 1
        self.output_tokens += run.tokens
        self.image_tokens += run.image_tokens
        self.prompt_tokens += run.prefill_len - run.image_tokens
        self.e2e.append(e2e_ms)


def now_utc() -> str:
    """The time a file is generated, as metrics.json states it (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_metrics(run_dir: str | os.PathLike[str], metrics: RunMetrics, durable: bool = True,
                  hooks: Sequence[Callable[[dict], None]] = (), sample_texts: Iterable[str] | None = None) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; returns its path (see :func:`metrics_chunks`)."""
    path = Path(run_dir) / METRICS_FILE
    with atomic_open(path, durable) as handle:
        for chunk in metrics_chunks(metrics, hooks, sample_texts):
            handle.write(chunk)
    return path


def metrics_chunks(metrics: RunMetrics, hooks: Sequence[Callable[[dict], None]] = (),
                   sample_texts: Iterable[str] | None = None, compact: bool = False) -> Iterator[bytes]:
    """metrics.json's bytes, its samples one at a time.

    ``hooks`` may add or change fields of the json form just before it is written (the
    ``pytest_dsocr_update_metrics`` hook), samples included. The samples are encoded one at a
    time, so a run of 100,000 records never holds its whole json text in memory; without hooks
    they are also converted one at a time (their json dicts, some 200 MB at 100,000 records, are
    never all held at once). ``sample_texts``, when given (and no hook is), is the json text of
    each of ``metrics.samples`` already encoded (the records file's run lines:
    :func:`pytest_dsocr.recordlog.run_texts`): copied instead of encoded again. ``compact``
    writes the head on one line (the interim file a long run rewrites every few seconds: json's
    C encoder is several times faster than its indenting one).
    """
    data = metrics.to_json(samples=bool(hooks))
    for hook in hooks:
        hook(data)
    if hooks:
        texts = (_sample_json(sample) for sample in data.pop("samples"))
    elif sample_texts is not None:
        texts = sample_texts
    else:
        texts = (_sample_json(run.to_json()) for run in metrics.samples)
    head = to_json_text(data, indent=None if compact else 2)
    cut = head.rindex("}")
    yield head[:cut].rstrip().encode("utf-8")
    yield b', "samples": [' if compact else b',\n  "samples": ['
    for index, text in enumerate(texts):
        yield (("," if index else "") + "\n    " + text).encode("utf-8")
    yield b"\n  ]\n}\n"


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


def _decode_rate(run: ImageRun) -> float | None:
    if run.tokens < 2 or run.decode_ms <= 0:
        return None
    return (run.tokens - 1) / (run.decode_ms / MS_PER_S)


def _nesting(stage_ms: dict[str, Stats], tree: StageTree | None) -> dict[str, list[str]]:
    """Which measured stage contains which: prefill > vision > its parts."""
    parts = [name for name in stage_ms if name not in (PREFILL, VISION, DECODE)]
    return (tree or StageTree(tuple(parts))).nesting(stage_ms) if stage_ms else {}


def _throughput(workers: Iterable[_WorkerColumns]) -> Throughput:
    """Per worker, its sums over its summed busy time; the rates of workers add up."""
    keys = ("pages", "output_tokens", "image_tokens", "prompt_tokens")
    totals = dict.fromkeys(keys, 0)
    rates = dict.fromkeys(keys, 0.0)
    busy_s = 0.0
    count = 0
    for worker in workers:
        count += 1
        seconds = worker.busy_ms / MS_PER_S
        busy_s += seconds
        for key in keys:
            value = getattr(worker, key)
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
        workers=count,
        busy_s=busy_s,
        input_tokens=totals["image_tokens"] + totals["prompt_tokens"],
        **totals,
    )


def _counts(samples: int, measured: int, failed: int, config: dict, given: dict | None) -> Counts:
    infer = config.get("infer") if isinstance(config.get("infer"), dict) else {}
    counts = {
        "warmup_rounds": infer.get("warmup_rounds"),
        "rounds": infer.get("rounds"),
        "samples": samples,
        "measured_runs": measured,
        "failed": failed,
    }
    counts.update(given or {})
    return Counts.from_json(counts)
