"""The DeepSeek-OCR-2 cost model: encoder terms by hand, v1's shared terms reused, parameters and
FlopCounterMode agreement per stage, and the static_analysis and sweep stages for v2."""

import csv

import numpy as np
import pytest

from pytest_dsocr.analytic import static, sweeps
from pytest_dsocr.analytic.crosscheck import module_params
from pytest_dsocr.analytic.deepseek_ocr2 import (
    CROSSCHECK_STAGES,
    DeepseekOCR2CostModel,
    EncoderCost,
    crosscheck,
    workload_for_grid,
    workload_for_grids,
)
from pytest_dsocr.analytic.model import DecoderCost, DeepseekOCRCostModel, SamCost
from pytest_dsocr.analytic.workload import Workload
from pytest_dsocr.config import load_config
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr import spec as v1_spec
from pytest_dsocr.models.deepseek_ocr2.processing import (
    ViewSettings,
    candidate_grids,
    image_token_count,
)
from pytest_dsocr.models.deepseek_ocr2.spec import FULL, TINY
from pytest_dsocr.records import ImageRun

VIEWS = ViewSettings.from_model_config(1024, 768, True, 6)
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def tiny_cost():
    return DeepseekOCR2CostModel(TINY)


def test_encoder_layer_matmul_flops_by_hand():
    """Tiny encoder (width 128, 4 heads of 32, 2 KV heads, MLP 384) on one 768 px view:
    12x12 SAM features + 144 queries = 288 tokens."""
    tokens, w, mlp = 288, 128, 384
    linears = 2 * tokens * (w * 128 + 2 * w * 64 + 128 * w + 3 * w * mlp)  # q, k, v, o, gate/up/down
    attention = 2 * 2 * 4 * tokens * tokens * 32  # QK^T and AV over the full 288 x 288 rectangle
    layers = EncoderCost(TINY.encoder).layers(side=12, batch=1, mode="flash", nbytes=4)
    layer = next(lc for lc in layers if lc.name == "encoder.layer")
    assert layer.count == 2
    assert layer.cost.matmul_flops == linears + attention
    # parameters: norms, biased q/k/v, o, MLP; queries of both view sides; final norm
    per_layer = 2 * w + (w * 128 + 128) + 2 * (w * 64 + 64) + 128 * w + 3 * w * mlp
    assert layer.params == per_layer
    assert EncoderCost(TINY.encoder).params == (144 + 256) * w + 2 * per_layer + w


def test_shared_parts_are_v1s_terms(tiny_cost):
    """SAM and the decoder are v1's cost objects; prefill and decode equal v1's for the same tokens."""
    assert isinstance(tiny_cost, DeepseekOCRCostModel)
    assert type(tiny_cost.sam) is SamCost and type(tiny_cost.decoder) is DecoderCost
    v1 = DeepseekOCRCostModel(v1_spec.TINY)  # same decoder spec as v2 tiny
    wl = Workload(image_tokens=977, text_tokens=12, decode_steps=9, dtype_bytes=4)
    assert tiny_cost.prefill(wl) == v1.prefill(wl)
    assert tiny_cost.decode(989, 9, 1, "flash", 4) == v1.decode(989, 9, 1, "flash", 4)


def test_stages_name_v2_parts_and_nest(tiny_cost):
    wl = workload_for_grid(TINY, VIEWS.base_size, VIEWS.tile_size, (2, 3), text_tokens=12, decode_steps=4,
                           dtype_bytes=4)
    assert wl.image_tokens == 256 + 6 * 144 + 1 == image_token_count(TINY, VIEWS, (2, 3))
    stages = tiny_cost.stages(wl)
    assert list(stages)[:3] == ["sam", "encoder", "projector"] and "clip" not in stages
    parts = sum(stages[name].flops for name in ("sam", "encoder", "projector"))
    assert stages["vision"].flops == parts
    # the global view alone costs less than with six tiles
    alone = tiny_cost.stages(workload_for_grid(
        TINY, VIEWS.base_size, VIEWS.tile_size, (1, 1), text_tokens=12, dtype_bytes=4))
    assert alone["encoder"].flops < stages["encoder"].flops


def test_array_workload_equals_scalar_ones(tiny_cost):
    grids = [(1, 1), *candidate_grids(6)]
    together = tiny_cost.vision(workload_for_grids(TINY, VIEWS.base_size, VIEWS.tile_size, grids, dtype_bytes=2))
    for index, grid in enumerate(grids):
        alone = tiny_cost.vision(workload_for_grid(TINY, VIEWS.base_size, VIEWS.tile_size, grid, dtype_bytes=2))
        for name in ("sam", "encoder", "projector", "vision"):
            assert np.asarray(together[name].bytes)[index] == alone[name].bytes, (grid, name)
            assert np.asarray(together[name].flops)[index] == alone[name].flops, (grid, name)


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_parameters_equal_the_module(size):
    module = build_model("deepseek_ocr2", size, device="meta")
    assert DeepseekOCR2CostModel({"tiny": TINY, "full": FULL}[size]).params == module_params(module)


