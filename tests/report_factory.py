"""Synthetic ImageRun records and metrics dicts for the report and gate tests (no model needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.metrics import build_metrics
from pytest_dsocr.report.model import RunMetrics

V1_SUBSTAGES = {"sam": 30.0, "clip": 25.0, "projector": 1.0}
# Pages of different crop grids take different times: page i costs (1 + i % 4) x the base.
PAGE_SPREAD = 4


def image_run(
    index: int = 0,
    *,
    stage: str = "direct_inference",
    worker: str = "main",
    device: str = "cpu",
    epoch: int = 0,
    round: int = 0,
    preprocess_ms: float = 5.0,
    prefill_ms: float = 100.0,
    decode_ms: float = 300.0,
    vision_ms: float = 60.0,
    tokens: int = 31,
    prefill_len: int = 300,
    image_tokens: int = 273,
    substage_ms: dict[str, float] | None = None,
) -> ImageRun:
    return ImageRun(
        sample_id=f"page_{index:03d}",
        image_path=f"/data/page_{index:03d}.png",
        epoch=epoch,
        round=round,
        stage=stage,
        preprocess_ms=preprocess_ms,
        prefill_ms=prefill_ms,
        decode_ms=decode_ms,
        vision_ms=vision_ms,
        ttft_ms=preprocess_ms + prefill_ms,
        tokens=tokens,
        prefill_len=prefill_len,
        image_tokens=image_tokens,
        crop_grid=(1, 1),
        substage_ms=dict(V1_SUBSTAGES if substage_ms is None else substage_ms),
        device=device,
        worker=worker,
    )


def noisy_runs(
    count: int,
    *,
    factor: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
    pages: bool = True,
    stage: str = "direct_inference",
    first_page: int = 0,
) -> list[ImageRun]:
    """``count`` runs whose every time is base x factor x (1 + noise * N(0, 1)).

    With ``pages`` the runs are pages of different sizes (1 to 4 x the base); without, all
    runs share one size. Run ``i`` is page ``first_page + i``: two runs with the same
    ``first_page`` measured the same pages (paired), with far-apart ones different pages.
    """
    rng = np.random.default_rng(seed)
    runs = []
    for index in range(count):
        scale = (1 + index % PAGE_SPREAD if pages else 1) * factor

        def ms(base: float, scale: float = scale) -> float:
            return float(base * scale * (1.0 + noise * rng.standard_normal()))

        runs.append(
            image_run(
                first_page + index,
                stage=stage,
                preprocess_ms=ms(5.0),
                prefill_ms=ms(100.0),
                decode_ms=ms(300.0),
                vision_ms=ms(60.0),
                prefill_len=300 + index % PAGE_SPREAD,
                substage_ms={name: ms(value) for name, value in V1_SUBSTAGES.items()},
            )
        )
    return runs


def make_metrics(
    records: Sequence[ImageRun],
    failures: Sequence[SampleFailure] = (),
    *,
    family: str = "deepseek_ocr",
    size: str = "tiny",
    device: str = "cpu",
    complete: bool = True,
    **kwargs,
) -> dict:
    """The json form (what metrics.json holds) of the metrics of ``records``."""
    config = {
        "model": {"family": family, "size": size, "base_size": 1024, "image_size": 640, "crop_mode": True,
                  "dtype": "float32", "device": device},
        "infer": {"max_new_tokens": 32, "warmup_rounds": 1, "rounds": 1},
        "dataset": {"sampling": {"num_epochs": 1}},
    }
    env = {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "device": device,
           "device_name": "x86_64" if device == "cpu" else "NVIDIA H100 80GB HBM3"}
    return build_metrics(list(records), list(failures), env=env, config=config, complete=complete, **kwargs).to_json()


def typed(metrics: dict | RunMetrics) -> RunMetrics:
    """The typed model of a metrics.json dict (what every reader of a run takes)."""
    return metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_json(metrics)


def page_rounds(
    prefill_ms: Sequence[Sequence[float]],
    *,
    first_page: int = 0,
    **fixed,
) -> list[ImageRun]:
    """Runs of pages given by their prefill times: ``prefill_ms[i]`` are page ``first_page + i``'s
    rounds. Every other time keeps :func:`image_run`'s constant default (or ``fixed``), so only
    prefill and the quantities made of it (ttft, e2e) differ between runs."""
    return [
        image_run(first_page + page, round=round_index, prefill_ms=float(ms), **fixed)
        for page, rounds in enumerate(prefill_ms)
        for round_index, ms in enumerate(rounds)
    ]
