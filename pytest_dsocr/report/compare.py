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

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.families import stage_tree
from pytest_dsocr.report.gate import (
    DEFAULT_INCONCLUSIVE,
    DEFAULT_MIN_PAGES,
    DEFAULT_THRESHOLD,
    INCONCLUSIVE_CHOICES,
    compare_runs,
    parse_inconclusive,
    parse_min_pages,
    parse_stage_thresholds,
    parse_threshold,
)
from pytest_dsocr.report.markdown import MISSING, RATE_DIGITS, RATIO_DIGITS, fmt, table
from pytest_dsocr.report.metrics import read_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.stages import LATENCY_METRICS, merge_trees

HELP = "compare two saved runs stage by stage (regression table; exit 1 on a regression)"
EXIT_OK, EXIT_REGRESSION = 0, 1
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
    baseline = read_metrics(args.run_a, option="RUN_A")
    current = read_metrics(args.run_b, option="RUN_B")
    if baseline.family is not None and current.family is not None and baseline.family != current.family:
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


def family_table(run_a: RunMetrics, run_b: RunMetrics) -> str:
    """Side by side medians of two runs of different model families: no ratios judged, no verdicts."""
    label_a, label_b = _label(run_a, "A"), _label(run_b, "B")
    stages_a, stages_b = run_a.aggregates.stage_ms, run_b.aggregates.stage_ms
    # Both families' stages in pipeline order (run A's order first): each vision encoder beside the other's.
    order = merge_trees([stage_tree(run_a.model.get("family")), stage_tree(run_b.model.get("family"))]).order
    names = [name for name in order if name in stages_a or name in stages_b]
    names += [name for name in (*stages_a, *stages_b) if name not in names]
    rows = []
    for name in dict.fromkeys(names):
        a, b = stages_a.get(name), stages_b.get(name)
        a50, b50 = (a.p50 if a else None), (b.p50 if b else None)
        rows.append((name, fmt(a50), fmt(b50), _ratio(a50, b50)))
    for metric in LATENCY_METRICS:
        a, b = run_a.aggregates.stat(metric), run_b.aggregates.stat(metric)
        if (a and a.count) or (b and b.count):
            rows.append((metric, fmt(a.p50 if a else None), fmt(b.p50 if b else None),
                         _ratio(a.p50 if a else None, b.p50 if b else None)))
    for label, key in THROUGHPUT_ROWS:
        a, b = getattr(run_a.aggregates.throughput, key), getattr(run_b.aggregates.throughput, key)
        rows.append((label, fmt(a, RATE_DIGITS), fmt(b, RATE_DIGITS), _ratio(a, b)))
    heading = (
        f"**Family comparison** ({label_a} vs {label_b}): different models, so no regression verdict; "
        "p50 per stage, times in ms. Sub-stages differ between families (a stage one family lacks shows n/a)."
    )
    return heading + "\n\n" + table(("Stage", label_a, label_b, "B / A"), rows)


def _label(run: RunMetrics, fallback: str) -> str:
    parts = [str(run.model[key]) for key in ("family", "size") if run.model.get(key) is not None]
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
