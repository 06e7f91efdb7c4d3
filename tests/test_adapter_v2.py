"""DeepSeek-OCR-2 behind the engine: transformers' processor, engine loop vs ``generate``, sub-stage
timers, and the plugin's stages end to end (tiny model, CPU)."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from pytest_dsocr.config import load_config
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine, ProfilingHooks
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr2.processing import (
    ViewSettings,
    build_processor,
    crop_grid_for,
    image_token_count,
    prepare_inputs,
)
from pytest_dsocr.models.deepseek_ocr2.spec import TINY
from pytest_dsocr.models.deepseek_ocr2.tokenizer import load_tokenizer
from pytest_dsocr.records import Sample
from pytest_dsocr.session import build_adapter

MAX_NEW_TOKENS = 12
V2 = ["model=deepseek_ocr2/tiny"]
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def adapter():
    return build_adapter(load_config(overrides=V2), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def pages():
    """A page without crops (512x640) and one cut into 2x1 tiles (1300x731): the cheapest two."""
    by_name = {p.name: p for p in bundled_pages()}
    return [by_name["page_005.png"], by_name["page_006.png"]]


def sample_of(path):
    return Sample(image_path=path, epoch=0, index=0, sample_id=path.stem)


# -- preprocessing through transformers' processor --------------------------------------------


@pytest.mark.parametrize(("size", "crop_mode", "max_crops", "grid"), [
    ((512, 640), True, 6, (1, 1)),  # longer side within one tile: global view only
    ((768, 768), True, 6, (1, 1)),
    ((769, 400), True, 6, (2, 1)),
    ((1240, 1754), True, 6, (2, 3)),  # A4 portrait
    ((1240, 1754), True, 2, (1, 2)),
    ((3000, 400), True, 9, (7, 1)),
    ((1240, 1754), False, 6, (1, 1)),
])
def test_grid_and_token_count_match_the_processor(size, crop_mode, max_crops, grid):
    settings = ViewSettings.from_model_config(1024, 768, crop_mode, max_crops)
    processor = build_processor(load_tokenizer(None, TINY), TINY, settings)
    prepared = prepare_inputs(Image.new("RGB", size, "white"), processor, TINY, settings)
    assert crop_grid_for(size, settings) == prepared.crop_grid == grid
    assert prepared.num_local_patches == [0 if grid == (1, 1) else grid[0] * grid[1]]
    assert prepared.num_image_tokens == image_token_count(TINY, settings, grid)
    assert int((prepared.input_ids == TINY.image_token_id).sum()) == prepared.num_image_tokens
    assert prepared.pixel_values.shape == (1, 3, 1024, 1024)
    if grid == (1, 1):
        assert prepared.pixel_values_local is None
    else:
        assert prepared.pixel_values_local.shape == (grid[0] * grid[1], 3, 768, 768)
    # 256 global queries + 144 per tile + the view separator, no newline tokens
    assert prepared.num_image_tokens == 256 + 144 * prepared.num_local_patches[0] + 1


def test_unsupported_view_sizes_fall_back_to_the_published_ones(caplog):
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning) as record:
        settings = ViewSettings.from_model_config(1280, 640, True, 9)
    assert (settings.base_size, settings.tile_size, settings.max_patches) == (1024, 768, 9)
    assert [str(w.message).split(":")[0] for w in record] == ["model.base_size=1280", "model.image_size=640"]
    assert "model.image_size=640" in caplog.text and "model.base_size=1280" in caplog.text


def test_prompt_needs_one_image_token():
    settings = ViewSettings.from_model_config(1024, 768, True, 6)
    processor = build_processor(load_tokenizer(None, TINY), TINY, settings)
    with pytest.raises(DsocrError, match="exactly one <image>"):
        prepare_inputs(Image.new("RGB", (64, 64)), processor, TINY, settings, prompt="Free OCR.")
    with pytest.raises(DsocrError, match="max_crops"):
        ViewSettings.from_model_config(1024, 768, True, 1)


# -- the engine's loop against generate -------------------------------------------------------


@pytest.mark.parametrize(("page_index", "max_new_tokens"), [(0, MAX_NEW_TOKENS), (1, 6)])
def test_engine_tokens_equal_generate(adapter, pages, page_index, max_new_tokens):
    # no_repeat_ngram_size 3 keeps the random model from repeating one token: a stricter check.
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=3)
    run = Engine(adapter, policy, max_new_tokens).run(sample_of(pages[page_index]))
    prepared = adapter.prepare(adapter.load(pages[page_index]))
    expected = adapter.generate_reference(prepared, policy, max_new_tokens)
    assert list(run.token_ids) == expected
    assert run.tokens == max_new_tokens and len(set(expected)) > 2
    assert run.crop_grid == prepared.crop_grid == ((1, 1), (2, 1))[page_index]
    assert run.image_tokens == prepared.num_image_tokens and run.prefill_len == prepared.prompt_len


def test_engine_stops_at_eos_like_generate(adapter, pages):
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=3)
    ids = Engine(adapter, policy, MAX_NEW_TOKENS).run(sample_of(pages[0])).token_ids
    stop_at = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])
    eos_policy = dataclasses.replace(policy, eos_token_id=ids[stop_at])
    run = Engine(adapter, eos_policy, None).run(sample_of(pages[0]))  # max_new_tokens=inf
    assert run.finish_reason == "eos"
    assert list(run.token_ids) == list(ids[: stop_at + 1])
    prepared = adapter.prepare(adapter.load(pages[0]))
    assert adapter.generate_reference(prepared, eos_policy, 32) == list(run.token_ids)


def test_static_backend_gives_the_eager_tokens(adapter, pages):
    """decode_backend=static (v1's static-cache decoder; graphs only on CUDA) on the v2 model."""
    static = build_adapter(load_config(overrides=[*V2, "infer.decode_backend=static"]), torch.device("cpu"),
                           torch.float32)
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=3)
    eager = Engine(adapter, policy, 8).run(sample_of(pages[0]))
    assert Engine(static, policy, 8).run(sample_of(pages[0])).token_ids == eager.token_ids
    assert static.static.active is not None and static.static.active.graph is None


