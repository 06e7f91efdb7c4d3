"""The bundled tiny checkpoints: real checkpoint folders that read every bundled page exactly.

Engine runs with the vendor's decoding (greedy, no_repeat_ngram_size 20, max_new_tokens=inf):
each page must reproduce its ground truth token for token and stop at EOS. v1, the default
model, reads all six pages (about 1,900 decode steps); v2 reads its two shortest, to keep the
suite short (train_tiny checked every page of both before the weights were shipped).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from pytest_dsocr.config import load_config
from pytest_dsocr.data.groundtruth import bundled_truth
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.models import weights
from pytest_dsocr.models.deepseek_ocr.tokenizer import build_offline_tokenizer
from pytest_dsocr.outputs.accuracy import compare_page
from pytest_dsocr.outputs.markup import remove_special_tokens
from pytest_dsocr.records import Sample
from pytest_dsocr.session import build_adapter

FAMILIES = ("deepseek_ocr", "deepseek_ocr2")
PAGES_READ = {"deepseek_ocr": None, "deepseek_ocr2": ("page_005.png", "page_006.png")}  # None: every page
MAX_BUNDLED_BYTES = 16 * 1024 * 1024  # both families' weights together
CONFIG_MODEL_TYPE = {"deepseek_ocr": "deepseek_vl_v2", "deepseek_ocr2": "deepseek_ocr2"}


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    cfg = load_config(overrides=[f"model={request.param}/tiny", "infer=vendor"])
    return build_adapter(cfg, torch.device("cpu"), torch.float32)


def test_bundled_model_reads_every_page_exactly_and_stops_at_eos(adapter):
    assert adapter.weights.kind == "bundled"
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=20)
    engine = Engine(adapter, policy, max_new_tokens=None)
    truths = bundled_truth()
    chosen = PAGES_READ[adapter.family]
    for page in [p for p in bundled_pages() if chosen is None or p.name in chosen]:
        run = engine.run(Sample(page, 0, 0, page.stem))
        truth = truths[page.name]
        assert run.finish_reason == "eos", page.name
        assert remove_special_tokens(run.text_raw) == truth.markup, page.name
        result = compare_page(run.text_raw, truth)
        assert result.exact and result.edit_distance == 0.0 and result.boxes.mean_iou == 1.0


def test_bundled_tokenizer_is_the_offline_one(adapter):
    offline = build_offline_tokenizer(adapter.spec)
    assert adapter.tokenizer.get_vocab() == offline.get_vocab()
    text = "\n".join(truth.markup for truth in bundled_truth().values())
    assert adapter.tokenizer.encode(text) == offline.encode(text)


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_folders_are_real_checkpoint_folders(family):
    folder = weights.bundled_path(family)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == CONFIG_MODEL_TYPE[family]
    index = json.loads((folder / weights.INDEX_NAME).read_text())
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())
            assert {handle.get_slice(name).get_dtype() for name in names} == {"BF16"}  # as published
        assert all(index["weight_map"][name] == file.name for name in names)


def test_bundled_weights_fit_the_package_budget():
    total = sum(file.stat().st_size for family in FAMILIES for file in weights.bundled_path(family).glob("*.safetensors"))
    assert total <= MAX_BUNDLED_BYTES
