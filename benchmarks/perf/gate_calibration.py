"""Calibrate the regression gate on real per-page timings of this machine.

Two steps:

``record``: runs the embedded default (tiny DeepSeek-OCR, bundled pages, CPU) through the
project's engine with the gate presets' settings (``infer=gate sampling=gate``), in blocks
spread over time. A block is what one CI run does, only with more measured rounds per page:
with ``--interleaved`` (as the presets run) passes over every page, each page's warmup round
then one measured round; without, each page's warmup then its rounds back to back. Every
measured round's stage times are kept in a small JSON file with the machine, the load average
and the date.

``replay`` (the default): draws A/A pairs (baseline and current resampled from the same
recording) and A/B pairs (the current run's prefill slowed by +5%, +10% and +20%; ttft and e2e
move with it, vision and its sub-stages do not) by resampling rounds per page with replacement,
applies the gate at the preset's pages x rounds, and prints the false-alarm rate and the
detection rate with their binomial (Wilson) intervals. A "false alarm" is an A/A pair the gate
fails (exit status non-zero with the default ``inconclusive=fail``): of the calibrated stage, and
of the whole gate (any stage). "Detection" is an A/B pair whose prefill row fails the gate. It
also replays pairs whose baseline and current come from different recording blocks (run-to-run
drift of the machine, what CI sees), the same pairs judged by a sign-flip permutation test
instead of the t interval, and prints the thresholds the machine supports: per stage, the
smallest at which A/A pairs fail it at most 1% of the time, as ``gate.per_stage`` config.

Goal at the preset: false alarms <= 1% and detection of +10% >= 95%, both within one recording
and across its blocks. A missed goal prints a MISSED line and exits 1.

    python benchmarks/perf/gate_calibration.py record --blocks 4 --rounds 6 --interleaved
    python benchmarks/perf/gate_calibration.py                 # replay the committed recording
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parent / "data" / "gate_calibration_cpu_interleaved.json"
PRESET = ("infer=gate", "sampling=gate")  # the gate's presets: rounds per page, and epochs spreading them
# Stage times of a record that the gate reads (through report.metrics.sample_metrics).
RECORD_KEYS = ("sample_id", "prefill_len", "tokens", "preprocess_ms", "prefill_ms", "vision_ms",
               "decode_ms", "ttft_ms", "substage_ms")
MS_DIGITS = 3
# What a record needs besides RECORD_KEYS to be read back as an ImageRun (not timing-related).
RECORD_FILLER = {"image_path": "", "epoch": 0, "round": 0, "stage": "direct_inference", "image_tokens": 0,
                 "crop_grid": [1, 1]}
DEFAULT_ALPHA = 0.05  # the gate's default: a 95% interval


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _record_json(run) -> dict:
    data = run.to_json()
    kept = {key: data[key] for key in RECORD_KEYS}
    for key in ("preprocess_ms", "prefill_ms", "vision_ms", "decode_ms", "ttft_ms"):
        kept[key] = round(kept[key], MS_DIGITS)
    kept["substage_ms"] = {name: round(ms, MS_DIGITS) for name, ms in kept["substage_ms"].items()}
    return kept


def record(out: Path, blocks: int, rounds: int, pause_s: float, device: str = "cpu",
           interleaved: bool = False) -> None:
    """Measure ``blocks`` blocks of (warmup + ``rounds``) rounds per page; rewrite ``out`` after each block.

    ``interleaved``: a block is ``rounds`` passes over every page (each pass: a page's warmup,
    then one measured round), as a run of ``rounds`` epochs of one round measures them, so a
    page's rounds are spread over the block rather than taken back to back.
    """
    import torch
    import transformers

    from pytest_dsocr.config import load_config, to_container
    from pytest_dsocr.data.datasets import discover_images
    from pytest_dsocr.data.sampling import sample_images
    from pytest_dsocr.env import device_name
    from pytest_dsocr.session import DsocrSession

    cfg = load_config(overrides=[*PRESET, f"model.device={device}"])
    session = DsocrSession(cfg, collector=None)  # the engine, adapter and policy of a real session
    # The pages of one epoch: the record's blocks and passes stand for the preset's epochs.
    samples = [s for s in sample_images(discover_images(cfg.dataset), cfg.dataset.sampling) if s.epoch == 0]
    data = {
        "what": "per-round stage times of the embedded default, recorded for the regression gate's calibration",
        "machine": {"platform": platform.platform(), "processor": device_name(session.device),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "git_commit": _git_commit()},
        "config": {"preset": " ".join(PRESET), "model": f"{cfg.model.family}/{cfg.model.size}",
                   "weights": cfg.model.path or (f"random (seed {cfg.model.seed})" if cfg.model.weights == "random"
                                                   else str(cfg.model.weights)),
                   "max_new_tokens": to_container(cfg)["infer"]["max_new_tokens"],
                   "warmup_rounds": cfg.infer.warmup_rounds, "pages": [s.sample_id for s in samples],
                   "order": "interleaved" if interleaved else "consecutive"},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "blocks": [],
    }
    session.adapter  # built before the first block, as the plugin does before the first test
    for block in range(blocks):
        if block and pause_s:
            time.sleep(pause_s)
        entry = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "loadavg_start": _loadavg(), "records": []}
        passes = [(samples, range(rounds))] if not interleaved else [(samples, [r]) for r in range(rounds)]
        for pass_samples, pass_rounds in passes:
            for sample in pass_samples:
                for warmup in range(cfg.infer.warmup_rounds):
                    session.run(sample, measured=False, round_index=warmup)
                for round_index in pass_rounds:
                    run = session.run(sample, round_index=round_index)
                    entry["records"].append({**_record_json(run), "round": round_index,
                                             "loadavg_1m": _loadavg()[0]})
        entry["loadavg_end"] = _loadavg()
        entry["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        data["blocks"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"block {block + 1}/{blocks}: {len(entry['records'])} rounds, load average "
              f"{entry['loadavg_start'][0]} -> {entry['loadavg_end'][0]}", flush=True)


# --- replay ----------------------------------------------------------------------------------

DEFAULT_PAIRS = 500
DEFAULT_SLOWDOWNS = (0.05, 0.10, 0.20)
CALIBRATED_STAGE = "prefill"
# Quantities that contain prefill and move with it when it slows down (the others stay put).
MOVES_WITH_PREFILL = ("prefill", "ttft", "e2e")
GOAL_FALSE_ALARMS = 0.01
GOAL_DETECTION = 0.95
GOAL_SLOWDOWN = 0.10
Z_95 = 1.959963984540054  # two-sided 95% normal quantile, for the Wilson interval
SEED = 13


@dataclass(frozen=True)
class Rate:
    """``hits`` of ``trials`` with the Wilson 95% interval of the rate."""

    hits: int
    trials: int

    @property
    def value(self) -> float:
        return self.hits / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        n, p, z = self.trials, self.value, Z_95
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{100 * self.value:5.1f}% [{100 * low:4.1f}, {100 * high:5.1f}] ({self.hits}/{self.trials})"


def load_recording(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data.get("blocks"):
        raise SystemExit(f"{path}: no recorded blocks; run `{Path(__file__).name} record` first")
    return data


Pools = dict[str, dict[str, np.ndarray]]  # stage -> page -> recorded round values


def pools_of(records: Sequence[Mapping]) -> Pools:
    """The recorded rounds as the gate reads them (``sample_metrics``, page keys as ``values_by_page``
    makes them), one array per stage and page, aligned by round: index i of every stage is the
    same round (NaN where a round lacks the stage, e.g. tpot of a one-token run; the gate's
    per-page median skips it)."""
    from pytest_dsocr.records import ImageRun
    from pytest_dsocr.report.gate import page_key
    from pytest_dsocr.report.metrics import sample_metrics

    rows: dict[str, list[dict[str, float]]] = {}
    for record in records:
        run = ImageRun.from_json({**RECORD_FILLER, **record})
        rows.setdefault(page_key(run.sample_id, run.prefill_len), []).append(sample_metrics(run))
    stages = list(dict.fromkeys(stage for page_rows in rows.values() for row in page_rows for stage in row))
    return {stage: {page: np.array([row.get(stage, math.nan) for row in page_rows]) for page, page_rows in rows.items()}
            for stage in stages}


def block_pools(data: Mapping) -> tuple[Pools, list[Pools]]:
    """All blocks pooled, and each block on its own."""
    blocks = [pools_of(block["records"]) for block in data["blocks"]]
    return pools_of([r for block in data["blocks"] for r in block["records"]]), blocks


def draw_indices(pools: Pools, rounds: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Which recorded rounds one simulated run takes: ``rounds`` per page, with replacement."""
    return {page: rng.integers(0, len(values), size=rounds) for page, values in pools[CALIBRATED_STAGE].items()}


