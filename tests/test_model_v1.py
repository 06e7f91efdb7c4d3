"""DeepSeek-OCR v1 torch module: sizes, vendor token layout, SAM/CLIP numerics, cache, generate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from pytest_dsocr.compat import cache_kwargs, output_cache
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr.modeling import (
    SAM_ATTENTION_CLASSES,
    DeepseekOCRConfig,
    DeepseekOCRForCausalLM,
)
from pytest_dsocr.models.deepseek_ocr.spec import FULL, SPECS, TINY

FULL_PARAMETERS = 3_336_106_240
BASE_SIZE, IMAGE_SIZE = 1024, 640  # the vendor's Gundam mode
SMALL_BASE, SMALL_CROP = 256, 128  # small views for the decoder tests: 4 x 4 global, 2 x 2 per crop


@pytest.fixture(scope="module")
def tiny() -> DeepseekOCRForCausalLM:
    return build_model("deepseek_ocr", "tiny")


def views(base: int, crop: int, w_tiles: int, h_tiles: int, seed: int = 0):
    """One batch item in the vendor's format: (crops, global), zeros [1, 3, s, s] without crops."""
    gen = torch.Generator().manual_seed(seed)
    n = w_tiles * h_tiles
    crops = torch.randn(n, 3, crop, crop, generator=gen) if n > 1 else torch.zeros(1, 3, crop, crop)
    return crops, torch.randn(1, 3, base, base, generator=gen)


