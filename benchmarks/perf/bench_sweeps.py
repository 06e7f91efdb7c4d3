"""Benchmark: the three default analytic sweeps, reusing one cost model vs rebuilding it per point.

Reuse: build the cost model from the spec once, evaluate every sweep as one array workload.
Rebuild: build a fresh cost model from the spec for every point and evaluate that point alone
(the honest equivalent of the per-point instantiation of the system we replace). Both start from
the spec and the sweep settings; both give identical numbers (checked here). Prints the median
times (min / median / max over repeats) of evaluation alone and end to end (with the CSV files),
and the ratio rebuild / reuse. Goal: all three sweeps together < 50 ms and >= 100x faster.

    python benchmarks/perf/bench_sweeps.py
    python benchmarks/perf/bench_sweeps.py --size tiny --hardware h100_sxm --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_dsocr.analytic.config import SweepConfig
from pytest_dsocr.analytic.deepseek_ocr import ANALYTIC
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.sweeps import (
    SweepPoints,
    SweepSettings,
    rebuild_per_point,
    run_sweeps,
    to_csv,
    write_sweeps,
)
from pytest_dsocr.hardware import get_hardware
from pytest_dsocr.models.deepseek_ocr.spec import SPECS

GOAL_MS = 50.0
GOAL_RATIO = 100.0


def spread(values: list[float]) -> str:
    return f"{min(values):8.2f} / {statistics.median(values):8.2f} / {max(values):8.2f}"


def timed_ms(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=sorted(SPECS), help="model size whose spec is swept")
    parser.add_argument("--max-crops", type=int, default=9, help="largest crop grid (model.max_crops default)")
    parser.add_argument("--hardware", default=None, help="a conf/hardware name: adds floor-time columns")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of the reuse path")
    parser.add_argument("--rebuild-repeats", type=int, default=5, help="repeats of the rebuild path")
    args = parser.parse_args()

    spec = SPECS[args.size]
    defaults = SweepConfig()
    hw = get_hardware(args.hardware) if args.hardware else None
    settings = SweepSettings(text_tokens=defaults.text_tokens, attention=defaults.attention, hardware=hw)

    def points() -> SweepPoints:
        return SweepPoints.build(spec, ANALYTIC.candidate_grids(args.max_crops), defaults.context_lengths,
                                  defaults.decode_steps)

    def reuse():
        return run_sweeps(ANALYTIC, DeepseekOCRCostModel(spec), points(), settings)

    def rebuild():
        return rebuild_per_point(ANALYTIC, args.size, points(), settings)

    def reuse_text():
        return [to_csv(cols) for cols in reuse().values()]

    def rebuild_text():
        return [to_csv(cols) for cols in rebuild().values()]

    out = Path(tempfile.mkdtemp(prefix="bench_sweeps_"))

    def reuse_e2e():
        return write_sweeps(reuse(), out / "reuse", plots=False)

    def rebuild_e2e():
        return write_sweeps(rebuild(), out / "rebuild", plots=False)

    reuse()  # warm imports (numpy, the preprocessing module) outside the timings
    reuse_times, reused = timed_ms(reuse, args.repeats)
    rebuild_times, rebuilt = timed_ms(rebuild, args.rebuild_repeats)
    reuse_text_times, _ = timed_ms(reuse_text, args.repeats)
    rebuild_text_times, _ = timed_ms(rebuild_text, args.rebuild_repeats)
    reuse_e2e_times, _ = timed_ms(reuse_e2e, args.repeats)
    rebuild_e2e_times, _ = timed_ms(rebuild_e2e, args.rebuild_repeats)
    identical = all(np.array_equal(np.asarray(reused[name][col]), np.asarray(rebuilt[name][col]))
                    for name in reused for col in reused[name])
    same_files = all((out / "reuse" / f"{n}.csv").read_bytes() == (out / "rebuild" / f"{n}.csv").read_bytes()
                     for n in reused)

    counts = {name: len(np.atleast_1d(next(iter(cols.values())))) for name, cols in reused.items()}
    print(f"model {args.size}; points: " + ", ".join(f"{n} {c}" for n, c in counts.items())
          + f" ({sum(counts.values())} in all); floor columns: {hw.name if hw else 'none'}")
    print(f"{'path':34s} {'min / median / max ms':>30s}")
    print(f"{'reuse: evaluate':34s} {spread(reuse_times)}")
    print(f"{'rebuild per point: evaluate':34s} {spread(rebuild_times)}")
    print(f"{'reuse: + CSV text':34s} {spread(reuse_text_times)}")
    print(f"{'rebuild per point: + CSV text':34s} {spread(rebuild_text_times)}")
    print(f"{'reuse: end to end (+ CSV files)':34s} {spread(reuse_e2e_times)}")
    print(f"{'rebuild per point: end to end':34s} {spread(rebuild_e2e_times)}")
    ratios = [statistics.median(b) / statistics.median(a) for a, b in (
        (reuse_times, rebuild_times), (reuse_text_times, rebuild_text_times), (reuse_e2e_times, rebuild_e2e_times))]
    total = statistics.median(reuse_e2e_times)
    print(f"ratio rebuild / reuse: evaluate {ratios[0]:.0f}x, + CSV text {ratios[1]:.0f}x, end to end "
          f"{ratios[2]:.0f}x (goal >= {GOAL_RATIO:.0f}x; the files are written atomically with fsync)")
    print(f"all three sweeps end to end: {total:.2f} ms (goal < {GOAL_MS:.0f} ms)")
    print(f"identical numbers: {'yes' if identical else 'NO'}; identical CSV files: {'yes' if same_files else 'NO'}")
    return 0 if identical and same_files else 1


if __name__ == "__main__":
    raise SystemExit(main())