def run_values(pools: Pools, picks: Mapping[str, np.ndarray], stages: Sequence[str], factor: float = 1.0
               ) -> dict[str, dict[str, list[float]]]:
    """Stage -> page -> the drawn rounds' values, the calibrated stage slowed by ``factor``
    (and the quantities containing it, ttft and e2e, by the same milliseconds)."""
    extra = {page: pools[CALIBRATED_STAGE][page][idx] * (factor - 1.0) for page, idx in picks.items()}
    values = {}
    for stage in stages:
        moved = factor != 1.0 and stage in MOVES_WITH_PREFILL
        values[stage] = {page: list(pools[stage][page][idx] + (extra[page] if moved else 0.0))
                         for page, idx in picks.items()}
    return values


def draw_pair(pooled: Pools, blocks: Sequence[Pools], cross_block: bool, rounds: int, stages: Sequence[str],
              rng: np.random.Generator, factor: float = 1.0) -> tuple[dict, dict]:
    """One simulated (baseline, current) pair of stage -> page -> values: both from the pooled
    recording, or each from a different recording block; the current run slowed by ``factor``."""
    if cross_block:
        first, second = rng.choice(len(blocks), size=2, replace=False)
        base_pools, cur_pools = blocks[first], blocks[second]
    else:
        base_pools = cur_pools = pooled
    base = run_values(base_pools, draw_indices(base_pools, rounds, rng), stages)
    return base, run_values(cur_pools, draw_indices(cur_pools, rounds, rng), stages, factor)


