"""The offline DeepSeek-OCR v1 tokenizer and the local-folder loader."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY
from pytest_dsocr.models.deepseek_ocr.tokenizer import (
    BYTE_TOKEN_OFFSET,
    build_offline_tokenizer,
    load_tokenizer,
)

SPECS = [TINY, FULL]
MARKUP = [
    "<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<td>", "</td>", "<tr>", "</tr>",
]


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def spec_and_tokenizer(request):
    return request.param, build_offline_tokenizer(request.param)


def test_specials_have_the_spec_ids(spec_and_tokenizer):
    spec, tok = spec_and_tokenizer
    assert tok.bos_token == "<｜begin▁of▁sentence｜>" and tok.bos_token_id == spec.bos_token_id == 0
    assert tok.eos_token == "<｜end▁of▁sentence｜>" and tok.eos_token_id == spec.eos_token_id == 1
    assert tok.pad_token_id == 2
    for offset, token in enumerate(MARKUP):
        assert tok.encode(token, add_special_tokens=False) == [spec.image_token_id + offset], token
        assert tok.convert_ids_to_tokens(spec.image_token_id + offset) == token


def test_full_ids_are_the_checkpoints():
    tok = build_offline_tokenizer(FULL)
    ids = tok.convert_tokens_to_ids(MARKUP[:8])  # <image> .. </td>
    assert ids == [128815, 128816, 128817, 128818, 128819, 128820, 128821, 128822]


def test_every_id_decodes(spec_and_tokenizer):
    spec, tok = spec_and_tokenizer
    vocab = spec.text.vocab_size
    assert len(tok) == vocab
    texts = tok.batch_decode([[i] for i in range(vocab)])
    assert all(isinstance(t, str) and t for t in texts)
    assert texts[BYTE_TOKEN_OFFSET + ord("A")] == "A"
    assert texts[BYTE_TOKEN_OFFSET + ord(" ")] == " "
    assert texts[BYTE_TOKEN_OFFSET + ord("\n")] == "\n"
    assert texts[vocab - 1] == f"<filler_{vocab - 1}>"
    assert texts[spec.image_token_id] == "<image>"


@pytest.mark.parametrize(
    "text",
    [
        "Convert the document to markdown.",
        "Ünïcödé — 中文排版 😀 \t tabs\nand  double  spaces ",
        "<|ref|>title<|/ref|><|det|>[[12, 40, 988, 90]]<|/det|>\n# 1 Introduction",
        "<table><tr><td>a</td><td>β</td></tr></table>",
    ],
)
def test_unicode_round_trip(spec_and_tokenizer, text):
    _, tok = spec_and_tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    with_bos = tok.encode(text)
    assert with_bos[0] == 0 and with_bos[1:] == ids
    assert tok.decode(with_bos, skip_special_tokens=True) == text  # markup is not special


def test_full_tokenizer_is_built_once_per_spec():
    assert len(build_offline_tokenizer.__wrapped__(FULL)) == FULL.text.vocab_size
    assert build_offline_tokenizer(FULL) is build_offline_tokenizer(FULL)
    assert load_tokenizer(None, FULL) is build_offline_tokenizer(FULL)


def test_spec_without_room_for_the_markup_tokens():
    bad = dataclasses.replace(TINY, name="cramped", image_token_id=1020)
    with pytest.raises(DsocrError, match="image_token_id 1020"):
        build_offline_tokenizer(bad)


def _save_like_a_checkpoint(tok, folder):
    tok.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "LlamaTokenizerFast"  # what the DeepSeek-OCR checkpoint declares
    config_path.write_text(json.dumps(config))


def test_load_tokenizer_from_a_local_folder(tmp_path):
    offline = build_offline_tokenizer(TINY)
    _save_like_a_checkpoint(offline, tmp_path)
    loaded = load_tokenizer(str(tmp_path), TINY)
    text = "<image>\n<|grounding|>Convert the document to markdown. 中文"
    assert loaded.encode(text) == offline.encode(text)
    assert loaded.decode(loaded.encode(text), skip_special_tokens=True) == text


def test_load_tokenizer_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(DsocrError, match="no-such-checkpoint"):
        load_tokenizer(str(missing), FULL)


def test_load_tokenizer_without_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DsocrError, match=f"{tmp_path} lacks tokenizer.json, tokenizer_config.json"):
        load_tokenizer(str(tmp_path), FULL)


def test_load_tokenizer_broken_files_are_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(DsocrError, match=f"cannot load the tokenizer from {tmp_path}"):
        load_tokenizer(str(tmp_path), FULL)


def test_load_tokenizer_image_id_mismatch_names_both_ids(tmp_path):
    _save_like_a_checkpoint(build_offline_tokenizer(TINY), tmp_path)
    with pytest.raises(DsocrError, match=r"id 1000.*128815"):
        load_tokenizer(str(tmp_path), FULL)
