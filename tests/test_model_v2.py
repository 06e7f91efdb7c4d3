"""DeepSeek-OCR-2 (transformers' native model): sizes, published parameter count, seeded init,
local checkpoints through transformers' loader, the shared tokenizer."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekOcr2ForConditionalGeneration

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr import spec as v1_spec
from pytest_dsocr.models.deepseek_ocr2.modeling import model_config
from pytest_dsocr.models.deepseek_ocr2.spec import FULL, SPECS, TINY
from pytest_dsocr.models.deepseek_ocr2.tokenizer import (
    build_offline_tokenizer,
    load_tokenizer,
)

# The Hugging Face model API's safetensors total for deepseek-ai/DeepSeek-OCR-2 (BF16); cited in
# conf/model/deepseek_ocr2/full.yaml and models/deepseek_ocr2/spec.py.
PUBLISHED_PARAMS = 3_389_119_360


def param_count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_meta():
    return build_model("deepseek_ocr2", "full", device="meta")


@pytest.fixture(scope="module")
def tiny():
    return build_model("deepseek_ocr2", "tiny")


def test_full_has_the_published_parameter_count(full_meta):
    inner = full_meta.model
    parts = {
        "sam (vision_tower.sam_encoder)": param_count(inner.vision_tower.sam_encoder),
        "encoder (vision_tower.vision_encoder)": param_count(inner.vision_tower.vision_encoder),
        "causal-flow queries": param_count(inner.vision_tower.query_768_resolution)
        + param_count(inner.vision_tower.query_1024_resolution),
        "projector (multi_modal_projector)": param_count(inner.multi_modal_projector),
        "view_separator": inner.view_separator.numel(),
        "decoder (language_model)": param_count(inner.language_model),
        "lm_head": param_count(full_meta.lm_head),
    }
    total = param_count(full_meta)
    print("\nDeepSeek-OCR-2 full on meta:", ", ".join(f"{k} {v:,}" for k, v in parts.items()))
    print(f"total {total:,} vs published {PUBLISHED_PARAMS:,}")
    assert sum(parts.values()) == total
    assert total == PUBLISHED_PARAMS
    assert all(p.device.type == "meta" for p in full_meta.parameters())


def test_full_config_is_the_published_one(full_meta):
    config = full_meta.config
    sam, enc, text = config.vision_config.sam_config, config.vision_config.encoder_config, config.text_config
    assert (sam.hidden_size, sam.num_hidden_layers, sam.num_attention_heads) == (768, 12, 12)
    assert list(sam.global_attn_indexes) == [2, 5, 8, 11] and list(sam.downsample_channels) == [512, 896]
    assert (enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads, enc.num_key_value_heads,
            enc.intermediate_size) == (896, 24, 14, 2, 4864)
    assert enc.rope_parameters["rope_theta"] == 1_000_000.0
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.n_routed_experts,
            text.num_experts_per_tok, text.moe_intermediate_size) == (129280, 1280, 12, 64, 6, 896)
    assert text.mlp_layer_types == ["dense"] + ["sparse"] * 11
    assert config.image_token_id == 128815 and not config.tie_word_embeddings
    # v2 keeps v1's decoder exactly.
    assert FULL.text == v1_spec.FULL.text


def test_tiny_keeps_the_structure(tiny, full_meta):
    def kinds(model):
        sam = model.model.vision_tower.sam_encoder
        return (
            sorted({layer.window_size > 0 for layer in sam.layers}),  # windowed and global SAM blocks
            type(model.model.vision_tower.vision_encoder).__name__,
            model.config.vision_config.encoder_config.num_key_value_heads
            < model.config.vision_config.encoder_config.num_attention_heads,  # GQA
            sorted(set(model.config.text_config.mlp_layer_types)),
            model.model.vision_tower.query_768_resolution.weight.shape[0],
            model.model.vision_tower.query_1024_resolution.weight.shape[0],
        )

    assert kinds(tiny) == kinds(full_meta) == ([False, True], "DeepseekOcr2VisionEncoder", True,
                                                ["dense", "sparse"], 144, 256)
    assert param_count(tiny) < 3_000_000
    assert TINY.text == v1_spec.TINY.text and TINY.image_token_id == v1_spec.TINY.image_token_id


def test_tiny_is_seeded_and_finite(tiny):
    again = build_model("deepseek_ocr2", "tiny")
    other = build_model("deepseek_ocr2", "tiny", seed=1)
    for (name, a), b in zip(tiny.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name
        assert torch.isfinite(a).all() and a.abs().max() < 10, name
    assert not torch.equal(tiny.lm_head.weight, other.lm_head.weight)
    assert isinstance(tiny, DeepseekOcr2ForConditionalGeneration) and not tiny.training


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("v2ckpt")
    tiny.save_pretrained(folder)
    build_offline_tokenizer(TINY).save_pretrained(folder)
    return folder


def test_checkpoint_loads_with_transformers_loader(checkpoint_dir, tiny):
    loaded = build_model("deepseek_ocr2", "tiny", path=str(checkpoint_dir), seed=7)
    reference = tiny.state_dict()
    state = loaded.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    tokenizer = load_tokenizer(str(checkpoint_dir), TINY)
    assert tokenizer.convert_tokens_to_ids("<image>") == TINY.image_token_id


def _copy_checkpoint(source, target, drop=None, config_edit=None):
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    if drop is not None:
        weights = next(target.glob("*.safetensors"))
        tensors = load_file(weights)
        del tensors[drop]
        save_file(tensors, weights, metadata={"format": "pt"})
    if config_edit is not None:
        config = json.loads((target / "config.json").read_text())
        config_edit(config)
        (target / "config.json").write_text(json.dumps(config))
    return target


def test_checkpoint_with_a_missing_tensor_fails_naming_it(checkpoint_dir, tmp_path):
    # transformers saves in the vendor's tensor names and maps them back when it loads
    folder = _copy_checkpoint(checkpoint_dir, tmp_path / "ckpt", drop="model.projector.layers.weight")
    with pytest.raises(DsocrError, match=r"missing keys: .*multi_modal_projector\.weight"):
        build_model("deepseek_ocr2", "tiny", path=str(folder))


def test_checkpoint_of_another_size_fails_naming_the_key(checkpoint_dir, tmp_path):
    folder = _copy_checkpoint(checkpoint_dir, tmp_path / "ckpt",
                              config_edit=lambda c: c["text_config"].update(vocab_size=2048))
    with pytest.raises(DsocrError, match="text_config.vocab_size=2048"):
        build_model("deepseek_ocr2", "tiny", path=str(folder))


def test_vendor_format_checkpoint_says_to_convert(checkpoint_dir, tmp_path):
    folder = _copy_checkpoint(checkpoint_dir, tmp_path / "ckpt",
                              config_edit=lambda c: c.update(model_type="deepseek_vl_v2"))
    with pytest.raises(DsocrError, match="deepseek_vl_v2.*convert_deepseek_ocr2_weights_to_hf"):
        build_model("deepseek_ocr2", "tiny", path=str(folder))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": "huge"}, "huge"),
    ({"size": "tiny", "path": "/nonexistent/v2ckpt"}, "/nonexistent/v2ckpt"),
    ({"size": "tiny", "dtype": "int3"}, "int3"),
])
def test_bad_input_names_it(kwargs, message):
    with pytest.raises(DsocrError, match=message):
        build_model("deepseek_ocr2", **kwargs)


def test_checkpoint_on_meta_is_refused(checkpoint_dir):
    with pytest.raises(DsocrError, match="meta"):
        build_model("deepseek_ocr2", "tiny", device="meta", path=str(checkpoint_dir))


def test_offline_tokenizer_is_v1s_and_decodes_every_id():
    tokenizer = load_tokenizer(None, TINY)
    assert tokenizer is build_offline_tokenizer(v1_spec.TINY) or tokenizer.get_vocab() == build_offline_tokenizer(
        v1_spec.TINY).get_vocab()
    text = tokenizer.decode(list(range(TINY.text.vocab_size)))
    assert "<image>" in text and "<|grounding|>" in text
    ids = tokenizer("<image>\n<|grounding|>Convert.")["input_ids"]
    assert ids[0] == TINY.bos_token_id and ids[1] == TINY.image_token_id


def test_every_size_makes_a_config():
    for name, spec in SPECS.items():
        config = model_config(spec)
        assert config.vision_config.sam_config.downsample_channels[-1] == spec.encoder.width, name
        assert config._attn_implementation == "sdpa", name
