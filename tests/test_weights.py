"""model.weights: bundled (tiny, trained), random (seeded init), a checkpoint via model.path;
one resolution for both families, clear errors, and the identity recorded for provenance."""

from __future__ import annotations

import shutil

import pytest
import torch

from pytest_dsocr.config import load_config
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.families import family as registered
from pytest_dsocr.models import build_model, weights
from pytest_dsocr.records import Sample
from pytest_dsocr.session import build_adapter

FAMILIES = ("deepseek_ocr", "deepseek_ocr2")


def model_cfg(*overrides: str):
    return load_config(overrides=list(overrides)).model


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_presets_default_to_the_bundled_weights_and_full_to_random(family):
    assert model_cfg(f"model={family}/tiny").weights == "bundled"
    assert model_cfg(f"model={family}/full").weights == "random"
    assert load_config().model.weights == "bundled"


def test_bad_weights_value_names_the_key():
    with pytest.raises(DsocrError, match=r"model\.weights='trained': expected one of bundled, random"):
        load_config(overrides=["model.weights=trained"])


def test_bundled_weights_of_the_full_size_are_a_config_error():
    with pytest.raises(DsocrError, match=r"model\.weights=bundled: .* tiny only, not 'full'; set model\.weights=random"):
        load_config(overrides=["model.size=full"])
    assert load_config(overrides=["model.size=full", "model.weights=random"]).model.size == "full"


def test_model_path_wins_over_weights(tmp_path):
    folder = weights.bundled_path("deepseek_ocr")
    cfg = model_cfg(f"model.path={folder}", "model.size=full")  # no bundled-vs-full error with a path
    source = weights.resolve_weights(cfg)
    assert (source.kind, source.path, source.seed) == ("checkpoint", str(folder), None)


# --- resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_and_random_resolve_in_one_place(family):
    bundled = weights.resolve_weights(model_cfg(f"model={family}/tiny"))
    assert bundled.kind == "bundled" and bundled.path == str(weights.bundled_path(family))
    random = weights.resolve_weights(model_cfg(f"model={family}/tiny", "model.weights=random", "model.seed=3"))
    assert (random.kind, random.path, random.seed) == ("random", None, 3)


def test_missing_bundled_folder_or_file_is_a_clear_error(tmp_path, monkeypatch):
    shipped = weights.bundled_path("deepseek_ocr")
    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path)
    with pytest.raises(DsocrError, match=r"bundled deepseek_ocr/tiny weights in .*deepseek_ocr-tiny lack the folder"):
        weights.resolve_weights(model_cfg())
    shutil.copytree(shipped, tmp_path / "deepseek_ocr-tiny")
    (tmp_path / "deepseek_ocr-tiny" / "tokenizer.json").unlink()
    with pytest.raises(DsocrError, match=r"lack tokenizer\.json; reinstall .* or set model\.weights=random"):
        weights.resolve_weights(model_cfg())


@pytest.mark.parametrize("family", FAMILIES)
def test_corrupt_bundled_weights_are_a_clear_error(tmp_path, monkeypatch, family):
    source = weights.bundled_path(family)
    shutil.copytree(source, tmp_path / source.name)
    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path)
    for file in (tmp_path / source.name).glob("*.safetensors"):
        file.write_bytes(b"not a safetensors file")
    with pytest.raises(DsocrError, match=source.name):
        build_adapter(load_config(overrides=[f"model={family}/tiny"]), torch.device("cpu"), torch.float32)


def test_random_weights_are_the_seeded_random_build():
    adapter = build_adapter(load_config(overrides=["model.weights=random"]), torch.device("cpu"), torch.float32)
    reference = build_model("deepseek_ocr", "tiny", seed=0)
    for (name, ours), (_, theirs) in zip(adapter.model.named_parameters(), reference.named_parameters()):
        assert torch.equal(ours, theirs), name
    page = min(bundled_pages(), key=lambda p: p.stat().st_size)
    run = Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), 8).run(Sample(page, 0, 0, page.stem))
    assert run.finish_reason == "length" and run.tokens == 8  # random weights never reach EOS this soon
    assert "<|ref|>" not in run.text_raw


# --- identity ------------------------------------------------------------------------------


def test_weights_identity_names_kind_seed_and_folder(tmp_path):
    random = weights.weights_identity(model_cfg("model.weights=random", "model.seed=5"))
    assert random == {"kind": "random", "seed": 5, "path": None, "index_sha256": None}
    bundled = weights.weights_identity(model_cfg())
    assert bundled["kind"] == "bundled" and bundled["seed"] is None
    assert bundled["index_sha256"] == weights.folder_digest(weights.bundled_path("deepseek_ocr"))
    assert len(bundled["index_sha256"]) == 64
    v2 = weights.weights_identity(model_cfg("model=deepseek_ocr2/tiny"))
    assert v2["index_sha256"] != bundled["index_sha256"]


def test_checkpoint_identity_follows_the_index_or_the_file_list(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"x" * 10)
    cfg = model_cfg(f"model.path={folder}")
    listed = weights.weights_identity(cfg)
    assert listed["kind"] == "checkpoint" and listed["path"] == str(folder)
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"x" * 11)
    assert weights.weights_identity(cfg)["index_sha256"] != listed["index_sha256"]  # sizes count
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    indexed = weights.weights_identity(cfg)["index_sha256"]
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "b"}}')
    assert weights.weights_identity(cfg)["index_sha256"] != indexed


def test_bundled_index_records_each_file_hash():
    import hashlib
    import json

    for family in FAMILIES:
        folder = weights.bundled_path(family)
        index = json.loads((folder / weights.INDEX_NAME).read_text())
        files = sorted(folder.glob("*.safetensors"))
        assert set(index["weight_map"].values()) == {file.name for file in files}
        assert index["metadata"]["sha256"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_writes_a_checkpoint_its_builder_reads_back(family, tmp_path):
    """The registry's checkpoint writer (what train_tiny saves with) round-trips through the loader."""
    model = build_model(family, "tiny", seed=3)
    registered(family).load("checkpoint_writer")(model, tmp_path, torch.bfloat16)
    loaded = build_model(family, "tiny", path=str(tmp_path))
    expected = {name: t.to(torch.bfloat16) for name, t in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[name].to(torch.bfloat16), expected[name]) for name in expected)
