"""Sweeps: one cost model reused across points gives exactly a fresh model's numbers; files."""

from __future__ import annotations

import builtins
import csv

import numpy as np
import pytest

from pytest_dsocr.analytic.deepseek_ocr import ANALYTIC
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.sweeps import (
    SWEEPS,
    SweepPoints,
    SweepSettings,
    rebuild_per_point,
    run_sweeps,
    write_sweeps,
)
from pytest_dsocr.analytic.workload import candidate_grids, workload_for_grid
from pytest_dsocr.hardware import get_hardware
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for col in a[name]:
            assert np.array_equal(np.asarray(a[name][col]), np.asarray(b[name][col])), (name, col)


@pytest.mark.parametrize("spec", [FULL, TINY], ids=["full", "tiny"])
@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_reuse_equals_fresh_model_per_point(spec, attention):
    points = SweepPoints.build(spec, candidate_grids(9), context_lengths=[1, 500, 4096], decode_steps=[1, 7, 300])
    settings = SweepSettings(attention=attention, hardware=get_hardware("h100_sxm"))
    model = DeepseekOCRCostModel(spec)
    first = run_sweeps(ANALYTIC, model, points, settings)
    again = run_sweeps(ANALYTIC, model, points, settings)  # warm caches give the same numbers
    _equal(first, rebuild_per_point(ANALYTIC, spec.name, points, settings))
    _equal(first, again)


def test_sweep_point_equals_stage_costs_of_that_workload():
    points = SweepPoints.build(FULL, candidate_grids(9), context_lengths=[913], decode_steps=[63])
    results = run_sweeps(ANALYTIC, DeepseekOCRCostModel(FULL), points, SweepSettings())
    row = points.grids.index((2, 3))
    stages = DeepseekOCRCostModel(FULL).stages(workload_for_grid(FULL, 1024, 640, (2, 3), decode_steps=63))
    assert results["vision_crops"]["vision_flops"][row] == stages["vision"].flops
    assert results["vision_prefill"]["prefill_bytes"][row] == stages["prefill"].bytes
    assert results["vision_prefill"]["prefill_tokens"][row] == 913
    assert results["decode"]["decode_bytes"][0] == stages["decode"].bytes
    assert results["decode"]["step_flops"][0] == stages["decode_step"].flops


def test_default_points():
    points = SweepPoints.build(FULL, candidate_grids(9))
    assert points.grids[0] == (1, 1) and list(points.grids[1:]) == candidate_grids(9)
    assert len(points.grids) == 23  # global only + the 22 grids of 2..9 tiles
    assert (points.contexts + points.steps <= FULL.text.max_position_embeddings).all()
    assert {1, 4096} <= set(points.steps.tolist()) and points.contexts.min() == 128


def test_csv_always_plot_when_matplotlib(tmp_path):
    points = SweepPoints.build(TINY, candidate_grids(4), context_lengths=[64, 128], decode_steps=[1, 8])
    results = run_sweeps(ANALYTIC, DeepseekOCRCostModel(TINY), points, SweepSettings())
    paths, notes = write_sweeps(results, tmp_path)
    for name in SWEEPS:
        rows = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
        assert len(rows) == len(np.atleast_1d(next(iter(results[name].values()))))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert notes and "matplotlib" in notes[0]
    else:
        assert all((tmp_path / f"{name}.png").is_file() for name in SWEEPS) and not notes


def test_missing_matplotlib_skips_plot_not_csv(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    results = run_sweeps(ANALYTIC, DeepseekOCRCostModel(TINY), SweepPoints.build(TINY, candidate_grids(3), [64], [1]), SweepSettings())
    paths, notes = write_sweeps(results, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.csv" for n in SWEEPS)
    assert "matplotlib is not installed" in notes[0]
    assert not list(tmp_path.glob("*.png"))


def test_floor_columns_only_with_hardware():
    points = SweepPoints.build(TINY, candidate_grids(2), [64], [1])
    without = run_sweeps(ANALYTIC, DeepseekOCRCostModel(TINY), points, SweepSettings())
    assert not any(col.endswith("_floor_ms") for cols in without.values() for col in cols)
    hw = get_hardware("h100_sxm")
    with_hw = run_sweeps(ANALYTIC, DeepseekOCRCostModel(TINY), points, SweepSettings(hardware=hw))
    d = with_hw["decode"]
    # floor = max(FLOPs / peak, bytes / bandwidth)
    expected = max(d["step_flops"][0] / 989.5e12, d["step_bytes"][0] / 3350e9) * 1e3
    assert d["step_floor_ms"][0] == pytest.approx(expected)
