"""stakeholder_summary.md and report.md, rendered from a run's metrics alone.

Both read only :class:`~pytest_dsocr.report.model.RunMetrics` (never the session), so a
summary can be re-rendered from any saved metrics.json. Stage rows appear only for stages
that were measured.

``efficiency`` (MFU/MBU, written by the static_analysis stage) is rendered when present by
``pytest_dsocr.analytic.efficiency.efficiency_markdown``, the renderer of that section's schema.
Stage-neutral sections get their own blocks when present: ``dataset`` (what was found and what
was skipped), ``sweep`` (the sweep files) and ``notes`` (skip reasons and warnings). A run that
measured no page (a sweep or static analysis alone) says what it produced instead of empty
tables. The resolved config is not printed: report.md links ``resolved_config.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from pytest_dsocr.outputs.accuracy import IOU_THRESHOLD
from pytest_dsocr.report.markdown import (
    MISSING,
    RATE_DIGITS,
    fmt,
    key_value_table,
    pct,
    section,
    table,
)
from pytest_dsocr.report.model import Aggregates, ByWorker, RunMetrics
from pytest_dsocr.report.provenance import describe_weights
from pytest_dsocr.report.spread import SpreadFacts, spread_facts
from pytest_dsocr.report.stats import Stats
from pytest_dsocr.stages import DECODE, PREFILL, VISION

SUMMARY_TITLE = "DeepSeek-OCR profile: stakeholder summary"
REPORT_TITLE = "DeepSeek-OCR profile: full report"
NESTING_NOTE = (
    "Vision sub-stages nest inside prefill and are never summed with it: prefill contains "
    "vision{subs}, so prefill + decode is the whole generation and adding vision or its "
    "sub-stages to it would count them twice."
)
OUTSIDE_SUBSTAGES = "outside sub-stages (decoder prefill, embedding merge)"
# A stage whose standard deviation exceeds this fraction of its mean gets a takeaway line
# saying where the spread comes from (report/spread.py: repeats of a page, pages, content).
HIGH_SPREAD_CV = 0.25
RESOLVED_CONFIG_FILE = "resolved_config.yaml"  # written beside report.md by the collector
MAX_SKIPPED_ROWS = 20  # skipped dataset entries listed in the summary; metrics.json lists more
MAX_SAMPLE_ROWS = 1000  # per-run rows of report.md (100,000 rows took seconds and help no reader)
# What a run produced besides measured pages, by metrics.json section, for a run that measured none.
PRODUCTS = (
    ("sweep", "analytic sweeps (`sweeps/*.csv`; see Sweeps)"),
    ("static_analysis", "the static analysis (`static_analysis/static_compute.md`; see Static Analysis)"),
    ("vendor_parity", "the vendor parity check (`vendor_parity/report.md`)"),
    ("nsys", "Nsight Systems tables (`nsys/summary.md`)"),
    ("ncu", "Nsight Compute kernel tables (`ncu/kernels.md`)"),
)
# Aggregates table: (label, path in aggregates). Rows with no measurement are left out.
AGGREGATE_ROWS = (
    ("Prefill", lambda a: a.prefill_ms),
    ("Decode", lambda a: a.decode_ms),
    ("Time to first token (TTFT)", lambda a: a.ttft_ms),
    ("Time per output token (TPOT)", lambda a: a.tpot_ms),
    ("End to end (preprocess + prefill + decode)", lambda a: a.e2e_ms),
    ("Preprocess", lambda a: a.preprocess_ms),
    ("Generated tokens", lambda a: a.tokens),
    ("Decode rate", lambda a: a.tokens_per_s),
    ("Input length (image + text tokens)", lambda a: a.sequence_lengths.get("input")),
    ("Image tokens", lambda a: a.sequence_lengths.get("image")),
)
THROUGHPUT_ROWS = (
    ("Pages/s", "pages_per_s"),
    ("Output (text) tokens/s", "output_tokens_per_s"),
    ("Image (vision) tokens/s", "image_tokens_per_s"),
    ("Prompt (text) tokens/s", "prompt_tokens_per_s"),
    ("Total tokens/s (input + output)", "total_tokens_per_s"),
)
MEMORY_LABELS = {  # keys of pytest_dsocr.env.peak_memory
    "cuda_max_allocated_mib": "CUDA max allocated",
    "cuda_max_reserved_mib": "CUDA max reserved",
    "max_rss_mib": "max RSS",
}
PLOT_TITLES = {
    "stage_times": "Per-stage timings",
    "latency_distribution": "Per-sample latency distribution",
}


def measured(metrics: RunMetrics) -> bool:
    """Whether the run measured any page (else it has no aggregates to show)."""
    return bool(metrics.aggregates.runs or metrics.samples)


def render_stakeholder_summary(metrics: RunMetrics, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """stakeholder_summary.md: what a reader needs to judge the run, no per-sample rows."""
    parts = [f"# {SUMMARY_TITLE}\n", _status(metrics)]
    parts += _core_sections(metrics)
    parts += [section(title, body) for title, body in extra_sections]
    return "\n".join(parts)


def render_report(metrics: RunMetrics, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """report.md: the summary's sections plus every statistic, per-sample rows and the config."""
    parts = [f"# {REPORT_TITLE}\n", _status(metrics)]
    parts += _core_sections(metrics)
    parts.append(section("All Statistics", _all_stats(metrics.aggregates)))
    for stage, aggregates in metrics.by_stage.items():
        parts.append(section(f"All Statistics: {stage}", _all_stats(aggregates), level=3))
    parts.append(section("Per-Sample Rows", _sample_rows(metrics)))
    if any(failure.chain for failure in metrics.failures):
        parts.append(section("Failure Details", _failure_details(metrics)))
    parts.append(section("Counts", key_value_table(metrics.counts.to_json())))
    parts.append(section("Configuration", _configuration(metrics)))
    parts += [section(title, body) for title, body in extra_sections]
    return "\n".join(parts)


