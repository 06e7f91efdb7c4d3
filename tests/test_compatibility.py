"""Run identities and compatibility differences: what makes a baseline comparable, as pure functions."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from report_factory import make_metrics, noisy_runs, typed

from pytest_dsocr.config import load_config, to_container
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report import compatibility
from pytest_dsocr.report.compatibility import (
    ABSENT,
    ALLOWLIST,
    IDENTITY_KEY,
    Difference,
    check_compatibility,
    compatibility_differences,
    identity_from_metrics,
    run_identity,
)
from pytest_dsocr.report.gate import REGRESSION_FILE, compare_runs, run_gate
from pytest_dsocr.report.metrics import write_metrics

ENV = {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "device": "cuda:0",
       "device_name": "NVIDIA H100 80GB HBM3", "argv": ["pytest"], "git_commit": "abc1234", "cpu_count": 16}


@pytest.fixture(scope="module")
def config() -> dict:
    return to_container(load_config())


def identity(config, env=ENV, weights=None, **changes):
    """An identity of ``config`` with dotted config keys changed (``infer__temperature=0.7``)."""
    changed = copy.deepcopy(config)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = changed
        for key in parents:
            node = node[key]
        node[leaf] = value
    model = changed["model"]
    kind = "checkpoint" if model.get("path") else model["weights"]
    default = {"kind": kind, "seed": model["seed"] if kind == "random" else None, "path": model.get("path"),
               "index_sha256": None if kind == "random" else "0" * 64}
    return run_identity(changed, env, weights if weights is not None else default)


def keys(differences):
    return [d.key for d in differences]


def test_identity_holds_config_versions_device_and_weights(config):
    found = identity(config)
    assert found["config"] == config and found["config"] is not config  # a copy: later edits do not leak in
    assert found["software"] == {"torch": "2.13.0", "transformers": "5.23.0"}
    assert found["device"] == {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    assert found["weights"]["kind"] == config["model"]["weights"] == "bundled"
    assert "argv" not in str(found) and "git_commit" not in str(found)  # what cannot change a timing stays out


def test_same_run_has_no_differences(config):
    assert compatibility_differences(identity(config), identity(config)) == []


@pytest.mark.parametrize(
    ("change", "key", "values"),
    [
        ({"infer__decode_backend": "static"}, "config.infer.decode_backend", ("eager", "static")),
        ({"infer__temperature": 0.7}, "config.infer.temperature", (0.0, 0.7)),
        ({"infer__no_repeat_ngram_size": 0}, "config.infer.no_repeat_ngram_size", (20, 0)),
        ({"infer__prompt": "<image>\nFree OCR."}, "config.infer.prompt", (None, "<image>\nFree OCR.")),
        ({"infer__max_new_tokens": "inf"}, "config.infer.max_new_tokens", (64, "inf")),
        ({"infer__rounds": 5}, "config.infer.rounds", (1, 5)),
        ({"model__dtype": "bfloat16"}, "config.model.dtype", ("auto", "bfloat16")),
        ({"dataset__sampling__num_epochs": 2}, "config.dataset.sampling.num_epochs", (1, 2)),
    ],
)
def test_every_config_key_outside_the_allowlist_is_compared(config, change, key, values):
    differences = compatibility_differences(identity(config), identity(config, **change))
    assert keys(differences) == [key]
    before, after = values
    if before is not None:
        assert differences[0].baseline == before
    assert differences[0].current == after
    assert key in str(differences[0]) and str(after).splitlines()[0] in str(differences[0])


def test_random_vs_real_weights_differ_in_path_and_weights(config, tmp_path: Path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    differences = compatibility_differences(identity(config), identity(config, model__path=str(checkpoint)))
    assert "config.model.path" in keys(differences)
    assert "weights.kind" in keys(differences)
    kind = next(d for d in differences if d.key == "weights.kind")
    assert (kind.baseline, kind.current) == ("bundled", "checkpoint")


@pytest.mark.parametrize(
    ("env_change", "key"),
    [
        ({"torch": "2.12.1"}, "software.torch"),
        ({"transformers": "5.17.0"}, "software.transformers"),
        ({"device_name": "NVIDIA A100-SXM4-80GB"}, "device.name"),
        ({"device": "cpu", "device_name": "x86_64"}, "device.type"),
    ],
)
def test_versions_and_device_are_compared(config, env_change, key):
    differences = compatibility_differences(identity(config), identity(config, env={**ENV, **env_change}))
    assert key in keys(differences)


@pytest.mark.parametrize(
    "change",
    [
        {"run__dir": "runs/pr"},
        {"gate__max_regression": "5%"},
        {"gate__inconclusive": "warn"},
        {"pipeline__direct_inference__output__prediction__enable": False},
        {"hardware__name": "h100_sxm"},
        {"model__device": "cuda:1"},
        {"static_analysis__attention": "flash"},
    ],
)
def test_allowlisted_keys_are_not_differences(config, change):
    assert compatibility_differences(identity(config), identity(config, **change)) == []


def test_allowlist_is_short_and_documented():
    assert len(ALLOWLIST) <= 10
    source = Path(compatibility.__file__).read_text(encoding="utf-8")
    for prefix in ALLOWLIST:
        line = next(line for line in source.splitlines() if line.strip().startswith(f'"{prefix}",'))
        assert "#" in line, f"allowlisted {prefix} needs a comment saying why it cannot change a timing"


def test_another_gpu_of_the_same_kind_is_the_same_device(config):
    assert compatibility_differences(identity(config), identity(config, env={**ENV, "device": "cuda:3"})) == []


def test_a_key_only_one_identity_has_is_a_difference(config):
    newer = identity(config)
    newer["config"]["infer"]["speculative"] = True  # a key added by newer code
    differences = compatibility_differences(identity(config), newer)
    assert differences == [Difference("config.infer.speculative", ABSENT, True)]
    assert "<absent> vs True" in str(differences[0])


def test_unknown_weights_are_not_compared(config):
    unknown = run_identity(config, ENV, None)
    assert unknown["weights"] is None
    assert compatibility_differences(identity(config, weights={"kind": "checkpoint", "path": "/x"}), unknown) == []


def test_older_metrics_are_read_from_config_and_env(config):
    """A metrics.json without an identity section: its config and env sections are the identity,
    and keys it never recorded are unknown, not different."""
    legacy_config = copy.deepcopy(config)
    del legacy_config["infer"]["decode_backend"]  # recorded before the key existed
    legacy = {"config": legacy_config, "env": {k: v for k, v in ENV.items() if k != "transformers"}}
    rebuilt = identity_from_metrics(legacy)
    assert rebuilt["version"] == 0 and rebuilt["weights"] == {"kind": "bundled"}
    assert compatibility_differences(rebuilt, identity(config)) == []
    legacy["config"]["infer"]["temperature"] = 0.5
    legacy["env"]["torch"] = "2.11.0"
    found = compatibility_differences(identity_from_metrics(legacy), identity(config))
    assert keys(found) == ["config.infer.temperature", "software.torch"]
    assert (found[1].baseline, found[1].current) == ("2.11.0", "2.13.0")


def test_identity_from_metrics_prefers_the_stored_section(config):
    stored = identity(config)
    metrics = {IDENTITY_KEY: stored, "config": {"model": {"size": "other"}}, "env": {}}
    assert identity_from_metrics(metrics) == stored


def test_check_compatibility_raises_naming_every_key_unless_forced(config):
    base, current = identity(config), identity(config, infer__decode_backend="static", infer__temperature=0.5)
    with pytest.raises(DsocrError) as excinfo:
        check_compatibility(base, current, force=False)
    message = str(excinfo.value)
    assert "config.infer.temperature (0.0 vs 0.5)" in message
    assert "config.infer.decode_backend (eager vs static)" in message
    assert "--dsocr-baseline-force" in message
    assert keys(check_compatibility(base, current, force=True)) == ["config.infer.temperature",
                                                                     "config.infer.decode_backend"]


# --- through the gate ------------------------------------------------------------------------


def metrics_with_identity(config, seed, **changes):
    metrics = make_metrics(noisy_runs(12, seed=seed))
    metrics[IDENTITY_KEY] = identity(config, **changes)
    return metrics


def test_gate_refuses_a_baseline_with_another_decode_backend(config):
    with pytest.raises(DsocrError, match=r"config.infer.decode_backend \(eager vs static\)"):
        compare_runs(metrics_with_identity(config, 1), metrics_with_identity(config, 2, infer__decode_backend="static"))


def test_forced_differences_are_listed_in_regression_md(config, tmp_path: Path):
    baseline = metrics_with_identity(config, 1, infer__temperature=0.5)
    write_metrics(tmp_path / "base", typed(baseline))
    result = run_gate(metrics_with_identity(config, 2), tmp_path / "base", force=True, run_dir=tmp_path / "cur")
    assert keys(result.differences) == ["config.infer.temperature"]
    text = (tmp_path / "cur" / REGRESSION_FILE).read_text(encoding="utf-8")
    assert "Compared despite these differences from the baseline (forced):" in text
    assert "- `config.infer.temperature`: `0.5` (baseline) vs `0.0` (current)" in text


def test_differences_found_before_the_run_are_passed_through(config, tmp_path: Path):
    """The plugin checks before any model is built and hands the forced differences to run_gate."""
    found = [Difference("software.torch", "2.12.0", "2.13.0")]
    result = run_gate(metrics_with_identity(config, 2), metrics_with_identity(config, 1), force=True,
                      differences=found, run_dir=tmp_path)
    assert result.differences == tuple(found)
    assert "`software.torch`: `\"2.12.0\"` (baseline) vs `\"2.13.0\"` (current)" in (tmp_path / REGRESSION_FILE).read_text()


def test_profiled_runs_are_not_compared_with_plain_runs():
    baseline = make_metrics(noisy_runs(8, seed=1))
    current = make_metrics(noisy_runs(8, seed=2, stage="torch_profiler"))
    with pytest.raises(DsocrError, match=r"aggregates_stage \(direct_inference vs torch_profiler\)"):
        compare_runs(baseline, current)


def test_older_metrics_of_another_model_are_refused():
    with pytest.raises(DsocrError, match=r"config.model.size \(tiny vs full\)"):
        compare_runs(make_metrics(noisy_runs(8, seed=1)), make_metrics(noisy_runs(8, seed=2), size="full"))