def signflip_fails(base: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]],
                   threshold: float, alpha: float) -> bool:
    """The alternative test: an exact sign-flip permutation test of the mean per-page log ratio
    against log(1 + threshold), one-sided at alpha / 2; fails unless confidently below the bound."""
    from pytest_dsocr.report.gate import page_medians

    b, c = page_medians(base), page_medians(current)
    keys = [k for k in c if k in b]
    shifted = np.log([c[k] / b[k] for k in keys]) - math.log1p(threshold)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(shifted))).reshape(len(shifted), -1).T
    flipped = (signs * np.abs(shifted)).mean(axis=1)
    p_below = float(np.mean(flipped <= shifted.mean() + 1e-12))  # H0: mean >= bound, against below
    return not p_below < alpha / 2


@dataclass(frozen=True)
class Scenario:
    label: str
    factor: float  # current / baseline of the calibrated stage
    cross_block: bool  # baseline and current drawn from different recording blocks


def replay(data: Mapping, *, rounds: int, pairs: int, slowdowns: Sequence[float], settings: Mapping,
           seed: int = SEED) -> dict[str, dict[str, Rate]]:
    """Scenario label -> measure -> Rate, for A/A (factor 1) and A/B (1 + each slowdown) pairs.

    Every pair goes through the gate's own ``judge`` (per-page medians, t interval, verdict) at
    the given pages x rounds; A/A pairs are judged on every stage (a false alarm of the whole
    gate is any stage failing), A/B pairs on the calibrated stage.
    """
    from pytest_dsocr.report.gate import judge

    pooled, blocks = block_pools(data)
    all_stages = list(pooled)
    scenarios = [Scenario("A/A", 1.0, False)] + [Scenario(f"A/B +{s:.0%}", 1.0 + s, False) for s in slowdowns]
    if len(blocks) > 1:
        scenarios += [Scenario("A/A across blocks", 1.0, True),
                      Scenario(f"A/B +{GOAL_SLOWDOWN:.0%} across blocks", 1.0 + GOAL_SLOWDOWN, True)]
    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, Rate]] = {}
    for scenario in scenarios:
        stages = all_stages if scenario.factor == 1.0 else [CALIBRATED_STAGE]
        stage_fails = gate_fails = regressed = signflip = 0
        for _ in range(pairs):
            base, cur = draw_pair(pooled, blocks, scenario.cross_block, rounds, stages, rng, scenario.factor)
            rows = {stage: judge(stage, base[stage], cur[stage], **settings) for stage in stages}
            row = rows[CALIBRATED_STAGE]
            stage_fails += not row.passed
            regressed += row.verdict == "regressed"
            gate_fails += any(not r.passed for r in rows.values())
            signflip += signflip_fails(base[CALIBRATED_STAGE], cur[CALIBRATED_STAGE], row.threshold,
                                       settings["alpha"])
        results[scenario.label] = {
            f"{CALIBRATED_STAGE} fails": Rate(stage_fails, pairs),
            f"{CALIBRATED_STAGE} regressed": Rate(regressed, pairs),
            "sign-flip test fails": Rate(signflip, pairs),
        }
        if scenario.factor == 1.0:
            results[scenario.label]["whole gate fails"] = Rate(gate_fails, pairs)
    return results


