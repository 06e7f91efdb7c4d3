"""DeepSeek-OCR v1 input preparation pinned to the vendor's arithmetic.

Expected grids and token counts are worked out by hand from the vendor's rules
(process/image_process.py) and written literally, so a change in our code cannot move them.
"""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image, ImageDraw

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.processing import (
    PAD_COLOR,
    PreparedInputs,
    candidate_grids,
    choose_crop_grid,
    crop_grid_for,
    dynamic_crops,
    image_token_count,
    normalize,
    pad_global_view,
    prepare_inputs,
)
from pytest_dsocr.models.deepseek_ocr.prompt import DEFAULT_PROMPT, build_dsocr_prompt
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY
from pytest_dsocr.models.deepseek_ocr.tokenizer import build_offline_tokenizer

PLAIN_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


# --- prompt -------------------------------------------------------------------------------


def test_default_prompt_is_the_plain_literal():
    assert DEFAULT_PROMPT == PLAIN_PROMPT
    assert build_dsocr_prompt() == PLAIN_PROMPT
    assert build_dsocr_prompt(PLAIN_PROMPT, "plain") == PLAIN_PROMPT


def test_plain_format_strips_like_format_messages():
    # The vendor's HF run script passes the prompt with a trailing space; format_messages strips it.
    assert build_dsocr_prompt(PLAIN_PROMPT + " ") == PLAIN_PROMPT
    assert build_dsocr_prompt("  <image>\nFree OCR. \n") == "<image>\nFree OCR."


def test_unknown_sft_format_is_named():
    with pytest.raises(DsocrError, match="'deepseekv2'"):
        build_dsocr_prompt(PLAIN_PROMPT, sft_format="deepseekv2")


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompt_is_rejected(prompt):
    with pytest.raises(DsocrError, match="prompt"):
        build_dsocr_prompt(prompt)


# --- crop grid ----------------------------------------------------------------------------


def test_candidate_grids_are_the_vendors_sorted_by_area():
    grids = candidate_grids()
    assert set(grids) == {
        (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1), (2, 2), (1, 5), (5, 1), (1, 6), (6, 1),
        (2, 3), (3, 2), (1, 7), (7, 1), (1, 8), (8, 1), (2, 4), (4, 2), (1, 9), (9, 1), (3, 3),
    }
    assert len(grids) == 22
    areas = [w * h for w, h in grids]
    assert areas == sorted(areas)
    assert set(candidate_grids(2, 6)) == {g for g in grids if g[0] * g[1] <= 6}


# (width, height) -> grid, each worked out from the vendor's rule: aspect = w/h, closest
# ratio among the 22 grids (2..9 tiles), ties to the later (larger) grid only when
# w*h > 0.5 * 640^2 * tiles.
CROP_GRID_TABLE = [
    ((640, 640), (1, 1)),  # <= 640 on both sides: no crops
    ((600, 640), (1, 1)),
    ((641, 300), (2, 1)),  # 641 > 640: crops; aspect 2.137 -> 2/1
    ((1000, 1400), (2, 3)),  # 0.714: 2/3 (diff 0.048) beats 1/1 (0.286) and 1/2 (0.214)
    ((1240, 1754), (2, 3)),  # A4 at 150 dpi, 0.707: 2/3
    ((1754, 1240), (3, 2)),  # landscape A4, 1.415: 3/2 (0.085) beats 1/1 (0.415)
    ((3000, 800), (4, 1)),  # 3.75: 4/1 (0.25) beats 3/1 (0.75)
    ((800, 3000), (1, 4)),  # 0.267: 1/4 (0.017) beats 1/3 and 1/5 (0.067)
    ((2000, 2000), (3, 3)),  # tie 2x2 vs 3x3; 4.0e6 > 0.5*640^2*9 = 1843200: 3x3
    ((700, 700), (2, 2)),  # same tie, 490000 <= 1843200: stays 2x2
    ((1357, 1357), (2, 2)),  # 1841449 <= 1843200: 2x2
    ((1358, 1358), (3, 3)),  # 1844164 > 1843200: 3x3
    ((700, 1400), (1, 2)),  # tie 1x2 vs 2x4; 980000 <= 0.5*640^2*8 = 1638400: 1x2
    ((1000, 2000), (2, 4)),  # 2000000 > 1638400: 2x4
    ((1250, 1000), (3, 2)),  # 1.25 is 0.25 from 1/1 and from 3/2: 1250000 > 1228800 takes 3x2,
    #                          then 3x3 ties again but 1250000 <= 1843200
    ((1200, 960), (2, 2)),  # 1.25 again, 1152000 <= 1228800: 2x2 kept
]