def prompt(n_image_tokens: int, text_len: int = 6, seed: int = 0) -> torch.Tensor:
    """BOS, the image tokens, then text tokens that are neither BOS/EOS nor the image token."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(2, TINY.text.vocab_size - 100, (1, text_len), generator=gen)
    image = torch.full((1, n_image_tokens), TINY.image_token_id)
    return torch.cat([torch.tensor([[TINY.bos_token_id]]), image, text], dim=1)


def global_tokens(size: int) -> int:
    q = TINY.queries_per_side(size)
    return (q + 1) * q + 1


def crop_tokens(size: int, w_tiles: int, h_tiles: int) -> int:
    q = TINY.queries_per_side(size)
    return (q * w_tiles + 1) * (q * h_tiles)


# -- sizes and config ----------------------------------------------------------------------


def test_full_on_meta_has_the_published_parameter_count():
    model = build_model("deepseek_ocr", "full", device="meta")
    assert sum(p.numel() for p in model.parameters()) == FULL_PARAMETERS
    assert all(p.is_meta for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("spec", [TINY, FULL], ids=lambda s: s.name)
def test_config_is_made_from_the_spec_and_rebuilds_it(spec):
    config = DeepseekOCRConfig.from_spec(spec)
    assert config.spec == spec
    assert DeepseekOCRConfig.from_dict(config.to_dict()).spec == spec
    text, sam = config.text_config, config.sam_config
    assert text.mlp_layer_types == spec.text.mlp_layer_types
    assert text.mlp_layer_types[0] == "dense" and set(text.mlp_layer_types[1:]) == {"sparse"}
    assert text.head_dim == spec.text.head_dim
    assert text.rope_parameters["rope_theta"] == spec.text.rope_theta
    assert (text.bos_token_id, text.eos_token_id) == (spec.bos_token_id, spec.eos_token_id)
    assert text.n_routed_experts == spec.text.n_routed_experts
    assert list(sam.downsample_channels) == list(spec.sam.downsample_channels)
    assert sam.output_channels == spec.sam.out_chans
    assert sam.mlp_dim == spec.sam.mlp_dim
    assert list(sam.global_attn_indexes) == list(spec.sam.global_attn_indexes)
    assert sam.window_size == spec.sam.window_size


def test_build_model_defaults(tiny):
    assert not tiny.training
    assert tiny.dtype == torch.float32
    assert tiny.config.spec == TINY
    assert tiny.config.text_config._experts_implementation == "eager"
    assert tiny.config.sam_config._attn_implementation == "sdpa"
    assert all(type(layer.attn) in SAM_ATTENTION_CLASSES.values() for layer in tiny.model.sam_model.layers)
    # The checkpoint covers the whole state: no persistent buffers beside the parameters.
    assert set(tiny.state_dict()) == {name for name, _ in tiny.named_parameters()}


def test_build_model_is_seeded():
    a, b = build_model("deepseek_ocr", "tiny", seed=3), build_model("deepseek_ocr", "tiny", seed=3)
    c = build_model("deepseek_ocr", "tiny", seed=4)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    # Every tensor random or a norm's ones/zeros, none left uninitialised.
    for name, param in a.named_parameters():
        assert torch.isfinite(param).all(), name
        assert param.abs().max() < 10, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "deepseek_ocr2", "size": "huge"}, "huge"),
        ({"family": "nougat", "size": "tiny"}, "nougat"),
        ({"family": "deepseek_ocr", "size": "huge"}, "huge"),
        ({"family": "deepseek_ocr", "size": "tiny", "dtype": "int3"}, "int3"),
        ({"family": "deepseek_ocr", "size": "tiny", "path": "/nonexistent/ckpt"}, "/nonexistent/ckpt"),
    ],
)
def test_build_model_rejects_bad_input_naming_it(kwargs, message):
    with pytest.raises(DsocrError, match=message):
        build_model(**kwargs)


# -- vision: token layout ---------------------------------------------------------------------


@torch.inference_mode()
def test_encode_images_follows_the_vendor_token_arithmetic(tiny):
    """Global-only and 2x3 crops in one batch (crops and globals each go through SAM once)."""
    images = [views(BASE_SIZE, IMAGE_SIZE, 1, 1, seed=1), views(BASE_SIZE, IMAGE_SIZE, 2, 3, seed=2)]
    embeds = tiny.model.encode_images(images, torch.tensor([[1, 1], [2, 3]]))
    q, q2 = TINY.queries_per_side(BASE_SIZE), TINY.queries_per_side(IMAGE_SIZE)
    assert (q, q2) == (math.ceil(1024 / 16 / 4), math.ceil(640 / 64))
    assert embeds[0].shape == ((q + 1) * q + 1, TINY.projector.n_embed)
    assert embeds[1].shape == ((q2 * 2 + 1) * (q2 * 3) + (q + 1) * q + 1, TINY.projector.n_embed)
    newline, separator = tiny.model.image_newline, tiny.model.view_seperator
    for item in embeds:
        assert torch.equal(item[-1], separator)
        global_rows = item[-1 - (q + 1) * q:-1].view(q, q + 1, -1)
        assert torch.equal(global_rows[:, -1], newline.expand(q, -1))
        assert not torch.isclose(global_rows[:, :-1], newline).all(-1).any()
    local_rows = embeds[1][:crop_tokens(IMAGE_SIZE, 2, 3)].view(q2 * 3, q2 * 2 + 1, -1)
    assert torch.equal(local_rows[:, -1], newline.expand(q2 * 3, -1))


@torch.inference_mode()
def test_batched_encoding_equals_one_item_at_a_time(tiny):
    images = [views(SMALL_BASE, SMALL_CROP, 2, 1, seed=1), views(SMALL_BASE, SMALL_CROP, 1, 1, seed=2),
              views(SMALL_BASE, SMALL_CROP, 1, 3, seed=3)]
    grids = [[2, 1], [1, 1], [1, 3]]
    batched = tiny.model.encode_images(images, grids)
    for item, grid, together in zip(images, grids, batched):
        alone = tiny.model.encode_images([item], [grid])[0]
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@torch.inference_mode()
def test_crops_are_tiled_row_major_as_one_grid(tiny):
    """Crop i sits at tile (row i // w, col i % w) of the big grid, as the vendor cuts them."""
    w_tiles, h_tiles = 3, 2
    crops, global_view = views(SMALL_BASE, SMALL_CROP, w_tiles, h_tiles, seed=5)
    embeds = tiny.model.encode_images([(crops, global_view)], [[w_tiles, h_tiles]])[0]
    q2 = TINY.queries_per_side(SMALL_CROP)
    grid = embeds[:crop_tokens(SMALL_CROP, w_tiles, h_tiles)].view(h_tiles * q2, w_tiles * q2 + 1, -1)
    features, _, _ = tiny.model._view_features(crops)
    for i in range(w_tiles * h_tiles):
        row, col = divmod(i, w_tiles)
        tile = grid[row * q2:(row + 1) * q2, col * q2:(col + 1) * q2]
        torch.testing.assert_close(tile.reshape(q2 * q2, -1), features[i], atol=1e-5, rtol=1e-4)


def test_encode_images_rejects_a_crop_count_that_does_not_fit_the_grid(tiny):
    crops, global_view = views(SMALL_BASE, SMALL_CROP, 2, 2)
    with pytest.raises(DsocrError, match="4 crops for a 2x3 crop grid"):
        tiny.model.encode_images([(crops, global_view)], [[2, 3]])


def test_merge_rejects_a_mask_that_does_not_fit_the_images(tiny):
    embeds = [torch.zeros(5, TINY.projector.n_embed)]
    ids = prompt(4)
    with pytest.raises(DsocrError, match="images_seq_mask"):
        tiny.model.merge_image_embeddings(ids, embeds, ids == TINY.image_token_id)


# -- vision: SAM and CLIP numerics ------------------------------------------------------------


@torch.inference_mode()
def test_sam_on_640_crops_matches_the_vendor_formulas(tiny):
    """40 x 40 patches: absolute positions resized bicubically (antialiased, float32) from 64 x 64,
    global-block rel-pos tables resized 127 -> 79 in float32 (bf16 bit-exact), and the vendor
    rel-pos bias equals transformers' own formulation in float32."""
    sam = tiny.model.sam_model
    table = sam.pos_embed
    expected = F.interpolate(table.permute(0, 3, 1, 2).float(), size=(40, 40), mode="bicubic",
                             antialias=True, align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(sam.interpolate_pos_encoding(40, 40), expected)

    global_attn = sam.layers[TINY.sam.global_attn_indexes[0]].attn
    rel = global_attn.rel_pos_h.to(torch.bfloat16)
    assert rel.shape[0] == 2 * 64 - 1
    resized = F.interpolate(rel.float().reshape(1, rel.shape[0], -1).permute(0, 2, 1), size=79, mode="linear")
    resized = resized.to(torch.bfloat16).reshape(-1, 79).permute(1, 0)
    coords = torch.arange(40)[:, None] - torch.arange(40)[None, :] + 39
    assert torch.equal(global_attn.get_rel_pos(40, 40, rel), resized[coords])

    crop = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))
    ours = sam(crop).last_hidden_state
    assert ours.shape == (1, TINY.sam.downsample_channels[1], 10, 10)
    reference = copy.deepcopy(sam)
    originals = {ours_cls: hf_cls for hf_cls, ours_cls in SAM_ATTENTION_CLASSES.items()}
    for layer in reference.layers:
        layer.attn.__class__ = originals[type(layer.attn)]
    torch.testing.assert_close(reference(crop).last_hidden_state, ours, atol=1e-5, rtol=1e-4)