THRESHOLD_GRID = (0.05, 0.075, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50, 0.75, 1.00)


@dataclass(frozen=True)
class Supported:
    """The smallest threshold of THRESHOLD_GRID at which A/A pairs fail a stage at most
    GOAL_FALSE_ALARMS of the time (None: not even the largest), with that rate."""

    stage: str
    threshold: float | None
    false_alarms: Rate


def aa_upper_bounds(data: Mapping, *, rounds: int, pairs: int, settings: Mapping, seed: int
                    ) -> tuple[dict[str, list[float]], str]:
    """Stage -> the upper end of the ratio interval of each A/A pair (inf without a verdict).

    A stage passes at threshold t exactly when that upper end lies below 1 + t (within
    threshold, or improved), so one set of pairs prices every threshold. Pairs are drawn across
    recording blocks when there are several (run-to-run, as CI compares a stored baseline),
    else from the pooled recording."""
    from pytest_dsocr.report.gate import judge

    pooled, blocks = block_pools(data)
    stages = list(pooled)
    cross = len(blocks) > 1
    rng = np.random.default_rng(seed)
    highs: dict[str, list[float]] = {stage: [] for stage in stages}
    for _ in range(pairs):
        base, cur = draw_pair(pooled, blocks, cross, rounds, stages, rng)
        for stage in stages:
            row = judge(stage, base[stage], cur[stage], **settings)
            highs[stage].append(math.inf if row.ci_high is None else row.ci_high)
    return highs, "across blocks" if cross else "pooled"


def supported_thresholds(highs: Mapping[str, Sequence[float]]) -> list[Supported]:
    """Per stage, the smallest grid threshold meeting the false-alarm goal on ``highs``."""
    result = []
    for stage, values in highs.items():
        chosen, rate = None, Rate(len(values), len(values))
        for threshold in THRESHOLD_GRID:
            fails = sum(high >= 1.0 + threshold for high in values)
            if fails / len(values) <= GOAL_FALSE_ALARMS:
                chosen, rate = threshold, Rate(fails, len(values))
                break
        result.append(Supported(stage, chosen, rate))
    return result


def whole_gate_rate(highs: Mapping[str, Sequence[float]], thresholds: Mapping[str, float | None]) -> Rate:
    """How often an A/A pair fails any stage at the given per-stage thresholds (None: never passes)."""
    pairs = len(next(iter(highs.values())))
    fails = sum(any(thresholds[stage] is None or highs[stage][i] >= 1.0 + thresholds[stage] for stage in highs)
                for i in range(pairs))
    return Rate(fails, pairs)