@pytest.mark.parametrize(("size", "grid"), CROP_GRID_TABLE, ids=[f"{w}x{h}" for (w, h), _ in CROP_GRID_TABLE])
def test_crop_grid_table(size, grid):
    assert crop_grid_for(size, base_size=1024, image_size=640, crop_mode=True) == grid


def test_choose_crop_grid_tie_rule_uses_image_size():
    # 1000x1000 ties 2x2 and 3x3; with 512 tiles 0.5*512^2*9 = 1179648 > 1e6 keeps 2x2,
    # with 448 tiles 0.5*448^2*9 = 903168 < 1e6 takes 3x3.
    assert choose_crop_grid(1000, 1000, image_size=512) == (2, 2)
    assert choose_crop_grid(1000, 1000, image_size=448) == (3, 3)


def test_equal_area_order_is_the_vendors_set_order():
    # With at most 3 tiles, aspect 1.25 is 0.75 from both 1/2 and 2/1: the one visited second
    # wins only if the page exceeds 0.5*640^2*2 = 409600 px, so the visiting order shows.
    assert candidate_grids(2, 3)[:2] == [(1, 2), (2, 1)]
    assert crop_grid_for((1250, 1000), 1024, 640, crop_mode=True, max_crops=3) == (2, 1)
    assert crop_grid_for((700, 560), 1024, 640, crop_mode=True, max_crops=3) == (1, 2)


def test_crop_grid_without_crop_mode_or_with_fewer_crops():
    assert crop_grid_for((3000, 800), 1024, 640, crop_mode=False) == (1, 1)
    assert crop_grid_for((2000, 2000), 1024, 640, crop_mode=True, max_crops=6) == (2, 2)
    assert crop_grid_for((1000, 2000), 1024, 640, crop_mode=True, max_crops=6) == (1, 2)


# --- token counts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_size", "image_size", "grid", "count"),
    [
        (1024, 640, (1, 1), 273),  # q = 16: (16+1)*16 + 1
        (512, 512, (1, 1), 73),  # q = 8: 9*8 + 1 (Tiny)
        (640, 640, (1, 1), 111),  # q = 10: 11*10 + 1 (Small)
        (1280, 1280, (1, 1), 421),  # q = 20: 21*20 + 1 (Large)
        (1024, 640, (2, 3), 273 + 630),  # crops (10*2+1)*(10*3)
        (1024, 640, (3, 2), 273 + 620),  # (10*3+1)*(10*2)
        (1024, 640, (4, 1), 273 + 410),  # (10*4+1)*10
        (1024, 640, (1, 4), 273 + 440),  # (10+1)*40
        (1024, 640, (3, 3), 273 + 930),  # (31)*30
    ],
)
def test_image_token_count(base_size, image_size, grid, count):
    assert image_token_count(FULL, base_size, image_size, grid) == count
    assert image_token_count(TINY, base_size, image_size, grid) == count


# --- pixels -------------------------------------------------------------------------------


def test_normalize_matches_to_tensor_then_normalize():
    pil = Image.new("RGB", (3, 2), (255, 0, 127))
    x = normalize(pil)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0)
    assert torch.allclose(x[2], torch.full((2, 3), 127 / 255 * 2 - 1), atol=1e-7)
    assert normalize(Image.new("L", (4, 4), 255)).shape == (3, 4, 4)


def test_global_view_is_padded_with_the_mean_colour():
    page = Image.new("RGB", (2000, 1000), (255, 0, 0))
    view = pad_global_view(page, 1024)
    assert view.size == (1024, 1024)
    assert PAD_COLOR == (127, 127, 127)
    assert view.getpixel((512, 10)) == PAD_COLOR  # above the 1024x512 band
    assert view.getpixel((512, 1013)) == PAD_COLOR  # below it
    assert view.getpixel((512, 512)) == (255, 0, 0)