class StageNames(ProfilingHooks):
    def __init__(self):
        self.names = []

    def stage_range(self, name):
        self.names.append(name)
        return super().stage_range(name)


def test_sub_stages_are_sam_encoder_projector_and_nest(adapter, pages):
    hooks = StageNames()
    engine = Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), 2)
    run = engine.run(sample_of(pages[1]), hooks=hooks)
    assert adapter.substages == ("sam", "encoder", "projector")
    assert set(run.substage_ms) == {"sam", "encoder", "projector"}
    assert all(value > 0 for value in run.substage_ms.values())
    assert sum(run.substage_ms.values()) <= run.vision_ms <= run.prefill_ms
    # tiles and global view: every sub-stage runs twice on a cropped page
    assert [hooks.names.count(name) for name in ("sam", "encoder", "projector")] == [2, 2, 2]
    assert hooks.names[:3] == ["preprocess", "prefill", "vision"] and "clip" not in hooks.names
    bare = engine.run(sample_of(pages[1]), instrument=False)
    assert bare.token_ids == run.token_ids and bare.substage_ms == {}


# -- the plugin's stages end to end -----------------------------------------------------------


QUICK = [
    "-p", "no:cacheprovider",
    "--dsocr-set", "model=deepseek_ocr2/tiny",
    "--dsocr-set", "dataset=folder",
    "--dsocr-set", "infer.max_new_tokens=3",
    "--dsocr-set", "infer.warmup_rounds=0",
]


def test_direct_inference_and_parity_stages_run_v2(pytester, inference_modules_loaded, adapter, pages, tmp_path):
    for name in ("test_direct_inference.py", "test_vendor_parity.py"):
        pytester.makepyfile(**{name[:-3]: (BENCHMARKS / name).read_text()})
    images = tmp_path / "images"
    images.mkdir()
    (images / pages[0].name).write_bytes(pages[0].read_bytes())  # one page, no crops: quick
    run_dir = tmp_path / "run"
    result = pytester.runpytest("-m", "direct_inference or vendor_parity", "--dsocr-run-dir", str(run_dir),
                                *QUICK, "--dsocr-set", f"dataset.root={images}")
    result.assert_outcomes(passed=2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["model"]["family"] == "deepseek_ocr2"
    assert set(metrics["aggregates"]["stage_ms"]) == {"prefill", "vision", "sam", "encoder", "projector", "decode"}
    assert metrics["stage_nesting"]["vision"] == ["sam", "encoder", "projector"]
    assert metrics["vendor_parity"]["all_ok"] is True
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "| encoder |" in summary and "clip" not in summary


def test_family_table_puts_each_familys_encoder_side_by_side():
    from pytest_dsocr.report.compare import family_table
    from pytest_dsocr.report.model import RunMetrics

    def run(family, stages):
        return RunMetrics.from_json({"config": {"model": {"family": family, "size": "tiny"}},
                "aggregates": {"stage_ms": {name: {"p50": ms, "count": 1} for name, ms in stages.items()}}})

    v1 = run("deepseek_ocr", {"prefill": 40.0, "vision": 30.0, "sam": 20.0, "clip": 8.0, "projector": 1.0,
                              "decode": 50.0})
    v2 = run("deepseek_ocr2", {"prefill": 30.0, "vision": 20.0, "sam": 15.0, "encoder": 4.0, "projector": 0.5,
                               "decode": 50.0})
    def stages(table):
        return [line.split("|")[1].strip() for line in table.splitlines()
                if line.startswith("| ") and not line.startswith("| ---")]

    assert stages(family_table(v1, v2))[:8] == ["Stage", "prefill", "vision", "sam", "clip", "encoder",
                                                "projector", "decode"]
    assert "| encoder | n/a | 4.00 | n/a |" in family_table(v1, v2)
    assert stages(family_table(v2, v1))[3:7] == ["sam", "encoder", "clip", "projector"]