@torch.inference_mode()
def test_vision_runs_in_bfloat16_on_cpu():
    model = build_model("deepseek_ocr", "tiny", dtype="bfloat16")
    reference = build_model("deepseek_ocr", "tiny")
    images = [views(SMALL_BASE, SMALL_CROP, 2, 1, seed=3)]
    low = model.model.encode_images(images, [[2, 1]])[0]
    high = reference.model.encode_images(images, [[2, 1]])[0]
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - high).norm() / high.norm() < 0.05


@torch.inference_mode()
def test_clip_interpolates_16x16_positions_to_a_10x10_grid(tiny):
    clip = tiny.model.vision_model
    embeddings = clip.embeddings
    table = embeddings.position_embedding.weight
    assert table.shape[0] == TINY.clip.num_positions == 16 * 16 + 1
    assert torch.equal(embeddings.interpolate_pos_encoding(16, 16)[0], table)
    positions = embeddings.interpolate_pos_encoding(10, 10)[0]
    assert positions.shape == (101, TINY.clip.width)
    assert torch.equal(positions[0], table[0])  # the class position is kept
    grid = table[1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(10, 10), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(positions[1:], expected.permute(0, 2, 3, 1).reshape(100, -1))
    sam_features = torch.randn(2, TINY.clip.width, 10, 10)
    assert clip(None, sam_features).shape == (2, 101, TINY.clip.width)


# -- decoder: cache, forward, generate ---------------------------------------------------------


def small_inputs(w_tiles: int = 2, h_tiles: int = 2):
    images = [views(SMALL_BASE, SMALL_CROP, w_tiles, h_tiles, seed=11)]
    n_crop = crop_tokens(SMALL_CROP, w_tiles, h_tiles) if w_tiles * h_tiles > 1 else 0
    n_image = n_crop + global_tokens(SMALL_BASE)
    ids = prompt(n_image)
    return ids, images, ids == TINY.image_token_id, torch.tensor([[w_tiles, h_tiles]])


@torch.inference_mode()
def test_prefill_then_decode_matches_a_full_forward(tiny):
    ids, images, mask, grid = small_inputs()
    full = tiny(input_ids=ids, images=images, images_seq_mask=mask, images_spatial_crop=grid, use_cache=False)
    prefill = tiny(input_ids=ids[:, :-1], images=images, images_seq_mask=mask[:, :-1],
                   images_spatial_crop=grid, use_cache=True, logits_to_keep=1)
    assert prefill.logits.shape == (1, 1, TINY.text.vocab_size)
    cache = output_cache(prefill)
    assert cache.get_seq_length() == ids.shape[1] - 1
    # Images passed again on a decode step are ignored: the cache is not empty.
    step = tiny(input_ids=ids[:, -1:], images=images, images_seq_mask=mask[:, -1:],
                images_spatial_crop=grid, use_cache=True, **cache_kwargs(cache))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prefill.logits[:, -1], full.logits[:, -2], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(full.logits).all() and 0.01 < full.logits.std() < 10


@torch.inference_mode()
def test_prefill_uses_the_image_embeddings(tiny):
    ids, images, mask, grid = small_inputs()
    with_images = tiny(input_ids=ids, images=images, images_seq_mask=mask, images_spatial_crop=grid)
    text_only = tiny(input_ids=ids)
    assert not torch.allclose(with_images.logits[:, -1], text_only.logits[:, -1])
    merged = tiny.model.merge_image_embeddings(ids, tiny.model.encode_images(images, grid), mask)
    by_embeds = tiny(inputs_embeds=merged)
    torch.testing.assert_close(by_embeds.logits, with_images.logits)


@torch.inference_mode()
def test_generate_greedy_returns_max_new_tokens_with_eos_suppressed(tiny):
    ids, images, mask, grid = small_inputs(1, 1)
    max_new_tokens = 6
    kwargs = dict(input_ids=ids, images=images, images_seq_mask=mask, images_spatial_crop=grid,
                  attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                  no_repeat_ngram_size=3, eos_token_id=TINY.eos_token_id, suppress_tokens=[TINY.eos_token_id],
                  pad_token_id=TINY.eos_token_id)
    sam_calls = []
    handle = tiny.model.sam_model.register_forward_hook(lambda *args: sam_calls.append(1))
    try:
        out = tiny.generate(**kwargs)
    finally:
        handle.remove()
    assert len(sam_calls) == 1  # images are encoded on the first step only (global view, no crops)
    assert out.shape == (1, ids.shape[1] + max_new_tokens)
    assert torch.equal(out[:, :ids.shape[1]], ids)
    assert TINY.eos_token_id not in out[0, ids.shape[1]:].tolist()
    assert torch.equal(tiny.generate(**kwargs), out)
    # The same tokens as a hand-written greedy loop over prefill + cached decode steps.
    tokens, seen = [], ids
    logits = tiny(input_ids=ids, images=images, images_seq_mask=mask, images_spatial_crop=grid, use_cache=True)
    cache = output_cache(logits)
    logits = logits.logits[:, -1].float()
    for _ in range(max_new_tokens):
        logits[:, TINY.eos_token_id] = -math.inf
        banned = _ngram_bans(seen[0].tolist(), 3)
        logits[:, banned] = -math.inf
        token = logits.argmax(-1, keepdim=True)
        tokens.append(int(token))
        seen = torch.cat([seen, token], dim=1)
        step = tiny(input_ids=token, use_cache=True, **cache_kwargs(cache))
        logits = step.logits[:, -1].float()
    assert out[0, ids.shape[1]:].tolist() == tokens


def _ngram_bans(ids: list[int], n: int) -> list[int]:
    prefix = tuple(ids[len(ids) - n + 1:])
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix]


@torch.inference_mode()
def test_experts_implementation_is_a_build_option():
    eager = build_model("deepseek_ocr", "tiny")
    grouped = build_model("deepseek_ocr", "tiny", experts_implementation="grouped_mm")
    assert grouped.config.text_config._experts_implementation == "grouped_mm"
    ids = prompt(0, text_len=12)
    torch.testing.assert_close(grouped(input_ids=ids).logits, eager(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_every_size_builds_on_meta():
    for size in SPECS:
        model = build_model("deepseek_ocr", size, device="meta")
        assert model.config.spec == SPECS[size]