def report_supported(data: Mapping, rounds: int, pairs: int, settings: Mapping) -> None:
    """Print the per-stage thresholds this recording supports, as config, and what the whole gate
    and the detection of +10% on the calibrated stage come to with them (on fresh pairs)."""
    highs, how = aa_upper_bounds(data, rounds=rounds, pairs=pairs, settings=settings, seed=SEED + 1)
    supported = supported_thresholds(highs)
    print(f"\nthresholds this machine supports at {rounds} rounds: the smallest of "
          f"{', '.join(f'{t:g}' for t in THRESHOLD_GRID)} at which A/A pairs ({how}) fail the stage "
          f"<= {GOAL_FALSE_ALARMS:.0%} of the time")
    for entry in supported:
        shown = "none of them" if entry.threshold is None else f"{entry.threshold:.1%}"
        print(f"  {entry.stage:10s} {shown:>12s}   A/A fails {entry.false_alarms}")
    chosen = {entry.stage: entry.threshold for entry in supported}
    config = ", ".join(f'{stage}: "{t * 100:g}%"' for stage, t in chosen.items() if t is not None)
    print(f"  as config: --dsocr-set 'gate.per_stage={{{config}}}'")
    fresh, _ = aa_upper_bounds(data, rounds=rounds, pairs=pairs, settings=settings, seed=SEED + 2)
    print(f"  whole gate with these thresholds, fresh A/A pairs: fails {whole_gate_rate(fresh, chosen)}")
    threshold = chosen.get(CALIBRATED_STAGE)
    if threshold is not None:
        detection = replay(data, rounds=rounds, pairs=pairs, slowdowns=(GOAL_SLOWDOWN,),
                           settings={**settings, "threshold": threshold}, seed=SEED + 3)
        label = f"A/B +{GOAL_SLOWDOWN:.0%} across blocks" if f"A/B +{GOAL_SLOWDOWN:.0%} across blocks" in detection \
            else f"A/B +{GOAL_SLOWDOWN:.0%}"
        print(f"  {CALIBRATED_STAGE} at {threshold:.1%}: a +{GOAL_SLOWDOWN:.0%} slowdown fails it "
              f"{detection[label][f'{CALIBRATED_STAGE} fails']} ({label})")


def preset_values(cfg) -> int:
    """Measured values per page at the preset: its epochs x its rounds per epoch."""
    return cfg.dataset.sampling.num_epochs * cfg.infer.rounds


def preset_wall_s(data: Mapping, values: int, warmup: int) -> float:
    """Inference time of ``values`` measured rounds per page on the recorded machine, in the
    recording's order: each after its own warmup when interleaved (one round per epoch), else
    one warmup and the rounds back to back; per page, runs x the median recorded end-to-end time
    (model build, start-up and outputs not included)."""
    pooled, _ = block_pools(data)
    interleaved = data["config"].get("order") == "interleaved"
    runs = values * (warmup + 1) if interleaved else warmup + values
    return sum(runs * float(np.median(v)) for v in pooled["e2e"].values()) / 1e3


