"""Stage direct_inference: each sampled page through the engine, no profiler, timed by pytest-benchmark."""

import pytest

STAGE = "direct_inference"


@pytest.mark.direct_inference
def test_direct_inference(dsocr_sample, dsocr_config, dsocr_measure, benchmark):
    if not dsocr_config.pipeline.direct_inference.enable:
        pytest.skip("pipeline.direct_inference.enable is false")
    runs = dsocr_measure(dsocr_sample, stage=STAGE, benchmark=benchmark)
    assert runs and all(run.tokens >= 1 for run in runs)
