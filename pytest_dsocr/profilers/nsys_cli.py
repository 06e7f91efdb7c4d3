"""``python -m pytest_dsocr nsys-report FILE [--run-dir DIR]``: fold an Nsight Systems report
into GPU time per DeepSeek-OCR stage (``DIR/nsys/summary.md``, ``summary.json`` and the ``nsys``
section of ``DIR/metrics.json`` when that file exists)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_dsocr.profilers.nsys import STAGE, nsys_report

DEFAULT_TOP_K = 10


def default_run_dir(report: Path) -> Path:
    """The run a report belongs to: ``<run>/nsys/report.nsys-rep`` -> ``<run>``, else its folder."""
    folder = report if report.is_dir() else report.parent
    return folder.parent if folder.name == STAGE else folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path,
                        help=".nsys-rep report, or the path prefix of several (one per capture range)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run directory to write nsys/ into and whose metrics.json gains `nsys` "
                             "(default: the run the report lies in, else the report's folder)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="kernels listed per stage")
    parser.add_argument("--nsys", default=None, help="nsys executable (default: nsys on PATH)")


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or default_run_dir(args.file)
    section = nsys_report(args.file, run_dir, nsys=args.nsys, top_k=args.top_k)
    for stage, data in section["stages"].items():
        per = data["gpu_ms_per_inference"]
        print(f"{stage:>10}: {data['gpu_ms']:.3f} GPU ms"
              + (f" ({per:.3f} per inference)" if per is not None else ""))
    print(f"wrote {run_dir / STAGE / 'summary.md'}")
    return 0
