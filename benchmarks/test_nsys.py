"""Stage nsys: each sampled page through the engine with the Nsight Systems capture open around
its measured rounds only (cudaProfilerStart/Stop), never around warmup rounds or the model load.

Runs under nsys: `nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi pytest benchmarks -m nsys`,
or `pytest benchmarks --dsocr-profiler=nsys`, which re-launches the selected tests under nsys with
the preset's flags and then writes <run>/nsys/summary.md and metrics.json `nsys`
(`python -m pytest_dsocr nsys-report FILE` does the same for any report).
"""

import pytest

from pytest_dsocr.profilers.tools import nsys_skip_reason

STAGE = "nsys"


def _on_cuda(dsocr_config) -> bool:
    import torch

    from pytest_dsocr.env import resolve_device

    return torch.cuda.is_available() and resolve_device(dsocr_config.model.device).type == "cuda"


@pytest.fixture(scope="module")
def nsys_capture(dsocr_config, dsocr_profiler, dsocr_collector):
    """The capture hooks; skips before the model is built when nsys is not there to record."""
    reason = nsys_skip_reason(dsocr_profiler, cuda=_on_cuda(dsocr_config))
    if reason:
        pytest.skip(reason)
    from pytest_dsocr.profilers.nsys import NsysHooks

    hooks = NsysHooks(rounds=dsocr_config.infer.rounds)
    yield hooks
    hooks.finish()
    dsocr_collector.add_section("nsys_capture", {
        "mode": hooks.mode, "capture_ranges": hooks.ranges,
        "captured_rounds": [{"sample": sample, "round": index} for sample, index in hooks.captured],
    })


@pytest.mark.nsys
def test_nsys(nsys_capture, dsocr_sample, benchmark, request):
    measure = request.getfixturevalue("dsocr_measure")
    try:
        runs = measure(dsocr_sample, stage=STAGE, hooks=nsys_capture, benchmark=benchmark)
    finally:
        nsys_capture.end_sample()
    assert runs and all(run.tokens >= 1 for run in runs)
