"""``python -m pytest_dsocr compare RUN_A RUN_B``: the regression table of two saved runs, no inference.

RUN_A is the baseline, RUN_B the run judged against it (a metrics.json or a run dir
holding one). Exit status: 0 every stage within threshold or improved (or inconclusive with
``--inconclusive warn``), 1 a stage regressed or (by default) has no verdict, 2 bad input or
runs that are not comparable (another config, software, device or weights) without ``--force``. Runs of
different model families get a plain side-by-side table instead: there is no verdict to
give between two different models.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report.gate import (
    DEFAULT_INCONCLUSIVE,
    DEFAULT_MIN_PAGES,
    DEFAULT_THRESHOLD,
    INCONCLUSIVE_CHOICES,
    compare_runs,
    load_baseline,
    parse_inconclusive,
    parse_min_pages,
    parse_stage_thresholds,
    parse_threshold,
)
from pytest_dsocr.report.markdown import MISSING, RATE_DIGITS, RATIO_DIGITS, fmt, table
from pytest_dsocr.report.metrics import DECODE, LATENCY_METRICS, PREFILL, VISION, lookup

HELP = "compare two saved runs stage by stage (regression table; exit 1 on a regression)"
EXIT_OK, EXIT_REGRESSION = 0, 1
FAMILY_PATH = ("config", "model", "family")
THROUGHPUT_ROWS = (("pages/s", "pages_per_s"), ("output tokens/s", "output_tokens_per_s"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="baseline: metrics.json or the run dir holding it")
    parser.add_argument("run_b", metavar="RUN_B", help="run to judge: metrics.json or the run dir holding it")
    parser.add_argument("--threshold", default=f"{DEFAULT_THRESHOLD:.0%}", metavar="PCT",
                        help="largest tolerated slowdown of a stage (default %(default)s)")
    parser.add_argument("--stage-threshold", action="append", default=[], metavar="STAGE=PCT",
                        help="threshold for one stage, e.g. decode=5%% (repeatable)")
    parser.add_argument("--min-pages", default=DEFAULT_MIN_PAGES, metavar="N",
                        help="fewest pages (paired, or in each run) for a verdict (default %(default)s)")
    parser.add_argument("--inconclusive", default=DEFAULT_INCONCLUSIVE, metavar="|".join(INCONCLUSIVE_CHOICES),
                        help="what a stage without a confident verdict does to the exit status (default %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="compare runs of another config, software, device or weights anyway")


def run(args: argparse.Namespace) -> int:
    baseline = load_baseline(args.run_a, option="RUN_A")
    current = load_baseline(args.run_b, option="RUN_B")
    family_a, family_b = lookup(baseline, FAMILY_PATH), lookup(current, FAMILY_PATH)
    if family_a is not None and family_b is not None and family_a != family_b:
        print(family_table(baseline, current))
        return EXIT_OK
    result = compare_runs(
        baseline,
        current,
        threshold=parse_threshold(args.threshold, "--threshold"),
        per_stage=parse_stage_thresholds(_stage_pairs(args.stage_threshold), "--stage-threshold"),
        force=args.force,
        min_pages=parse_min_pages(args.min_pages, "--min-pages"),
        inconclusive=parse_inconclusive(args.inconclusive, "--inconclusive"),
        force_hint="--force",
    )
    print(result.markdown())
    return EXIT_REGRESSION if result.failed else EXIT_OK


def family_table(run_a: Mapping[str, Any], run_b: Mapping[str, Any]) -> str:
    """Side by side medians of two runs of different model families: no ratios judged, no verdicts."""
    label_a, label_b = _label(run_a, "A"), _label(run_b, "B")
    stages_a = (run_a.get("aggregates") or {}).get("stage_ms") or {}
    stages_b = (run_b.get("aggregates") or {}).get("stage_ms") or {}
    names = [PREFILL, VISION, *_merged_substages(stages_a, stages_b), DECODE]
    rows = []
    for name in names:
        a, b = stages_a.get(name) or {}, stages_b.get(name) or {}
        if a or b:
            rows.append((name, fmt(a.get("p50")), fmt(b.get("p50")), _ratio(a.get("p50"), b.get("p50"))))
    for metric in LATENCY_METRICS:
        a, b = (lookup(run, ("aggregates", f"{metric}_ms")) or {} for run in (run_a, run_b))
        if a.get("count") or b.get("count"):
            rows.append((metric, fmt(a.get("p50")), fmt(b.get("p50")), _ratio(a.get("p50"), b.get("p50"))))
    for label, key in THROUGHPUT_ROWS:
        a, b = (lookup(run, ("aggregates", "throughput", key)) for run in (run_a, run_b))
        rows.append((label, fmt(a, RATE_DIGITS), fmt(b, RATE_DIGITS), _ratio(a, b)))
    heading = (
        f"**Family comparison** ({label_a} vs {label_b}): different models, so no regression verdict; "
        "p50 per stage, times in ms. Sub-stages differ between families (a stage one family lacks shows n/a)."
    )
    return heading + "\n\n" + table(("Stage", label_a, label_b, "B / A"), rows)


def _merged_substages(stages_a: Mapping[str, Any], stages_b: Mapping[str, Any]) -> list[str]:
    """Both runs' sub-stages in pipeline order, a stage of B that A lacks placed before B's next
    stage that A has: v1 (sam, clip, projector) and v2 (sam, encoder, projector) give sam, clip,
    encoder, projector, so each family's vision encoder sits beside the other's."""
    outer = (PREFILL, VISION, DECODE)
    merged = [name for name in stages_a if name not in outer]
    others = [name for name in stages_b if name not in outer]
    for index, name in enumerate(others):
        if name in merged:
            continue
        following = next((n for n in others[index + 1:] if n in merged), None)
        merged.insert(merged.index(following) if following else len(merged), name)
    return merged


def _label(run: Mapping[str, Any], fallback: str) -> str:
    model = lookup(run, ("config", "model")) or {}
    parts = [str(model[key]) for key in ("family", "size") if model.get(key) is not None]
    return f"{fallback}: {' '.join(parts)}" if parts else fallback


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.{RATIO_DIGITS}f}" if a and b is not None else MISSING


def _stage_pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or not stage.strip():
            raise DsocrError(f"--stage-threshold={item!r}: expected STAGE=PCT, e.g. decode=5%")
        pairs[stage.strip()] = value
    return pairs