def test_small_views_without_crops_are_squashed_first():
    page = Image.new("RGB", (2000, 1000), (255, 0, 0))
    squashed = pad_global_view(page, 512, image_size=512, crop_mode=False)  # Tiny mode
    assert squashed.size == (512, 512) and squashed.getpixel((256, 5)) == (255, 0, 0)
    kept = pad_global_view(page, 1024, image_size=1024, crop_mode=False)  # Base mode keeps aspect
    assert kept.getpixel((512, 5)) == PAD_COLOR
    cropping = pad_global_view(page, 512, image_size=512, crop_mode=True)
    assert cropping.getpixel((256, 5)) == PAD_COLOR


def test_dynamic_crops_cut_row_major():
    colours = [(10 * i, 0, 0) for i in range(6)]
    page = Image.new("RGB", (128, 192))
    draw = ImageDraw.Draw(page)
    for i, colour in enumerate(colours):  # 2 columns x 3 rows of 64 px cells
        col, row = i % 2, i // 2
        draw.rectangle((col * 64, row * 64, col * 64 + 63, row * 64 + 63), fill=colour)
    tiles = dynamic_crops(page, (2, 3), 64)
    assert [t.size for t in tiles] == [(64, 64)] * 6
    assert [t.getpixel((32, 32)) for t in tiles] == colours


# --- prepare_inputs -----------------------------------------------------------------------


def _page(width: int, height: int, mode: str = "RGB") -> Image.Image:
    page = Image.new(mode, (width, height), "white")
    draw = ImageDraw.Draw(page)
    draw.text((40, 40), "1 Introduction", fill="black")
    draw.rectangle((40, 100, width - 40, 300), outline="black")
    return page


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build_offline_tokenizer(TINY)


@pytest.fixture(scope="module")
def a4_tiny(tiny_tokenizer) -> PreparedInputs:
    return prepare_inputs(_page(1240, 1754), tiny_tokenizer, TINY)


def test_prepare_inputs_shapes_and_dtypes(a4_tiny):
    p = a4_tiny
    length = p.input_ids.shape[1]
    assert p.input_ids.shape == (1, length) and p.input_ids.dtype == torch.long
    assert p.images_seq_mask.shape == (1, length) and p.images_seq_mask.dtype == torch.bool
    assert p.images_spatial_crop.tolist() == [[2, 3]] and p.images_spatial_crop.dtype == torch.long
    assert p.crop_grid == (2, 3)
    (crops, global_view), = p.images
    assert crops.shape == (6, 3, 640, 640) and crops.dtype == torch.float32
    assert global_view.shape == (1, 3, 1024, 1024) and global_view.dtype == torch.float32
    assert p.prompt_len == length


def test_prepare_inputs_token_layout(a4_tiny, tiny_tokenizer):
    p = a4_tiny
    ids = p.input_ids[0]
    mask = p.images_seq_mask[0]
    image_positions = (ids == TINY.image_token_id).nonzero().flatten()
    assert int(mask.sum()) == p.num_image_tokens == len(image_positions) == 273 + 630
    assert torch.equal(mask, ids == TINY.image_token_id)
    # one contiguous run right after BOS (the text before <image> is empty)
    assert image_positions.tolist() == list(range(1, 1 + p.num_image_tokens))
    assert ids[0].item() == TINY.bos_token_id
    assert TINY.eos_token_id not in ids.tolist()  # inference mode: no trailing EOS
    after = ids[1 + p.num_image_tokens:].tolist()
    assert tiny_tokenizer.decode(after) == "\n<|grounding|>Convert the document to markdown."
    assert after == tiny_tokenizer.encode(
        "\n<|grounding|>Convert the document to markdown.", add_special_tokens=False
    )


def test_prepare_inputs_pixels_are_the_views(a4_tiny):
    page = _page(1240, 1754)
    crops, global_view = a4_tiny.images[0]
    assert torch.equal(global_view[0], normalize(pad_global_view(page, 1024)))
    tiles = dynamic_crops(page, (2, 3), 640)
    assert torch.equal(crops, torch.stack([normalize(t) for t in tiles]))
    assert global_view.min() >= -1 and global_view.max() <= 1