def report(data: Mapping, path: Path, rounds_list: Sequence[int], pairs: int, slowdowns: Sequence[float],
           settings: Mapping, supported: bool = True) -> int:
    """Print the machine, the rates per rounds value, and the goal's verdict at the preset; 1 when missed."""
    from pytest_dsocr.config import load_config

    cfg = load_config(overrides=list(PRESET))
    epochs = cfg.dataset.sampling.num_epochs
    preset_rounds, warmup = preset_values(cfg), cfg.infer.warmup_rounds
    blocks = data["blocks"]
    pages = sorted({r["sample_id"] for b in blocks for r in b["records"]})
    per_page = len(blocks[0]["records"]) // max(1, len(pages))
    loads = [b["loadavg_start"][0] for b in blocks] + [b["loadavg_end"][0] for b in blocks]
    print(f"recording: {path.name}, {data['started']}, {data['machine']['platform']}, "
          f"{data['machine']['cpu_count']} CPUs, torch {data['software']['torch']}, "
          f"commit {data['software']['git_commit']}")
    print(f"  {data['config']['model']} ({data['config']['weights']}), max_new_tokens "
          f"{data['config']['max_new_tokens']}, {len(pages)} pages x {len(blocks)} blocks x {per_page} rounds; "
          f"load average (1 min) {min(loads):.1f} .. {max(loads):.1f}")
    order = data["config"].get("order", "consecutive")
    if (epochs > 1) != (order == "interleaved"):
        print(f"  NOTE: the preset spreads a page's rounds over {epochs} epochs, the recording took them "
              f"{order}: record again with{'' if epochs > 1 else 'out'} --interleaved for figures of the preset")
    print(f"gate: threshold {settings['threshold']:.0%}, {1 - settings['alpha']:.0%} t interval, min pages "
          f"{settings['min_pages']}; calibrated stage: {CALIBRATED_STAGE} (A/B slows it; ttft and e2e move with it)")
    missed = []
    for rounds in rounds_list:
        marker = "  <- preset" if rounds == preset_rounds else ""
        print(f"\n{len(pages)} pages x {rounds} measured rounds (each after {warmup} warmup), {pairs} pairs per "
              f"scenario; inference time here about {preset_wall_s(data, rounds, warmup):.0f} s{marker}")
        results = replay(data, rounds=rounds, pairs=pairs, slowdowns=slowdowns, settings=settings)
        for label, measures in results.items():
            for measure, rate in measures.items():
                print(f"  {label:24s} {measure:22s} {rate}")
        if supported:
            report_supported(data, rounds, pairs, settings)
        if rounds == preset_rounds:
            # Judged on both: pairs resampled from the pooled recording (no run-to-run drift) and,
            # with several blocks, pairs whose baseline and current come from different blocks
            # (what CI sees when it compares against a baseline recorded earlier).
            for scenario in ("A/A", "A/A across blocks"):
                if scenario in results:
                    false_alarms = results[scenario]["whole gate fails"]
                    if false_alarms.value > GOAL_FALSE_ALARMS:
                        missed.append(f"false alarms ({scenario}) {false_alarms} > {GOAL_FALSE_ALARMS:.0%}")
            for scenario in (f"A/B +{GOAL_SLOWDOWN:.0%}", f"A/B +{GOAL_SLOWDOWN:.0%} across blocks"):
                if scenario in results:
                    detection = results[scenario][f"{CALIBRATED_STAGE} fails"]
                    if detection.value < GOAL_DETECTION:
                        missed.append(f"detection ({scenario}) {detection} < {GOAL_DETECTION:.0%}")
    if preset_rounds not in rounds_list:
        print(f"\n(the preset's {preset_rounds} rounds were not replayed: no goal verdict)")
        return 0
    if missed:
        print(f"\nMISSED at the preset ({' '.join(PRESET)}: {len(pages)} pages x {preset_rounds} rounds): "
              + "; ".join(missed))
        return 1
    print(f"\nGOAL MET at the preset ({' '.join(PRESET)}: {len(pages)} pages x {preset_rounds} rounds): false alarms <= "
          f"{GOAL_FALSE_ALARMS:.0%}, detection of +{GOAL_SLOWDOWN:.0%} >= {GOAL_DETECTION:.0%}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("record", help="measure per-round stage times on this machine")
    rec.add_argument("--out", type=Path, default=DATA_FILE)
    rec.add_argument("--blocks", type=int, default=4, help="separate blocks, spread over time")
    rec.add_argument("--rounds", type=int, default=6, help="measured rounds per page and block")
    rec.add_argument("--pause", type=float, default=30.0, help="seconds between blocks")
    rec.add_argument("--device", default="cpu", help="cpu (the embedded default) | cuda | cuda:N")
    rec.add_argument("--interleaved", action="store_true",
                     help="spread each page's rounds over the block (passes over all pages, as epochs do)")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="recording to replay")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="pairs per scenario")
    parser.add_argument("--rounds", type=int, nargs="+", default=None,
                        help="measured rounds per page to replay (default: the preset's)")
    parser.add_argument("--slowdowns", type=float, nargs="+", default=list(DEFAULT_SLOWDOWNS))
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out, args.blocks, args.rounds, args.pause, args.device, args.interleaved)
        return 0
    from pytest_dsocr.config import load_config
    from pytest_dsocr.report.gate import parse_threshold

    cfg = load_config(overrides=list(PRESET))
    settings = {"threshold": parse_threshold(cfg.gate.max_regression, "gate.max_regression"),
                "alpha": DEFAULT_ALPHA, "min_pages": cfg.gate.min_pages}
    rounds = args.rounds or [preset_values(cfg)]
    return report(load_recording(args.data), args.data, rounds, args.pairs, args.slowdowns, settings)


if __name__ == "__main__":
    sys.exit(main())
