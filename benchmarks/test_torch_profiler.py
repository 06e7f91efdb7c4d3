"""Stage torch_profiler: each sampled page through the engine under torch.profiler.

Writes <run>/torch_profiler/operators.md, stage_operators.md, operators.json, trace.json.gz,
pred/ (and viz/ with --dsocr-set output/torch=full: pipeline.torch_profiler.output), and the
metrics.json sections torch_profiler and profiler_overhead. Runs with --dsocr-profiler=torch, on
the CPU too.
"""

import pytest

from pytest_dsocr.profilers.tools import torch_skip_reason

STAGE = "torch_profiler"


@pytest.fixture(scope="module")
def torch_profiling(request, dsocr_config, dsocr_profiler, dsocr_run_dir, dsocr_collector):
    """The stage driver; skips before the model is built when the profiler is not selected."""
    reason = torch_skip_reason(dsocr_profiler)
    if reason:
        pytest.skip(reason)
    if not dsocr_config.pipeline.torch_profiler.enable:
        pytest.skip("pipeline.torch_profiler.enable is false")
    from pytest_dsocr.profilers.torch_profiler import TorchProfilerStage

    session = request.getfixturevalue("dsocr_session")
    stage = TorchProfilerStage(dsocr_config.profiling.torch, device=session.device, run_dir=dsocr_run_dir,
                               collector=dsocr_collector)
    yield stage
    stage.finish()


@pytest.mark.torch_profiler
def test_torch_profiler(torch_profiling, dsocr_sample, dsocr_config, benchmark, request):
    measure = request.getfixturevalue("dsocr_measure")
    with torch_profiling.profiling(dsocr_sample) as hooks:
        runs = measure(dsocr_sample, stage=STAGE, hooks=hooks, benchmark=benchmark)
    torch_profiling.baseline(dsocr_sample, request.getfixturevalue("dsocr_session"), dsocr_config.infer.rounds)
    torch_profiling.after_sample()
    assert runs and all(run.tokens >= 1 for run in runs)