@pytest.mark.parametrize(("device", "grid"), [("meta", (1, 1)), ("meta", (2, 3)), ("cpu", (1, 1))])
def test_flop_counter_agrees_per_stage(tiny_cost, device, grid):
    module = build_model("deepseek_ocr2", "tiny", device=device, experts_implementation="batched_mm")
    wl = workload_for_grid(TINY, VIEWS.base_size, VIEWS.tile_size, grid, text_tokens=12, decode_steps=3,
                           dtype_bytes=4)
    rows = crosscheck(module, tiny_cost, wl)
    assert [row.stage for row in rows] == list(CROSSCHECK_STAGES)
    for row in rows:
        assert abs(row.ratio - 1) <= TOLERANCE, (row.stage, row.analytic, row.counted)
        assert row.counted > 0, row.stage


def v2_config(*overrides):
    return load_config(overrides=["model=deepseek_ocr2/tiny", *overrides])


def test_static_analysis_stage_for_v2(tmp_path):
    result = static.run_static_analysis(v2_config("infer.max_new_tokens=8"), tmp_path)
    report = result.report
    assert report["model"] == {"family": "deepseek_ocr2", "size": "tiny", "params": DeepseekOCR2CostModel(TINY).params}
    assert list(report["stages"])[:3] == ["sam", "encoder", "projector"]
    workload = report["workload"]
    assert workload["crop_grid"] == [2, 3] and workload["image_tokens"] == 256 + 6 * 144 + 1
    assert (workload["base_size"], workload["image_size"], workload["decode_steps"]) == (1024, 768, 7)
    counter = report["flop_counter"]
    assert counter["within_tolerance"] and counter["module_params"] == counter["analytic_params"]
    assert [row["stage"] for row in counter["stages"]] == list(CROSSCHECK_STAGES)
    assert {p.name for p in result.paths} == {static.JSON_FILE, static.MARKDOWN_FILE}
    assert "| encoder |" in result.markdown and "clip" not in result.markdown
    assert "omitted" in result.efficiency  # no measured GPU runs


def test_sweep_stage_for_v2(tmp_path):
    cfg = v2_config("sweep.plots=false", "sweep.context_lengths=[256,1024]", "sweep.decode_steps=[1,8]")
    result = sweeps.run_sweep_stage(cfg, tmp_path)
    assert result.section["model_family"] == "deepseek_ocr2"
    with open(tmp_path / "vision_crops.csv") as handle:
        rows = list(csv.DictReader(handle))
    grids = [(int(r["grid_w"]), int(r["grid_h"])) for r in rows]
    assert grids == [(1, 1), *candidate_grids(6)]
    assert "encoder_flops" in rows[0] and "clip_flops" not in rows[0]
    assert [int(r["image_tokens"]) for r in rows] == [image_token_count(TINY, VIEWS, g) for g in grids]
    flops = [int(r["vision_flops"]) for r in rows]
    assert flops[0] < min(flops[1:])
    assert result.section["points"] == {"vision_crops": len(grids), "vision_prefill": len(grids), "decode": 4}


def test_efficiency_judges_the_encoder_of_gpu_runs(tiny_cost):
    from pytest_dsocr.analytic import efficiency as eff
    from pytest_dsocr.hardware import select_hardware

    sample = ImageRun(sample_id="p", image_path="/p.png", epoch=0, round=0, stage="direct_inference",
                      preprocess_ms=1.0, prefill_ms=40.0, decode_ms=80.0, vision_ms=30.0, ttft_ms=41.0, tokens=9,
                      prefill_len=1133, image_tokens=1121, crop_grid=(2, 3), device="cuda:0",
                      substage_ms={"sam": 20.0, "encoder": 8.0, "projector": 1.0})
    runs = [eff.Measured.from_run(sample)]
    section = eff.efficiency(tiny_cost, runs, select_hardware("h100_sxm"), "bfloat16", 1024, 768, 2, "flash")
    assert list(section["stages"]) == ["sam", "encoder", "projector", "vision", "prefill", "decode"]
    wl = workload_for_grid(TINY, VIEWS.base_size, VIEWS.tile_size, (2, 3), text_tokens=12, decode_steps=8, dtype_bytes=2)
    encoder = section["stages"]["encoder"]
    assert encoder["flops"] == tiny_cost.stages(wl)["encoder"].flops and encoder["measured_ms"] == 8.0
    assert encoder["primary"] == "mfu"