def render_terminal_summary(metrics: RunMetrics) -> str:
    """A few lines for pytest's terminal summary: status, per-stage timings, takeaways."""
    if not measured(metrics):
        return _status(metrics)
    return "\n".join([_status(metrics), _stage_timings(metrics), "", _takeaways(metrics)])


def _core_sections(metrics: RunMetrics) -> list[str]:
    parts = [section("Environment", _environment(metrics))]
    dataset = metrics.section("dataset")
    if dataset:
        parts.append(section("Dataset", _dataset(dataset)))
    if metrics.accuracy is not None:
        parts.append(section("Accuracy", _accuracy(metrics)))
    if measured(metrics):
        parts += [
            section("Aggregates", _aggregates(metrics)),
            section("Per-Stage Timings (ms)", _stage_timings(metrics)),
            section("Stage Share (%)", _stage_shares(metrics)),
            section("Stage Takeaways", _takeaways(metrics)),
        ]
    sweep = metrics.section("sweep")
    if sweep:
        parts.append(section("Sweeps", _sweeps(sweep)))
    efficiency = metrics.section("efficiency")
    if efficiency:
        parts.append(section("Efficiency (MFU/MBU)", _efficiency(efficiency)))
    if metrics.by_stage:
        parts.append(section("Benchmark Stages", _by_stage(metrics.by_stage)))
    if metrics.by_worker is not None:
        parts.append(section("Workers", _by_worker(metrics.by_worker)))
    if metrics.failures:
        parts.append(section("Failures", _failures(metrics)))
    notes = metrics.section("notes")
    if notes and (notes.get("skipped") or notes.get("warnings")):
        parts.append(section("Notes", _notes(notes)))
    plots = _plots(metrics.section("plots"))
    if plots:
        parts.append(section("Plots", plots))
    return parts


