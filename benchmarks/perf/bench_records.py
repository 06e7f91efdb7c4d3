"""Cost of recording a long run: 100,000 synthetic samples through the collector.

Per sample the collector appends one line to records.jsonl and, at most every
``INTERIM_INTERVAL_S``, rewrites the interim metrics.json and summary from running
aggregates; the session end derives the full files from all records. This script measures,
on this machine:

- the per-sample cost of ``Collector.add_runs`` (median, p99, max) over ``--samples`` records;
- the final aggregation (``Collector.finish``: full metrics.json, summary, report.md);
- the peak resident memory of the process;

and, side by side at a size it can finish, the previous design that rebuilt the full
metrics.json and summary after every sample. Goals: median and max per-sample flush <= 5 ms,
final aggregation <= 10 s, peak memory <= 500 MB. A missed goal prints MISSED and the exit
status is 1.

    python benchmarks/perf/bench_records.py [--samples 100000] [--old-samples 1000]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_dsocr.collector import Collector
from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.metrics import build_metrics, write_metrics
from pytest_dsocr.report.summary import render_stakeholder_summary
from pytest_dsocr.stages import StageTree

FLUSH_GOAL_MS = 5.0
FINAL_GOAL_S = 10.0
MEMORY_GOAL_MB = 500.0
TOKENS = 64  # generated tokens per synthetic record (their ids are stored, as real records do)
TEXT = "<|ref|>text<|/ref|><|det|>[[64, 120, 930, 240]]<|/det|>\nQuarterly throughput report " * 3
CONFIG = {"model": {"family": "deepseek_ocr", "size": "tiny"}, "infer": {"warmup_rounds": 1, "rounds": 1}}
TREE = StageTree(("sam", "clip", "projector"))


def synthetic_run(index: int, rng: random.Random) -> ImageRun:
    prefill = rng.uniform(400, 900)
    vision = prefill * 0.95
    return ImageRun(
        sample_id=f"page_{index % 1355:05d}", image_path=f"/data/omnidocbench/images/page_{index % 1355:05d}.jpg",
        epoch=index // 1355, round=0, stage="direct_inference", preprocess_ms=rng.uniform(5, 30),
        prefill_ms=prefill, decode_ms=rng.uniform(200, 400), vision_ms=vision, ttft_ms=prefill + 10, tokens=TOKENS,
        prefill_len=939, image_tokens=903, crop_grid=(2, 3), text_raw=TEXT,
        substage_ms={"sam": vision * 0.9, "clip": vision * 0.08, "projector": vision * 0.01},
        finish_reason="length", token_ids=tuple(rng.randrange(1024) for _ in range(TOKENS)),
    )


def collector(run_dir: Path) -> Collector:
    return Collector(lambda: run_dir, CONFIG, lambda: {"device": "cpu"}, lambda: {}, {"samples": 0}, tree=TREE)


def per_sample_costs(samples: int, run_dir: Path) -> tuple[list[float], float, Collector]:
    rng = random.Random(0)
    c = collector(run_dir)
    costs = []
    for index in range(samples):
        run = synthetic_run(index, rng)
        start = time.perf_counter()
        c.add_runs([run])
        costs.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    c.finish(complete=True)
    return costs, time.perf_counter() - start, c


def old_per_sample_costs(samples: int, run_dir: Path) -> list[float]:
    """The previous design: the full metrics.json and summary rebuilt after every sample."""
    rng = random.Random(0)
    records, costs = [], []
    for index in range(samples):
        records.append(synthetic_run(index, rng))
        start = time.perf_counter()
        metrics = build_metrics(records, [], env={"device": "cpu"}, config=CONFIG, tree=TREE, complete=False)
        write_metrics(run_dir, metrics)
        (run_dir / "stakeholder_summary.md").write_text(render_stakeholder_summary(metrics))
        costs.append((time.perf_counter() - start) * 1e3)
    return costs


def describe(costs: list[float]) -> str:
    ordered = sorted(costs)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {statistics.median(costs):.3f} ms, p99 {p99:.3f} ms, max {max(costs):.3f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="records through the collector")
    parser.add_argument("--old-samples", type=int, default=1000, help="records through the old rebuild-per-sample")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old = old_per_sample_costs(args.old_samples, Path(tmp) / "old") if args.old_samples else []
        gc.collect()
        costs, final_s, _ = per_sample_costs(args.samples, Path(tmp) / "new")
        records_mb = (Path(tmp) / "new" / "records.jsonl").stat().st_size / 1e6
        metrics_mb = (Path(tmp) / "new" / "metrics.json").stat().st_size / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"records through the collector: {args.samples:,} (records.jsonl {records_mb:.0f} MB, "
          f"final metrics.json {metrics_mb:.0f} MB)")
    print(f"  per-sample flush: {describe(costs)}")
    print(f"  final aggregation: {final_s:.2f} s")
    print(f"  peak RSS of this process: {peak_mb:.0f} MB")
    if old:
        first, last = statistics.median(old[:50]), statistics.median(old[-50:])
        print(f"previous design (full rebuild per sample), {args.old_samples:,} records:")
        print(f"  per-sample flush: {describe(old)}; median of the first 50 {first:.2f} ms, "
              f"of the last 50 {last:.2f} ms (grows with the run)")
        print(f"  at {args.old_samples:,} records one flush costs {last / statistics.median(costs):.0f}x the "
              f"collector's median")
    checks = [
        ("median per-sample flush", statistics.median(costs), FLUSH_GOAL_MS, "ms"),
        ("max per-sample flush", max(costs), FLUSH_GOAL_MS, "ms"),
        ("final aggregation", final_s, FINAL_GOAL_S, "s"),
        ("peak memory", peak_mb, MEMORY_GOAL_MB, "MB"),
    ]
    missed = False
    for name, value, goal, unit in checks:
        met = value <= goal
        missed |= not met
        print(f"{'MET   ' if met else 'MISSED'} {name}: {value:.3f} {unit} (goal <= {goal:g} {unit})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
