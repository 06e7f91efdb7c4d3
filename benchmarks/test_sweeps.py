"""Stage sweep: analytic vision cost per crop grid, vision + prefill per grid, decode per context
length and step count; one cost model, CSV (and PNG with matplotlib) under <run>/sweeps/."""

import pytest

from pytest_dsocr.analytic.sweeps import SWEEP_DIR, SWEEPS, run_sweep_stage


@pytest.mark.sweep
def test_sweeps(dsocr_config, dsocr_run_dir, dsocr_collector):
    result = run_sweep_stage(dsocr_config, dsocr_run_dir / SWEEP_DIR)
    dsocr_collector.add_section("sweep", result.section)
    for name in SWEEPS:
        assert (dsocr_run_dir / SWEEP_DIR / f"{name}.csv").is_file(), name
        assert result.section["points"][name] > 0, name