def _status(metrics: RunMetrics) -> str:
    counts = metrics.counts
    stage = metrics.aggregates_stage or MISSING
    lines = []
    if metrics.complete:
        lines.append("Run complete.")
    else:
        reason = metrics.reason or "still running"
        lines.append(f"**Run incomplete** ({reason}): the numbers cover the runs finished so far.")
    runs = metrics.aggregates.runs
    if measured(metrics):
        lines.append(
            f"Aggregates from benchmark stage `{stage}` ({runs} runs); {fmt(counts.measured_runs)} "
            f"measured runs of {fmt(counts.samples)} samples in all, {fmt(counts.failed)} failed."
        )
    else:
        lines.append(_produced(metrics))
    if metrics.generated_at:
        lines.append(f"Generated {metrics.generated_at}.")
    return " ".join(lines) + "\n"


def _produced(metrics: RunMetrics) -> str:
    """What a run that measured no page did produce."""
    if metrics.failures:
        why = f"every sample attempt failed ({len(metrics.failures)} failure(s), see Failures)"
    else:
        why = "no inference stage ran in this session"
    products = [text for name, text in PRODUCTS if metrics.section(name)]
    made = ("It produced " + "; ".join(products) + ".") if products else "It produced no stage results."
    return f"No page was measured: {why}. {made}"


def _environment(metrics: RunMetrics) -> str:
    rows: dict[str, Any] = {}
    model = metrics.model
    if model:
        rows["model"] = " ".join(
            str(model[key]) for key in ("family", "size") if model.get(key) is not None
        )
        for key in ("dtype", "device", "base_size", "image_size", "crop_mode"):
            if model.get(key) is not None:
                rows[f"model.{key}"] = model[key]
    weights = describe_weights(metrics.weights, model.get("size"))
    if weights is not None:
        rows["weights"] = weights
    max_new = (metrics.config.get("infer") or {}).get("max_new_tokens")
    if max_new is not None:
        rows["infer.max_new_tokens"] = max_new
    rows.update(metrics.env)
    return key_value_table(rows) if rows else "No environment recorded."


def _accuracy(metrics: RunMetrics) -> str:
    """The accuracy line, and what it was measured on: the reads of the aggregated stage."""
    return (f"{metrics.accuracy.sentence()}\n\nEach page counts with its worst read in benchmark stage "
            f"`{metrics.aggregates_stage}`; edit distance is normalized as OmniDocBench scores text (0 is a "
            f"perfect read, 1 nothing in common), boxes match one-to-one at IoU >= {IOU_THRESHOLD}; per-page "
            "values are in metrics.json `samples[].accuracy`.")


def _aggregates(metrics: RunMetrics) -> str:
    aggregates = metrics.aggregates
    rows = []
    for label, pick in AGGREGATE_ROWS:
        stats = pick(aggregates)
        if stats is not None and stats.count:
            rows.append((label, stats.mean, stats.std, stats.p50, stats.p90, stats.p99, stats.unit))
    parts = [
        table(("Metric", "Mean", "Std", "p50", "p90", "p99", "Unit"), rows, align="lrrrrrl")
        if rows
        else "No run was measured."
    ]
    throughput = aggregates.throughput
    if throughput.pages_per_s is not None:
        parts.append(
            table(
                ("Throughput", "Value"),
                [(label, fmt(getattr(throughput, key), RATE_DIGITS)) for label, key in THROUGHPUT_ROWS],
            )
        )
        parts.append(
            f"Throughput counts runs over their summed end-to-end time "
            f"({fmt(throughput.busy_s)} s over {throughput.workers} worker(s); "
            "the rates of concurrent workers add up)."
        )
    parts.append(_counts_line(metrics))
    memory = _memory_line(metrics.memory)
    if memory:
        parts.append(memory)
    return "\n\n".join(parts)


