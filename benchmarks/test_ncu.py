"""Stage ncu: each sampled page in a child process under Nsight Compute.

With --dsocr-profiler=ncu and ncu on PATH, the child is this page's direct_inference test, run once
per profiling.ncu.ranges entry (sam, clip, projector, the decoder's prefill, decode), and ncu
profiles up to launch_count kernels launched inside that range. The first max_samples pages are
profiled. Writes <run>/ncu/kernels.csv, kernels.md, raw/, reports/, logs/ and metrics.json `ncu`.
"""

from pathlib import Path

import pytest

from pytest_dsocr.profilers.tools import ncu_skip_reason, which

STAGE = "ncu"


def _on_cuda(dsocr_config) -> bool:
    import torch

    from pytest_dsocr.env import resolve_device

    return torch.cuda.is_available() and resolve_device(dsocr_config.model.device).type == "cuda"


@pytest.fixture(scope="module")
def ncu_runner(request, dsocr_config, dsocr_profiler, dsocr_run_dir, dsocr_collector):
    """Runs the children; skips when ncu is not selected, not installed or has no GPU."""
    reason = ncu_skip_reason(dsocr_profiler, cuda=_on_cuda(dsocr_config))
    if reason:
        pytest.skip(reason)
    from pytest_dsocr.profilers.ncu import DIRECT_TEST, NcuRunner

    config = request.config
    direct_test = str(Path(config.rootpath) / DIRECT_TEST.split("::")[0]) + "::" + DIRECT_TEST.split("::")[1]
    runner = NcuRunner(dsocr_config.profiling.ncu, dsocr_run_dir, Path(config.invocation_params.dir),
                       ncu=which("ncu"), config_file=config.getoption("--dsocr-config"),
                       overrides=list(config.getoption("--dsocr-set") or []), direct_test=direct_test)
    yield runner
    if runner.kernels:
        dsocr_collector.add_summary_section("Nsight Compute", runner.summary_markdown())


@pytest.mark.ncu
def test_ncu(ncu_runner, dsocr_sample, dsocr_collector):
    if ncu_runner.limit_reached():
        pytest.skip(f"profiling.ncu.max_samples={ncu_runner.preset.max_samples} pages already profiled "
                    "(kernels repeat across pages); raise it to profile more")
    result = ncu_runner.run_sample(dsocr_sample.test_id)
    if result.skip:
        pytest.skip(result.skip)
    if result.error:
        pytest.fail(result.error, pytrace=False)
    dsocr_collector.add_section(STAGE, ncu_runner.section())
    assert result.kernels
