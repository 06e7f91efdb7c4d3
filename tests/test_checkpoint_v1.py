"""The checkpoint key map covers the published manifest exactly; load/export round-trips."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr.checkpoint import (
    CONFIG_FILE,
    checkpoint_key_map,
    export_state_dict,
    load_checkpoint,
    save_checkpoint,
    target_shape,
)
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY

MANIFEST = Path(__file__).parent / "data" / "deepseek-ocr-v1-checkpoint.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def full_meta():
    return build_model("deepseek_ocr", "full", device="meta")


def assert_partition(params: dict[str, torch.Size], key_map) -> None:
    """Every parameter element is filled by exactly one checkpoint tensor."""
    by_param = defaultdict(list)
    for target in key_map.values():
        by_param[target.param].append(target)
    assert set(by_param) == set(params), set(by_param) ^ set(params)
    for name, targets in by_param.items():
        shape = params[name]
        covered = sum(math.prod(target_shape(t, shape)) for t in targets)
        assert covered == math.prod(shape), name
        spans = defaultdict(list)
        for t in targets:
            if t.expert is not None:
                assert 0 <= t.expert < shape[0], name
            row_dim = shape[1] if t.expert is not None else shape[0]
            start, stop = t.rows if t.rows is not None else (0, row_dim)
            assert 0 <= start < stop <= row_dim, name
            spans[t.expert].append((start, stop))
        if None in spans:
            assert len(targets) == 1, f"{name}: filled whole and in parts"
        for rows in spans.values():
            rows.sort()
            assert all(a[1] <= b[0] for a, b in zip(rows, rows[1:])), f"{name}: overlapping rows"


def test_manifest_is_the_published_one(manifest):
    assert manifest["tensor_count"] == len(manifest["tensors"]) == 2710
    assert sum(math.prod(shape) for _, shape in manifest["tensors"]) == manifest["parameter_count"] == 3_336_106_240


def test_key_map_names_exactly_the_manifest_tensors(manifest):
    key_map = checkpoint_key_map(FULL)
    names = [name for name, _ in manifest["tensors"]]
    assert len(key_map) == len(names) == len(set(names))
    assert set(key_map) == set(names)


def test_every_manifest_tensor_fits_its_parameter_on_the_full_model(manifest, full_meta):
    params = {name: p.shape for name, p in full_meta.named_parameters()}
    key_map = checkpoint_key_map(full_meta.config.spec)
    for name, shape in manifest["tensors"]:
        target = key_map[name]
        assert target.param in params, name
        assert target_shape(target, params[target.param]) == tuple(shape), name
    assert_partition(params, key_map)


def test_key_map_covers_the_tiny_model():
    model = build_model("deepseek_ocr", "tiny", device="meta")
    assert_partition({name: p.shape for name, p in model.named_parameters()}, checkpoint_key_map(TINY))


def test_experts_stack_gate_then_up():
    key_map = checkpoint_key_map(FULL)
    inter = FULL.text.moe_intermediate_size
    gate = key_map["model.layers.3.mlp.experts.17.gate_proj.weight"]
    up = key_map["model.layers.3.mlp.experts.17.up_proj.weight"]
    down = key_map["model.layers.3.mlp.experts.17.down_proj.weight"]
    assert gate.param == up.param == "model.language_model.layers.3.mlp.experts.gate_up_proj"
    assert (gate.expert, gate.rows) == (17, (0, inter))
    assert (up.expert, up.rows) == (17, (inter, 2 * inter))
    assert (down.param, down.expert, down.rows) == ("model.language_model.layers.3.mlp.experts.down_proj", 17, None)
    assert key_map["model.sam_model.net_3.weight"].param == "model.sam_model.proj.conv2.weight"
    assert key_map["model.sam_model.neck.1.bias"].param == "model.sam_model.neck.layer_norm1.bias"
    assert key_map["model.sam_model.blocks.2.norm1.weight"].param == "model.sam_model.layers.2.layer_norm1.weight"


# -- round trip and bad checkpoints ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_source():
    return build_model("deepseek_ocr", "tiny", seed=0)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_source) -> Path:
    save_checkpoint(tiny_source, tmp_path / "ckpt", shards=2)
    return tmp_path / "ckpt"


def test_round_trip_restores_every_parameter(tiny_checkpoint, tiny_source):
    files = sorted(tiny_checkpoint.glob("*.safetensors"))
    assert len(files) == 2
    exported = export_state_dict(tiny_source)
    on_disk = {}
    for file in files:
        on_disk.update(load_file(str(file)))
    assert set(on_disk) == set(exported) == set(checkpoint_key_map(TINY))
    fresh = build_model("deepseek_ocr", "tiny", seed=1)
    assert not torch.equal(fresh.lm_head.weight, tiny_source.lm_head.weight)
    loaded = load_checkpoint(fresh, tiny_checkpoint)
    assert sorted(loaded) == sorted(exported)
    source = dict(tiny_source.named_parameters())
    for name, param in fresh.named_parameters():
        assert torch.equal(param, source[name]), name


def test_build_model_loads_a_checkpoint_folder(tiny_checkpoint, tiny_source):
    model = build_model("deepseek_ocr", "tiny", path=str(tiny_checkpoint), seed=5, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    expected = tiny_source.model.language_model.layers[1].mlp.experts.gate_up_proj.to(torch.bfloat16)
    assert torch.equal(model.model.language_model.layers[1].mlp.experts.gate_up_proj, expected)


def _rewrite(file: Path, change) -> None:
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def test_a_missing_tensor_is_named(tiny_checkpoint):
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    file = next(f for f in tiny_checkpoint.glob("*.safetensors") if name in load_file(str(f)))
    _rewrite(file, lambda t: t.pop(name))
    with pytest.raises(DsocrError, match=rf"lacks tensor '{name}'"):
        load_checkpoint(build_model("deepseek_ocr", "tiny"), tiny_checkpoint)


def test_an_unexpected_tensor_is_named_with_its_file(tiny_checkpoint):
    file = sorted(tiny_checkpoint.glob("*.safetensors"))[-1]
    _rewrite(file, lambda t: t.update({"model.vision_model.extra.weight": torch.zeros(2)}))
    with pytest.raises(DsocrError, match=r"unexpected tensor 'model.vision_model.extra.weight' in .*00002"):
        load_checkpoint(build_model("deepseek_ocr", "tiny"), tiny_checkpoint)


def test_a_wrong_shape_is_named_with_its_file(tiny_checkpoint):
    name = "model.sam_model.neck.2.weight"
    file = next(f for f in tiny_checkpoint.glob("*.safetensors") if name in load_file(str(f)))

    def shrink(tensors):
        tensors[name] = tensors[name][:, :, :1, :1].contiguous()

    _rewrite(file, shrink)
    with pytest.raises(DsocrError, match=rf"tensor '{name}' in {file}.* shape \[32, 32, 1, 1\].*\[32, 32, 3, 3\]"):
        load_checkpoint(build_model("deepseek_ocr", "tiny"), tiny_checkpoint)


def test_a_duplicated_tensor_is_named(tiny_checkpoint):
    files = sorted(tiny_checkpoint.glob("*.safetensors"))
    first = load_file(str(files[0]))
    name = next(iter(first))
    _rewrite(files[1], lambda t: t.update({name: first[name]}))
    with pytest.raises(DsocrError, match=rf"tensor '{name}' appears twice"):
        load_checkpoint(build_model("deepseek_ocr", "tiny"), tiny_checkpoint)


def test_a_config_of_another_size_is_refused(tiny_checkpoint):
    config_path = tiny_checkpoint / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["language_config"]["vocab_size"] = FULL.text.vocab_size
    config_path.write_text(json.dumps(config))
    with pytest.raises(DsocrError, match="language_config.vocab_size=129280"):
        load_checkpoint(build_model("deepseek_ocr", "tiny"), tiny_checkpoint)


@pytest.mark.parametrize("remove", ["folder", "config", "weights"])
def test_a_missing_path_or_file_is_named(tiny_checkpoint, remove):
    if remove == "folder":
        path, message = tiny_checkpoint / "nope", "no such folder"
    elif remove == "config":
        (tiny_checkpoint / CONFIG_FILE).unlink()
        path, message = tiny_checkpoint, "config.json is missing"
    else:
        for file in tiny_checkpoint.glob("*.safetensors"):
            file.unlink()
        path, message = tiny_checkpoint, r"no \*.safetensors files"
    with pytest.raises(DsocrError, match=message) as info:
        load_checkpoint(build_model("deepseek_ocr", "tiny"), path)
    assert str(path) in str(info.value)


def test_a_meta_model_cannot_be_loaded(tiny_checkpoint):
    with pytest.raises(DsocrError, match="meta"):
        load_checkpoint(build_model("deepseek_ocr", "tiny", device="meta"), tiny_checkpoint)