def _counts_line(metrics: RunMetrics) -> str:
    counts = metrics.counts
    rate = metrics.error_rate
    rounds = ""
    if counts.rounds is not None or counts.warmup_rounds is not None:
        rounds = (
            f" ({fmt(counts.warmup_rounds)} warmup and {fmt(counts.rounds)} measured "
            "round(s) per sample)"
        )
    error_rate = "" if rate is None else f" (error rate {pct(rate)}%)"
    return (
        f"Counts: {fmt(counts.samples)} samples, {fmt(counts.measured_runs)} measured runs"
        f"{rounds}, {fmt(counts.failed)} failed{error_rate}."
    )


def _memory_line(memory: Mapping[str, Any] | None) -> str:
    if not memory:
        return ""
    items = [
        f"{MEMORY_LABELS.get(key, key)} {fmt(value, 1)}{' MiB' if key.endswith('_mib') else ''}"
        for key, value in memory.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    return ("Peak memory: " + ", ".join(items) + ".") if items else ""


def _stage_order(metrics: RunMetrics) -> list[str]:
    """Measured stages in reading order: prefill, vision, its sub-stages, decode."""
    stage_ms = metrics.aggregates.stage_ms
    nesting = metrics.stage_nesting
    order = [PREFILL, *nesting.get(PREFILL, []), *nesting.get(VISION, []), DECODE]
    order += [name for name in stage_ms if name not in order]
    return [name for name in dict.fromkeys(order) if name in stage_ms]


def _substages(metrics: RunMetrics) -> list[str]:
    """The innermost measured parts of prefill (sam/clip/projector, or vision alone)."""
    nesting = metrics.stage_nesting
    names = nesting.get(VISION) or nesting.get(PREFILL) or []
    return [name for name in names if name in metrics.aggregates.stage_ms]


def _stage_timings(metrics: RunMetrics) -> str:
    stage_ms = metrics.aggregates.stage_ms
    rows = [
        (name, s.mean, s.std, s.p50, s.p90)
        for name in _stage_order(metrics)
        for s in (stage_ms[name],)
    ]
    if not rows:
        return "No stage was measured."
    subs = _substages(metrics)
    nested = f" and vision contains {', '.join(subs)}" if subs and VISION in stage_ms and subs != [VISION] else ""
    headers = ("Stage", "Mean (ms)", "Std (ms)", "p50 (ms)", "p90 (ms)")
    return table(headers, rows) + "\n\n> " + NESTING_NOTE.format(subs=nested)


def _mean(stage_ms: Mapping[str, Stats], name: str) -> float | None:
    stats = stage_ms.get(name)
    return stats.mean if stats else None


def _stage_shares(metrics: RunMetrics) -> str:
    stage_ms = metrics.aggregates.stage_ms
    prefill, decode = _mean(stage_ms, PREFILL), _mean(stage_ms, DECODE)
    if prefill is None or decode is None or prefill + decode <= 0:
        return "Not enough stages measured for shares."
    total = prefill + decode
    parts = [
        "Run level, share of prefill + decode (means per run):",
        table(
            ("Stage", "Mean (ms)", "Share (%)"),
            [(PREFILL, prefill, pct(prefill / total)), (DECODE, decode, pct(decode / total))],
        ),
    ]
    subs = _substages(metrics)
    if subs and prefill > 0:
        means = [(name, _mean(stage_ms, name) or 0.0) for name in subs]
        covered = sum(ms for _, ms in means)
        rows: list[tuple[Any, ...]] = [(name, ms, pct(ms / prefill)) for name, ms in means]
        if covered <= prefill:
            rows.append((OUTSIDE_SUBSTAGES, prefill - covered, pct((prefill - covered) / prefill)))
        parts += [
            "Prefill level, share of prefill:",
            table(("Stage", "Mean (ms)", "Share of prefill (%)"), rows),
            f"The sub-stages ({', '.join(subs)}) add up to {pct(covered / prefill)}% of prefill; "
            "their sum can be below prefill because the decoder prefill and the embedding merge "
            "run outside them.",
        ]
    return "\n\n".join(parts)


def _takeaways(metrics: RunMetrics) -> str:
    aggregates = metrics.aggregates
    stage_ms = aggregates.stage_ms
    prefill, decode = _mean(stage_ms, PREFILL), _mean(stage_ms, DECODE)
    lines = []
    if prefill is not None and decode is not None and prefill + decode > 0:
        largest, ms = (DECODE, decode) if decode >= prefill else (PREFILL, prefill)
        lines.append(
            f"The largest stage is {largest}: {pct(ms / (prefill + decode))}% of prefill + decode "
            f"({fmt(ms)} of {fmt(prefill + decode)} ms per run on average)."
        )
    rate, tpot, tokens = aggregates.tokens_per_s, aggregates.tpot_ms, aggregates.tokens
    if rate.count:
        median = rate.p50 if rate.p50 is not None else rate.mean
        lines.append(
            f"Decode runs at {fmt(median, RATE_DIGITS)} tokens/s on the median run "
            f"(TPOT p50 {fmt(tpot.p50)} ms) over {fmt(tokens.mean, 1)} generated tokens per run."
        )
    subs = _substages(metrics)
    if subs and prefill:
        means = sorted(((_mean(stage_ms, name) or 0.0, name) for name in subs), reverse=True)
        outside = prefill - sum(ms for ms, _ in means)
        top_ms, top = means[0]
        others = ", ".join(f"{name} {pct(ms / prefill)}%" for ms, name in means[1:])
        text = f"Within prefill, {top} dominates the measured sub-stages with {pct(top_ms / prefill)}% of prefill"
        text += f" ({others})" if others else ""
        if outside > top_ms:
            text += (
                f"; the decoder prefill and embedding merge outside them take more still, "
                f"{pct(outside / prefill)}%"
            )
        lines.append(text + ".")
    throughput = aggregates.throughput
    if throughput.pages_per_s is not None:
        lines.append(
            f"End to end: {fmt(throughput.pages_per_s, RATE_DIGITS)} pages/s, "
            f"TTFT p50 {fmt(aggregates.ttft_ms.p50)} ms."
        )
    wide = [
        name
        for name in _stage_order(metrics)
        for stats in (stage_ms[name],)
        if stats.count > 1 and stats.mean and stats.std / stats.mean > HIGH_SPREAD_CV
    ]
    if wide:
        lines.append(_spread_line(metrics, wide))
    if metrics.counts.failed:
        lines.append(f"{metrics.counts.failed} sample run(s) failed (listed under Failures in the summary).")
    return "\n".join(f"- {line}" for line in lines) if lines else "No run was measured."


def _cvs(pairs: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {pct(cv, 0)}%" for name, cv in pairs)


def _spread_line(metrics: RunMetrics, wide: Sequence[str]) -> str:
    """Where the wide spread of the ``wide`` stages comes from, as far as the records show it:
    repeats of one page (the machine), or pages that differ in output length (decode) or crop
    grid (prefill and vision); what neither explains is said to point at the machine."""
    stage_ms = metrics.aggregates.stage_ms
    overall = _cvs([(name, stage_ms[name].std / stage_ms[name].mean) for name in wide])
    facts = spread_facts(metrics.primary_samples(), wide)
    if facts is None:  # an interim file without its samples: no claim about the cause
        return (f"Times vary widely between runs (std as % of the mean: {overall}); read the medians and "
                "the per-sample records, not the means alone.")
    within = [(s.stage, s.within_page) for s in facts.stages if s.within_page is not None]
    between = [(s.stage, s.between_pages) for s in facts.stages if s.between_pages is not None]
    if within:
        text = (f"Times vary widely between runs (std as % of the mean: {overall}): across the repeated runs "
                f"of one page {_cvs(within)} (median over {facts.repeated_pages} pages)")
        text += f", between pages (each page's median) {_cvs(between)}." if between else "."
    else:
        text = f"Times vary widely between pages (one run each; std as % of the mean: {overall})."
    if any(cv > HIGH_SPREAD_CV for _, cv in within):
        text += (" The same page took different times, so the machine's speed varied during the run (other "
                 "load, clocks): rerun on a quiet machine or with more rounds.")
    else:
        text += " " + _content_explanation(facts, wide)
    load = _load_note(metrics.env)
    if load:
        text += f" {load[0].upper()}{load[1:]}."
    return text + " Read the medians and the per-sample rows, not the means alone."


def _content_explanation(facts: SpreadFacts, wide: Sequence[str]) -> str:
    """Whether output length (decode) and crop grid (prefill, vision) varied between the pages."""
    sentences, unexplained = [], False
    if DECODE in wide:
        low, high = facts.tokens
        if facts.length_varied:
            sentences.append(f"Output length varied from {low} to {high} tokens, which decode time follows.")
        else:
            sentences.append(f"Output length was {low} tokens in every run, so it does not explain decode's spread.")
            unexplained = True
    image_stages = [name for name in wide if name != DECODE]
    if image_stages:
        grids = ", ".join("x".join(map(str, grid)) for grid in facts.grids)
        names = ", ".join(image_stages)
        if facts.grid_varied:
            sentences.append(f"Pages used {len(facts.grids)} crop grids ({grids}), which {names} follow.")
        else:
            sentences.append(f"Every page had crop grid {grids}, so it does not explain the spread of {names}.")
            unexplained = True
    if unexplained:
        sentences.append("What the pages do not explain points at the machine: its load or clocks likely varied.")
    return " ".join(sentences)


def _load_note(env: Mapping[str, Any]) -> str:
    """The machine's load when the run started, when it exceeded its cores."""
    load, cores = env.get("load_average_1m"), env.get("cpu_count")
    if isinstance(load, (int, float)) and isinstance(cores, int) and cores > 0 and load >= cores:
        return f"the 1-minute load average was {fmt(float(load))} on {cores} CPU cores when the run started"
    return ""


def _dataset(dataset: Mapping[str, Any]) -> str:
    found = f"{fmt(dataset.get('discovered'))} images found in `{dataset.get('image_dir')}` " \
            f"(selected by {dataset.get('selection')})"
    skipped = dataset.get("skipped") or []
    count = dataset.get("skipped_count") or 0
    if not count:
        return found + "; nothing under it was skipped."
    rows = [(entry.get("path"), entry.get("reason")) for entry in skipped[:MAX_SKIPPED_ROWS]]
    more = count - len(rows)
    parts = [f"{found}; {count} {'entry under it was' if count == 1 else 'entries under it were'} skipped:",
             table(("Skipped", "Why"), rows, numeric_from=2)]
    if more > 0:
        by_reason = ", ".join(f"{n} {reason}" for reason, n in (dataset.get("skipped_by_reason") or {}).items())
        parts.append(f"And {more} more (metrics.json `dataset.skipped` lists up to {len(skipped)}); "
                     f"all {count} by reason: {by_reason}.")
    return "\n\n".join(parts)


def _sweeps(sweep: Mapping[str, Any]) -> str:
    files: dict[str, list[str]] = {}
    for file in sweep.get("files") or ():
        path = PurePath(str(file))
        relative = f"{path.parent.name}/{path.name}"
        files.setdefault(path.stem, []).append(f"[{relative}]({relative})")
    rows = [(name, points, ", ".join(files.get(name, []))) for name, points in (sweep.get("points") or {}).items()]
    model = " ".join(str(sweep.get(key)) for key in ("model_family", "model_size") if sweep.get(key))
    lines = [f"Analytic cost model of {model} ({sweep.get('dtype')}, {sweep.get('attention')} attention), "
             f"evaluated at every point in {fmt(sweep.get('evaluate_ms'))} ms; "
             f"hardware {sweep.get('hardware') or 'none'} ({sweep.get('hardware_choice')}).",
             table(("Sweep", "Points", "Files"), rows)]
    lines += [f"_{note}_" for note in sweep.get("notes") or ()]
    return "\n\n".join(lines)


def _notes(notes: Mapping[str, Any]) -> str:
    lines = [f"- Skipped {entry.get('stage')} ({entry.get('tests')} test(s)): {entry.get('reason')}"
             for entry in notes.get("skipped") or ()]
    lines += [f"- Warning: {entry.get('message')}" + (f" ({entry.get('count')}x)" if (entry.get("count") or 1) > 1 else "")
              for entry in notes.get("warnings") or ()]
    return "\n".join(lines)


def _failure_details(metrics: RunMetrics) -> str:
    blocks = []
    for failure in metrics.failures:
        if not failure.chain:
            continue
        steps = "\n".join(f"   {index}. {line}" for index, line in enumerate(failure.chain, start=1))
        blocks.append(f"- `{failure.sample_id}` (epoch {failure.epoch}, {failure.stage}): {failure.error}\n{steps}")
    return ("Each failure's exception chain, root cause first (the terminal and the Failures table show "
            "the last line only):\n\n" + "\n".join(blocks))


def _configuration(metrics: RunMetrics) -> str:
    infer = metrics.config.get("infer") or {}
    dataset = metrics.config.get("dataset") or {}
    facts = {key: value for key, value in (
        ("dataset.name", dataset.get("name")), ("dataset.root", dataset.get("root")),
        ("infer.rounds", infer.get("rounds")), ("infer.warmup_rounds", infer.get("warmup_rounds")),
        ("infer.temperature", infer.get("temperature")), ("infer.decode_backend", infer.get("decode_backend")),
    ) if value is not None}
    text = (f"The whole resolved configuration is in [`{RESOLVED_CONFIG_FILE}`]({RESOLVED_CONFIG_FILE}) "
            "(and metrics.json `config`); the model keys are under Environment.")
    return text + ("\n\n" + key_value_table(facts) if facts else "")


def _efficiency(efficiency: Mapping[str, Any]) -> str:
    # The analytic package owns the efficiency section's schema and its one renderer; imported
    # here, not at the top, because it loads the cost model (and torch) behind it.
    from pytest_dsocr.analytic.efficiency import efficiency_markdown

    return efficiency_markdown(efficiency)


def _by_stage(by_stage: Mapping[str, Aggregates]) -> str:
    rows = []
    for stage, aggregates in by_stage.items():
        rows.append(
            (
                stage,
                aggregates.prefill_ms.count,
                aggregates.prefill_ms.p50,
                aggregates.decode_ms.p50,
                aggregates.e2e_ms.p50,
                fmt(aggregates.throughput.pages_per_s, RATE_DIGITS),
            )
        )
    note = (
        "Each benchmark stage is aggregated on its own (a profiler's overhead never mixes into "
        "another stage's numbers); the aggregates above come from one of them."
    )
    headers = ("Benchmark stage", "Runs", "Prefill p50 (ms)", "Decode p50 (ms)", "E2E p50 (ms)", "Pages/s")
    return table(headers, rows) + "\n\n" + note


def _by_worker(by_worker: ByWorker) -> str:
    rows = [
        (
            row.worker,
            row.device,
            row.measured_runs,
            fmt(row.pages_per_s, RATE_DIGITS),
            fmt(row.output_tokens_per_s, RATE_DIGITS),
            row.e2e_ms.p50,
        )
        for row in by_worker.rows
    ]
    totals = by_worker.totals
    rows.append(
        (
            f"total ({totals.get('workers')} workers)",
            "",
            totals.get("measured_runs"),
            fmt(totals.get("pages_per_s"), RATE_DIGITS),
            fmt(totals.get("output_tokens_per_s"), RATE_DIGITS),
            "",
        )
    )
    return table(("Worker", "Device", "Runs", "Pages/s", "Output tokens/s", "E2E p50 (ms)"), rows, numeric_from=2)


def _failures(metrics: RunMetrics) -> str:
    rows = [(f.sample_id, f.epoch, f.stage, f.error_type, f.error) for f in metrics.failures]
    return table(("Sample", "Epoch", "Stage", "Type", "Error"), rows, numeric_from=5)


def _plots(plots: Mapping[str, Any] | None) -> str:
    if not plots:
        return ""
    lines = [f"![{PLOT_TITLES.get(name, name)}]({path})" for name, path in (plots.get("files") or {}).items()]
    if plots.get("note"):
        lines.append(f"_{plots['note']}_")
    return "\n\n".join(lines)


STAT_COLUMNS = ("count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max", "ci_low", "ci_high", "unit")


def _all_stats(aggregates: Aggregates) -> str:
    rows = [(name, *(getattr(stats, col) for col in STAT_COLUMNS)) for name, stats in _named_stats(aggregates)]
    headers = ("Quantity", "n", "Mean", "Std", "Min", "p50", "p90", "p95", "p99", "Max", "CI low", "CI high", "Unit")
    if not rows:
        return "No run was measured."
    return table(headers, rows, align="l" + "r" * (len(headers) - 2) + "l") + "\n\nCI: bootstrap confidence interval of the mean."


def _named_stats(aggregates: Aggregates) -> list[tuple[str, Stats]]:
    """Every statistic of the aggregates with its dotted name, in the json's order."""
    named = [(name, getattr(aggregates, name)) for name in ("prefill_ms", "decode_ms", "tokens", "tokens_per_s")]
    named += [(f"stage_ms.{name}", stats) for name, stats in aggregates.stage_ms.items()]
    named += [(name, getattr(aggregates, name)) for name in ("preprocess_ms", "ttft_ms", "tpot_ms", "e2e_ms")]
    named += [(f"sequence_lengths.{name}", stats) for name, stats in aggregates.sequence_lengths.items()]
    return named


def _sample_rows(metrics: RunMetrics) -> str:
    if not metrics.samples:
        return "No run was measured."
    samples = metrics.samples[:MAX_SAMPLE_ROWS]
    subs = list(dict.fromkeys(name for s in samples for name in s.substage_ms))
    headers = (
        "Stage", "Epoch", "Round", "Sample", "Worker", "Preprocess", "Prefill", "Vision", *subs,
        "Decode", "TTFT", "TPOT", "Tokens", "Prompt len", "Image tokens", "Grid", "Finish",
    )
    rows = []
    for s in samples:
        rows.append(
            (
                s.stage, s.epoch, s.round, s.sample_id, s.worker,
                s.preprocess_ms, s.prefill_ms, s.vision_ms,
                *(s.substage_ms.get(name) for name in subs),
                s.decode_ms, s.ttft_ms, s.tpot_ms,
                s.tokens, s.prefill_len,
                s.image_tokens, "x".join(str(v) for v in s.crop_grid), s.finish_reason,
            )
        )
    total = len(metrics.samples)
    main = sum(1 for run in samples if run.stage == metrics.aggregates_stage) if total <= len(samples) \
        else metrics.aggregates.runs
    note = f"Times in ms. {total} runs, {main} of them in the aggregated stage."
    if total > len(samples):
        note += (f" The first {len(samples)} are shown; every run is in metrics.json `samples` and "
                 f"`{metrics.records or 'records.jsonl'}`.")
    align = "l" * 5 + "r" * (len(headers) - 7) + "ll"  # Grid and Finish are words
    return table(headers, rows, align=align) + "\n\n" + note
