"""Analytic matmul FLOPs and parameters against the torch module (FlopCounterMode)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_dsocr.analytic.crosscheck import (  # noqa: E402
    CROSSCHECK_STAGES,
    count_flops,
    crosscheck,
    module_params,
)
from pytest_dsocr.analytic.model import DeepseekOCRCostModel  # noqa: E402
from pytest_dsocr.analytic.workload import workload_for_grid  # noqa: E402
from pytest_dsocr.models import build_model  # noqa: E402
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY  # noqa: E402

TOLERANCE = 0.01


@pytest.fixture(scope="module")
def tiny_cpu():
    return build_model("deepseek_ocr", "tiny", device="cpu")


def _assert_agree(rows):
    assert [r.stage for r in rows] == list(CROSSCHECK_STAGES)
    for row in rows:
        assert row.counted > 0, f"{row.stage}: FlopCounterMode counted nothing"
        assert abs(row.ratio - 1) <= TOLERANCE, f"{row.stage}: analytic {row.analytic} vs counted {row.counted}"


def test_tiny_on_cpu_agrees_within_one_percent(tiny_cpu):
    # Small views keep it fast; a 256 px crop pads its 16 x 16 patches to two 14-wide windows a
    # side, so the padded-window FLOPs are checked too. Two crops, one prompt, one decode step.
    wl = workload_for_grid(TINY, 512, 256, (2, 1), text_tokens=7)
    _assert_agree(crosscheck(tiny_cpu, DeepseekOCRCostModel(TINY), wl))


def test_tiny_params_exact(tiny_cpu):
    assert module_params(tiny_cpu) == DeepseekOCRCostModel(TINY).params


def test_tiny_on_meta_default_views_and_batch():
    # meta runs the same module code without memory: the vendor's 1024 + 640 views, batch 2
    module = build_model("deepseek_ocr", "tiny", device="meta", experts_implementation="batched_mm")
    wl = workload_for_grid(TINY, 1024, 640, (3, 2), batch=2)
    _assert_agree(crosscheck(module, DeepseekOCRCostModel(TINY), wl))


def test_full_on_meta_params_and_flops():
    module = build_model("deepseek_ocr", "full", device="meta", experts_implementation="batched_mm")
    assert module_params(module) == DeepseekOCRCostModel(FULL).params == 3_336_106_240
    _assert_agree(crosscheck(module, DeepseekOCRCostModel(FULL), workload_for_grid(FULL, 1024, 640, (2, 3))))


def test_cpu_sdpa_is_counted():
    # stock FlopCounterMode counts 0 for the CPU flash kernel; ours counts QK^T + AV
    q = torch.randn(1, 2, 8, 4)
    flops, _ = count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert flops == 2 * 2 * (2 * 8 * 8 * 4)
