"""The gate preset and the calibration replay (benchmarks/perf/gate_calibration.py) on synthetic recordings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_dsocr.config import load_config
from pytest_dsocr.errors import DsocrError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "gate_calibration.py"
PAGES = 6
PAIRS = 30


@pytest.fixture(scope="module")
def calibration():
    spec = importlib.util.spec_from_file_location("gate_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def recording(noise: float, blocks: int = 1, rounds: int = 8, seed: int = 0) -> dict:
    """A recording shaped like `gate_calibration.py record` writes, with log-normal round noise."""
    rng = np.random.default_rng(seed)

    def ms(base: float) -> float:
        return round(float(base * np.exp(noise * rng.standard_normal())), 3)

    data = {"started": "2026-01-01T00:00:00+00:00", "machine": {"platform": "test", "cpu_count": 2},
            "software": {"torch": "x", "git_commit": "x"},
            "config": {"model": "deepseek_ocr/tiny", "weights": "random", "max_new_tokens": 8}, "blocks": []}
    for _ in range(blocks):
        records = []
        for page in range(PAGES):
            size = 1 + page % 3
            for round_index in range(rounds):
                prefill, vision = ms(100 * size), ms(60 * size)
                records.append({
                    "sample_id": f"page_{page}", "prefill_len": 300 + page, "tokens": 8, "round": round_index,
                    "preprocess_ms": ms(5), "prefill_ms": prefill, "vision_ms": vision, "decode_ms": ms(300),
                    "ttft_ms": prefill + 5.0,
                    "substage_ms": {"sam": ms(30 * size), "clip": ms(25 * size), "projector": ms(1)},
                })
        data["blocks"].append({"loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.0, 1.0, 1.0], "records": records})
    return data


def settings():
    return {"threshold": 0.10, "alpha": 0.05, "min_pages": 6}


GATE = ["infer=gate", "sampling=gate"]


def test_the_gate_preset_spreads_several_rounds_of_every_page_over_epochs(calibration):
    cfg = load_config(overrides=GATE)
    assert cfg.infer.warmup_rounds >= 1 and cfg.infer.rounds == 1 and cfg.dataset.sampling.num_epochs >= 3
    assert cfg.dataset.sampling.num_samples_per_epoch is None and not cfg.dataset.sampling.randomize  # every page
    assert cfg.gate.inconclusive == "fail" and cfg.gate.min_pages == 6
    assert list(calibration.PRESET) == GATE and calibration.preset_values(cfg) == cfg.dataset.sampling.num_epochs


@pytest.mark.parametrize(("key", "value"), [("gate.inconclusive", "maybe"), ("gate.min_pages", "1"),
                                            ("gate.max_regression", "ten")])
def test_gate_config_is_validated_naming_the_key(key, value):
    with pytest.raises(DsocrError, match=key):
        load_config(overrides=[f"{key}={value}"])


def test_wilson_interval(calibration):
    rate = calibration.Rate(0, 500)
    assert rate.interval[0] == pytest.approx(0.0, abs=1e-12) and rate.interval[1] == pytest.approx(0.00762, abs=1e-4)
    low, high = calibration.Rate(475, 500).interval
    assert low == pytest.approx(0.9273, abs=1e-3) and high == pytest.approx(0.9661, abs=1e-3)


def test_quiet_recording_meets_the_goal(calibration, capsys, tmp_path):
    path = tmp_path / "quiet.json"
    path.write_text(json.dumps(recording(noise=0.01)), encoding="utf-8")
    assert calibration.report(calibration.load_recording(path), path, [5],
                              PAIRS, [0.10, 0.20], settings()) == 0
    out = capsys.readouterr().out
    assert "GOAL MET" in out and "MISSED" not in out


def test_noisy_recording_misses_the_goal_and_says_so(calibration, capsys, tmp_path):
    path = tmp_path / "noisy.json"
    path.write_text(json.dumps(recording(noise=0.4)), encoding="utf-8")
    assert calibration.report(calibration.load_recording(path), path, [5],
                              PAIRS, [0.10], settings()) == 1
    assert "MISSED at the preset" in capsys.readouterr().out


def test_replay_detects_what_it_injects(calibration):
    """A/B pairs at +20% on a quiet recording fail prefill nearly always; A/A pairs nearly never."""
    results = calibration.replay(recording(noise=0.02), rounds=3, pairs=PAIRS, slowdowns=[0.20], settings=settings())
    assert results["A/A"]["prefill fails"].value <= 0.05
    assert results["A/B +20%"]["prefill regressed"].value >= 0.95


def test_supported_thresholds_are_the_smallest_meeting_the_goal(calibration):
    highs = {"prefill": [1.02] * 95 + [1.08] * 5,  # 5 % of pairs reach 1.08: 7.5 % is too small
             "decode": [1.3] * 100,  # every pair's interval reaches 1.3: 30 % fails, 40 % passes
             "clip": [float("inf")] * 100}  # no verdict at all
    supported = {s.stage: s for s in calibration.supported_thresholds(highs)}
    assert supported["prefill"].threshold == 0.10 and supported["prefill"].false_alarms.hits == 0
    assert supported["decode"].threshold == 0.40
    assert supported["clip"].threshold is None
    assert calibration.whole_gate_rate(highs, {"prefill": 0.10, "decode": 0.40, "clip": 1.0}).value == 1.0
    assert calibration.whole_gate_rate({"prefill": highs["prefill"]}, {"prefill": 0.075}).hits == 5


def test_report_prints_the_thresholds_a_noisy_recording_supports(calibration, capsys, tmp_path):
    path = tmp_path / "noisy.json"
    path.write_text(json.dumps(recording(noise=0.15, blocks=2)), encoding="utf-8")
    calibration.report(calibration.load_recording(path), path, [5], PAIRS, [0.10], settings())
    out = capsys.readouterr().out
    assert "thresholds this machine supports at 5 rounds" in out and "across blocks" in out
    assert "--dsocr-set 'gate.per_stage={" in out
    assert "NOTE: the preset spreads a page's rounds over 5 epochs" in out  # the recording is consecutive