def test_prepare_inputs_text_around_the_image(tiny_tokenizer):
    prompt = "Page: <image>\nFree OCR. "
    p = prepare_inputs(_page(500, 600), tiny_tokenizer, TINY, prompt=prompt)
    ids = p.input_ids[0].tolist()
    first = ids.index(TINY.image_token_id)
    assert tiny_tokenizer.decode(ids[1:first]) == "Page: "
    assert tiny_tokenizer.decode(ids[first + p.num_image_tokens:]) == "\nFree OCR."  # stripped
    assert p.images_seq_mask[0, first:first + p.num_image_tokens].all()
    assert not p.images_seq_mask[0, :first].any()


def test_prepare_inputs_small_page_has_no_crops(tiny_tokenizer):
    p = prepare_inputs(_page(500, 600, mode="L"), tiny_tokenizer, TINY)
    crops, global_view = p.images[0]
    assert p.crop_grid == (1, 1) and p.images_spatial_crop.tolist() == [[1, 1]]
    assert crops.shape == (1, 3, 640, 640) and not crops.any()
    assert global_view.shape == (1, 3, 1024, 1024)
    assert p.num_image_tokens == 273


@pytest.mark.parametrize(
    ("base_size", "image_size", "tokens"), [(512, 512, 73), (640, 640, 111), (1024, 1024, 273), (1280, 1280, 421)]
)
def test_prepare_inputs_modes_without_crops(tiny_tokenizer, base_size, image_size, tokens):
    p = prepare_inputs(_page(1240, 1754), tiny_tokenizer, TINY, base_size, image_size, crop_mode=False)
    crops, global_view = p.images[0]
    assert p.crop_grid == (1, 1) and p.num_image_tokens == tokens
    assert global_view.shape == (1, 3, base_size, base_size)
    assert crops.shape == (1, 3, image_size, image_size) and not crops.any()


def test_prepare_inputs_full_spec_uses_the_real_ids():
    p = prepare_inputs(_page(1754, 1240), build_offline_tokenizer(FULL), FULL)
    assert p.crop_grid == (3, 2) and p.num_image_tokens == 273 + 620
    assert int((p.input_ids == 128815).sum()) == 893
    assert p.input_ids[0, 0].item() == 0


def test_to_moves_and_casts_only_pixels(a4_tiny, tiny_tokenizer):
    moved = a4_tiny.to("cpu", torch.bfloat16)
    assert moved is not a4_tiny
    assert all(t.dtype == torch.bfloat16 for pair in moved.images for t in pair)
    assert moved.input_ids.dtype == torch.long and moved.images_seq_mask.dtype == torch.bool
    assert moved.images_spatial_crop.dtype == torch.long
    assert a4_tiny.images[0][1].dtype == torch.float32  # the original is untouched
    direct = prepare_inputs(_page(500, 600), tiny_tokenizer, TINY, dtype=torch.float16)
    assert direct.images[0][1].dtype == torch.float16 and direct.images[0][0].dtype == torch.float16


# --- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"base_size": 1000}, "base_size=1000"),
        ({"base_size": 0}, "base_size=0"),
        ({"base_size": -1024}, "base_size=-1024"),
        ({"image_size": 600}, "image_size=600"),
        ({"image_size": 640.0}, "image_size=640.0"),
        ({"image_size": True}, "image_size=True"),
        ({"max_crops": 1}, "max_crops=1"),
        ({"prompt": "Free OCR."}, "exactly one <image>"),
        ({"prompt": "<image><image>\nFree OCR."}, "exactly one <image>"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_values_are_named(tiny_tokenizer, kwargs, named):
    with pytest.raises(DsocrError, match=re.escape(named)):
        prepare_inputs(_page(1240, 1754), tiny_tokenizer, TINY, **kwargs)


def test_bad_image_is_named(tiny_tokenizer):
    with pytest.raises(DsocrError, match="PIL image"):
        prepare_inputs("page.png", tiny_tokenizer, TINY)


def test_crop_grid_for_validates_sizes():
    with pytest.raises(DsocrError, match="image_size=100"):
        crop_grid_for((2000, 2000), 1024, 100, crop_mode=True)
