"""Cost formulas on hand-computed cases, exact parameter counts, token and KV arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_dsocr.analytic import ops
from pytest_dsocr.analytic.model import STAGES, DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import Workload, workload_for_grid, workload_for_grids
from pytest_dsocr.compat import router_weight_bytes
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY

FULL_PARAMS = 3_336_106_240  # the public checkpoint's manifest


def test_linear_by_hand():
    # (3 x 4) @ (4 x 5): 2*3*4*5 = 120 FLOPs; bias adds 3*5 = 15; weights (4*5 + 5) * 2 B = 50;
    # activations read 3*4 and write 3*5 values: (12 + 15) * 2 B = 54
    c = ops.linear(3, 4, 5, True, 2)
    assert (c.matmul_flops, c.other_flops, c.weight_bytes, c.activation_bytes, c.kv_bytes) == (120, 15, 50, 54, 0)
    assert ops.linear(3, 4, 5, False, 2).other_flops == 0


def test_conv2d_by_hand():
    # 2 images 3 x 16 x 16, 8 filters 4x4 stride 4: out side (16 - 4)//4 + 1 = 4;
    # out elements 2*8*4*4 = 256; FLOPs 2 * 256 * 3*4*4 = 24576; bias 256;
    # weights (8*3*16 + 8) * 2 B = 784; activations (2*3*16*16 + 256) * 2 B = 3584
    c = ops.conv2d(2, 3, 8, 4, 4, 0, 16, True, 2)
    assert (c.matmul_flops, c.other_flops, c.weight_bytes, c.activation_bytes) == (24576, 256, 784, 3584)
    # 3x3 stride-2 pad-1 on a 64 side gives 32, then 16 (SAM's two downsampling convs)
    assert ops.conv_out(64, 3, 2, 1) == 32 and ops.conv_out(32, 3, 2, 1) == 16


def test_attention_by_hand():
    # 2 heads, 3 queries, 5 keys, head_dim 4: scores 2*3*5 = 30; QK^T and AV 2 * 2*30*4 = 480;
    # softmax 5 * 30 = 150; Q read + O write 2*2*3*4 * 2 B = 96; K, V read 2*2*5*4 * 2 B = 160
    flash = ops.attention(2, 3, 5, 4, "flash", 2)
    assert (flash.matmul_flops, flash.other_flops, flash.activation_bytes) == (480, 150, 96 + 160)
    # eager also writes S, reads S, writes P, reads P: 4 * 30 * 2 B = 240
    eager = ops.attention(2, 3, 5, 4, "eager", 2)
    assert eager.matmul_flops == flash.matmul_flops and eager.activation_bytes == 96 + 160 + 240
    # from a KV cache the K/V reads are KV traffic, not activations
    cached = ops.attention(2, 3, 5, 4, "flash", 2, kv_cached=True)
    assert (cached.activation_bytes, cached.kv_bytes) == (96, 160)
    # a materialised bias: read once by flash (30 * 2 B); eager also re-reads and re-writes S
    assert ops.attention(2, 3, 5, 4, "flash", 2, bias=True).activation_bytes == 256 + 60
    assert ops.attention(2, 3, 5, 4, "eager", 2, bias=True).activation_bytes == 256 + 240 + 60 + 120
    with pytest.raises(ValueError, match="attention mode"):
        ops.attention(2, 3, 5, 4, "sdpa", 2)


def test_decomposed_rel_pos_by_hand():
    # one head on a 2 x 3 grid, head_dim 4: 6 tokens; einsums 2*6*4*2 + 2*6*4*3 = 240;
    # bias 6*6 = 36 adds; bytes (6*(4 + 2 + 3) + 36) * 1 B = 90
    c = ops.decomposed_rel_pos(1, 2, 3, 4, 1)
    assert (c.matmul_flops, c.other_flops, c.activation_bytes) == (240, 36, 90)


def test_cost_arithmetic_and_arrays():
    a = ops.Cost(1, 2, 3, 4, 5)
    assert a + a == a * 2 == 2 * a == ops.Cost(2, 4, 6, 8, 10)
    assert (a * 3) - a == a * 2
    assert a.flops == 3 and a.bytes == 12
    tokens = np.array([1, 3])
    c = ops.linear(tokens, 4, 5, True, 2)
    assert c.matmul_flops.tolist() == [40, 120] and c.weight_bytes == 50


def test_sam_windows_pad_to_whole_windows():
    # tiny SAM (width 64, 4 heads, window 14) on a 256 px view: 16 x 16 patches pad to 28 x 28,
    # 4 windows; qkv + proj run on 784 padded tokens: 2*784*64*192 + 2*784*64*64 FLOPs
    sam = DeepseekOCRCostModel(TINY).sam
    grid = sam.grid(256)
    assert grid == 16
    window = sam._block(grid, 1, 14, "flash", 2)
    unpadded = sam._block(14, 1, 14, "flash", 2)  # exactly one window, no padding
    qkv_proj = 2 * 784 * 64 * 192 + 2 * 784 * 64 * 64
    attention = 4 * (4 * 4 * 196 * 196 * 16)  # 4 windows x (QK + AV) x 4 heads, head_dim 16
    rel_pos = 4 * (2 * 4 * 196 * 16 * 28)  # 4 windows x 4 heads, h + w = 28
    mlp = 2 * 256 * 64 * 256 * 2  # 256 real tokens through lin1 and lin2
    assert window.matmul_flops == qkv_proj + attention + rel_pos + mlp
    assert unpadded.matmul_flops < window.matmul_flops


def test_moe_reads_only_touched_experts():
    # tiny decoder: H=128, expert width 64, 8 experts, 2 per token, 2 shared.
    # router 8*128 weights (in float32 where transformers keeps them so; test_compat checks
    # which); one expert 3*128*64 = 24576 params; shared MLP 3*128*128; bf16 (2 B).
    decoder = DeepseekOCRCostModel(TINY).decoder
    router, expert, shared = 8 * 128 * router_weight_bytes(2), 3 * 128 * 64 * 2, 3 * 128 * 128 * 2
    assert decoder._moe(1, 2).weight_bytes == router + 2 * expert + shared  # 1 token: 2 experts
    assert decoder._moe(3, 2).weight_bytes == router + 6 * expert + shared  # 3 tokens: up to 6
    assert decoder._moe(10, 2).weight_bytes == router + 8 * expert + shared  # capped at all 8
    # FLOPs: 2 experts per token, each 2*128*128 (gate_up) + 2*64*128 (down)
    routed = decoder._moe(1, 2).matmul_flops - 2 * 128 * 8 - 2 * 3 * 128 * 128
    assert routed == 2 * (2 * 128 * 128 + 2 * 64 * 128)


def test_params_exact():
    assert DeepseekOCRCostModel(FULL).params == FULL_PARAMS
    stages = DeepseekOCRCostModel(FULL).stage_params()
    assert stages["vision"] + stages["prefill"] == FULL_PARAMS
    assert stages["lm_head"] == 129280 * 1280


def test_image_tokens_and_views():
    # global 1024: q = 16 -> 16*17 + 1 = 273; a 2x3 grid of 640 crops: q = 10 -> (10*2 + 1) * 30 = 630
    wl = workload_for_grid(FULL, 1024, 640, (2, 3))
    assert (wl.crops, wl.image_tokens, wl.prefill_tokens) == (6, 903, 913)
    assert workload_for_grid(FULL, 1024, 640, (1, 1)).crops == 0
    model = DeepseekOCRCostModel(FULL)
    assert model.sam.out_side(1024) == FULL.queries_per_side(1024) == 16
    assert model.sam.out_side(640) == FULL.queries_per_side(640) == 10


def test_vision_call_is_affine_in_batch():
    # the cached per-view terms give exactly what evaluating every operator gives
    model = DeepseekOCRCostModel(FULL)
    for batch in (1, 2, 9, np.array([0, 3, 7])):
        sam, clip, projector = model.views(640, batch, "eager", 2)
        direct = (model.sam.forward(640, batch, "eager", 2), model.clip.forward(10, batch, "eager", 2),
                  model.projector.forward(10, batch, 2))
        for cached, fresh in zip((sam, clip, projector), direct):
            for a, b in zip(cached.as_dict().values(), fresh.as_dict().values()):
                assert np.all(np.asarray(a) == np.asarray(b))


def test_no_crops_reads_no_crop_weights():
    model = DeepseekOCRCostModel(FULL)
    only_global = model.vision(workload_for_grid(FULL, 1024, 640, (1, 1)))["vision"]
    direct = (model.sam.forward(1024, 1, "flash", 2) + model.clip.forward(16, 1, "flash", 2)
              + model.projector.forward(16, 1, 2))
    assert only_global == direct


def test_decode_sum_equals_step_loop_and_kv_bytes():
    model = DeepseekOCRCostModel(TINY)
    prefill, steps = 913, 40
    loop = ops.total(model.decode_step(prefill + i, 1, "eager", 2) for i in range(1, steps + 1))
    assert model.decode(prefill, steps, 1, "eager", 2) == loop
    assert model.decode_step(100, 1, "flash", 2) == (
        model.decoder.forward(1, 1, 100, "flash", 2) + model.decoder.lm_head(1, 2))
    # full: 2 (K, V) * 12 layers * 10 heads * 128 head_dim * 2 B = 61440 B per token
    assert DeepseekOCRCostModel(FULL).decoder.kv_cache_bytes(1, 1000, 2) == 61_440_000


def test_prefill_excludes_vision_and_counts_lm_head_once():
    model = DeepseekOCRCostModel(FULL)
    wl = workload_for_grid(FULL, 1024, 640, (2, 3))
    prefill = model.prefill(wl)
    body = model.decoder.forward(1, 913, 913, "flash", 2)
    assert prefill - body == model.decoder.lm_head(1, 2)
    assert model.stages(wl)["lm_head"].flops == 2 * 1280 * 129280


def test_attention_mode_changes_bytes_not_flops():
    model = DeepseekOCRCostModel(FULL)
    flash = model.stages(workload_for_grid(FULL, 1024, 640, (2, 3), attention="flash"))
    eager = model.stages(workload_for_grid(FULL, 1024, 640, (2, 3), attention="eager"))
    for name in STAGES:
        assert flash[name].flops == eager[name].flops
    assert eager["sam"].bytes > flash["sam"].bytes and eager["prefill"].bytes > flash["prefill"].bytes


def test_array_workload_equals_points():
    model = DeepseekOCRCostModel(FULL)
    grids = [(1, 1), (2, 1), (3, 3)]
    many = model.stages(workload_for_grids(FULL, 1024, 640, grids, decode_steps=50))
    for i, grid in enumerate(grids):
        one = DeepseekOCRCostModel(FULL).stages(workload_for_grid(FULL, 1024, 640, grid, decode_steps=50))
        for name in STAGES:
            for a, b in zip(many[name].cost.as_dict().values(), one[name].cost.as_dict().values()):
                assert np.broadcast_to(a, (len(grids),))[i] == b


def test_bad_attention_mode_names_the_key():
    with pytest.raises(DsocrError, match="static_analysis.attention='math'"):
        Workload(attention="math")
