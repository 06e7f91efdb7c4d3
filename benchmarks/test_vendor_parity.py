"""Stage vendor_parity: our engine's tokens and boxes vs the model's own generate, per sampled page."""

import pytest

from pytest_dsocr.parity import check_sample, load_reference, render_report
from pytest_dsocr.atomic import atomic_write_text

STAGE = "vendor_parity"


@pytest.fixture(scope="session")
def parity_results(dsocr_collector, dsocr_run_dir):
    """Results of this session's parity checks; rewritten to report.md and metrics.json as they come."""
    results = []

    def add(result):
        results.append(result)
        atomic_write_text(dsocr_run_dir / STAGE / "report.md", render_report(results))
        dsocr_collector.add_section(STAGE, {
            "all_ok": all(r.ok for r in results),
            "samples": [r.to_json() for r in results],
        })

    return add


@pytest.fixture(scope="session")
def parity_reference(dsocr_config):
    path = dsocr_config.vendor_parity.reference
    return load_reference(path) if path else None


@pytest.mark.vendor_parity
def test_vendor_parity(dsocr_sample, dsocr_config, dsocr_session, parity_results, parity_reference):
    if not dsocr_config.pipeline.vendor_parity.enable:
        pytest.skip("pipeline.vendor_parity.enable is false")
    result = check_sample(dsocr_session, dsocr_sample, parity_reference)
    parity_results(result)
    assert result.tokens_equal, (
        f"{dsocr_sample.test_id}: tokens differ from generate at index {result.first_mismatch} "
        f"({result.tokens_ours} vs {result.tokens_reference} tokens)")
    assert result.boxes_equal, f"{dsocr_sample.test_id}: boxes differ ({result.boxes_ours} vs {result.boxes_reference})"
    if result.reference is not None:
        assert result.reference.ok, f"{dsocr_sample.test_id}: differs from the recorded reference: {result.reference}"
