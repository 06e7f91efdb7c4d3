"""Stage static_analysis: analytic FLOPs/bytes per stage, FlopCounterMode cross-check, floor times on
the chosen GPU, and MFU/MBU of this session's measured runs (or of static_analysis.metrics)."""

import pytest

from pytest_dsocr.analytic.static import STAGE_DIR, metrics_section, run_static_analysis


@pytest.mark.static_analysis
def test_static_analysis(dsocr_config, dsocr_run_dir, dsocr_collector):
    result = run_static_analysis(dsocr_config, dsocr_run_dir / STAGE_DIR, records=dsocr_collector.iter_records())
    dsocr_collector.add_summary_section("Static Analysis", result.summary_markdown)
    dsocr_collector.add_section("efficiency", result.efficiency)  # the summary draws its table
    dsocr_collector.add_section(STAGE_DIR, metrics_section(result))
    counter = result.report["flop_counter"]
    if "skipped" not in counter:
        assert counter["within_tolerance"], (
            "analytic FLOPs or params disagree with FlopCounterMode on the module: "
            + ", ".join(f"{r['stage']} {r['ratio']:.4f}" for r in counter["stages"])
            + f"; params module {counter['module_params']} vs analytic {counter['analytic_params']}")
