"""What differs between the supported transformers versions, asserted per version.

The boundaries are written here by hand (from transformers' release notes and code) so that
``pytest_dsocr.compat``'s feature detection is checked against an independent statement.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

from pytest_dsocr import compat
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr.spec import TINY

INSTALLED = Version(transformers.__version__)
# 5.24 renamed the KV-cache argument past_key_values -> cache and keeps MoE router weights
# (``mlp.gate.weight``) in float32 under bf16/fp16 (_keep_in_fp32_modules_strict).
CACHE_RENAMED_IN = Version("5.24")
ROUTER_FP32_SINCE = Version("5.24")
ROUTER_SUFFIX = "mlp.gate.weight"
FAMILIES = ("deepseek_ocr", "deepseek_ocr2")


def expected_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    if name.endswith(ROUTER_SUFFIX) and model_dtype in (torch.bfloat16, torch.float16) \
            and INSTALLED >= ROUTER_FP32_SINCE:
        return torch.float32
    return model_dtype


def test_cache_argument_name_follows_the_installed_version():
    assert compat.CACHE_ARG == ("cache" if INSTALLED >= CACHE_RENAMED_IN else "past_key_values")


def test_router_dtype_follows_the_installed_version():
    fp32 = INSTALLED >= ROUTER_FP32_SINCE
    assert compat.router_weight_dtype(torch.bfloat16) == (torch.float32 if fp32 else torch.bfloat16)
    assert compat.router_weight_dtype(torch.float16) == (torch.float32 if fp32 else torch.float16)
    assert compat.router_weight_dtype(torch.float32) == torch.float32
    assert compat.router_weight_bytes(2) == (4 if fp32 else 2)
    assert compat.router_weight_bytes(4) == 4


def test_take_cache_accepts_either_name_once():
    marker = object()
    assert compat.take_cache({"past_key_values": marker}) is marker
    assert compat.take_cache({"cache": marker}) is marker
    kwargs = {"cache": None, "past_key_values": marker, "other": 1}
    assert compat.take_cache(kwargs) is marker and kwargs == {"other": 1}
    with pytest.raises(TypeError, match="both"):
        compat.take_cache({"cache": marker, "past_key_values": object()})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_builds_have_the_dtypes_transformers_intends(family, dtype):
    model = build_model(family, "tiny", dtype=dtype)
    routers = 0
    for name, param in model.named_parameters():
        assert param.dtype == expected_dtype(name, dtype), name
        routers += name.endswith(ROUTER_SUFFIX)
    moe_layers = TINY.text.num_hidden_layers - TINY.text.first_k_dense_replace
    assert routers == moe_layers


def test_v2_checkpoint_loads_with_the_intended_dtypes(tmp_path):
    """transformers' from_pretrained applies its keep-in-fp32 plan; ours must agree with it."""
    build_model("deepseek_ocr2", "tiny").save_pretrained(tmp_path / "ckpt")
    loaded = build_model("deepseek_ocr2", "tiny", path=str(tmp_path / "ckpt"), dtype=torch.bfloat16)
    for name, param in loaded.named_parameters():
        assert param.dtype == expected_dtype(name, torch.bfloat16), name


def test_v1_checkpoint_loads_with_the_intended_dtypes(tmp_path):
    from pytest_dsocr.models.deepseek_ocr.checkpoint import save_checkpoint

    save_checkpoint(build_model("deepseek_ocr", "tiny"), tmp_path / "ckpt")
    loaded = build_model("deepseek_ocr", "tiny", path=str(tmp_path / "ckpt"), dtype=torch.bfloat16)
    for name, param in loaded.named_parameters():
        assert param.dtype == expected_dtype(name, torch.bfloat16), name


def test_cost_model_weight_bytes_are_the_modules_bytes():
    """Per decoder layer, the analytic weight bytes of a pass that touches every expert equal the
    bytes the bf16 module really stores (router in float32 where transformers keeps it so)."""
    model = build_model("deepseek_ocr", "tiny", dtype=torch.bfloat16)
    decoder = DeepseekOCRCostModel(TINY).decoder
    layers = decoder.layers(1, 64, 64, "flash", 2)  # 64 tokens x 2 experts: every expert hit
    modules = model.model.language_model.layers

    def stored(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    dense, moe = modules[0], modules[TINY.text.first_k_dense_replace]
    by_name = {layer.name: layer for layer in layers}
    assert by_name["decoder.layer.dense"].cost.weight_bytes == stored(dense)
    assert by_name["decoder.layer.moe"].cost.weight_bytes == stored(moe)
    assert by_name["decoder.layer.moe"].params == sum(p.numel() for p in moe.parameters())
