"""Shared set-up of the perf scripts: a session on the embedded default or a chosen size/device."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pytest_dsocr.config import load_config
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.env import resolve_device
from pytest_dsocr.models import resolve_dtype
from pytest_dsocr.session import build_adapter
from pytest_dsocr.records import Sample
from pytest_dsocr.report.stats import percentile_interval, resample_statistic

CI_LEVEL = 0.95
N_BOOT = 2000
SEED = 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"], help="model size (random weights)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--page", default="page_005", help="bundled page name (page_001 .. page_006)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")


def build(args: argparse.Namespace):
    """(config, adapter, policy, sample) for the arguments."""
    # Random weights, as the --size help says: fixed-length timing runs, not stopped by a trained EOS.
    cfg = load_config(overrides=[f"model.size={args.size}", "model.weights=random", f"model.device={args.device}",
                                 f"model.dtype={args.dtype}", *args.set])
    device = resolve_device(cfg.model.device)
    adapter = build_adapter(cfg, device, resolve_dtype(cfg.model.dtype, device))
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=cfg.infer.no_repeat_ngram_size)
    pages = {p.stem: p for p in bundled_pages()}
    path = Path(args.page) if Path(args.page).is_file() else pages[args.page]
    return cfg, adapter, policy, Sample(image_path=path, epoch=0, index=0, sample_id=path.stem)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """Wall milliseconds of fn() with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3, result


def spread(values: list[float]) -> str:
    """min / median / max, the way every perf table here prints a figure."""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """Median and its 95 % bootstrap interval."""
    array = np.asarray(values, dtype=np.float64)
    resampled = resample_statistic(array, np.median, N_BOOT, np.random.default_rng(SEED))
    low, high = percentile_interval(resampled, CI_LEVEL)
    return float(np.median(array)), low, high


def ratio_interval(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Ratio of medians and its 95 % bootstrap interval.

    Arms measured in the same repeats (interleaved) are resampled as pairs, so slow spells that hit
    both arms cancel; unequal counts are resampled independently.
    """
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(SEED)
    if len(a) == len(b):
        idx = rng.integers(0, len(a), size=(N_BOOT, len(a)))
        resampled = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    else:
        resampled = (resample_statistic(a, np.median, N_BOOT, rng) / resample_statistic(b, np.median, N_BOOT, rng))
    low, high = percentile_interval(resampled, CI_LEVEL)
    return ratio, low, high


def fmt_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def judge(low: float, high: float, goal: float, at_most: bool) -> str:
    """MET when the whole 95 % interval meets the goal, MISSED when none of it does, else within noise."""
    if at_most:
        return "MET" if high <= goal else "MISSED" if low > goal else "within noise"
    return "MET" if low >= goal else "MISSED" if high < goal else "within noise"
