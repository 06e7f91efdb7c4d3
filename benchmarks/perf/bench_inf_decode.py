"""Benchmark: infer.max_new_tokens=inf vs a numeric cap vs one generate(max_new_tokens=1) per token.

All arms decode the same page with the same prompt and produce the same number of tokens N:
the engine arms force EOS as token N (so `inf` stops exactly there), and the naive arm calls
`model.generate(max_new_tokens=1)` N times on the growing sequence. Prints the median times
(min / median / max over repeats) and the ratios inf / numeric (goal <= 1.02) and
naive / numeric. A missed goal prints MISSED and exits 1.

    python benchmarks/perf/bench_inf_decode.py                      # tiny model, CPU
    python benchmarks/perf/bench_inf_decode.py --size full --device cuda --tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from transformers import ForcedEOSTokenLogitsProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_arguments, build, spread, timed  # noqa: E402
from goals import Goal, report  # noqa: E402

from pytest_dsocr.engine import Engine  # noqa: E402

INF_RATIO_GOAL = 1.02  # decoding until EOS may cost at most 2% more than the same tokens under a cap


def naive_loop(adapter, policy, sample, tokens: int) -> list[int]:
    """One generate(max_new_tokens=1) call per token: every call re-runs vision and prefill."""
    prepared = adapter.prepare(adapter.load(sample.image_path))
    ids, mask = prepared.input_ids, prepared.images_seq_mask
    out: list[int] = []
    for _ in range(tokens):
        with torch.inference_mode():
            step = adapter.model.generate(
                input_ids=ids, images=prepared.images, images_seq_mask=mask,
                images_spatial_crop=prepared.images_spatial_crop, attention_mask=torch.ones_like(ids),
                max_new_tokens=1, pad_token_id=policy.eos_token_id, **policy.generate_kwargs())
        token = step[:, -1:]
        out.append(int(token))
        ids = torch.cat([ids, token], dim=1)
        mask = torch.cat([mask, torch.zeros_like(token, dtype=torch.bool)], dim=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per run (N)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-repeats", type=int, default=1)
    args = parser.parse_args(argv)
    cfg, adapter, policy, sample = build(args)
    n = args.tokens

    def force_eos(prompt_len: int):
        return [ForcedEOSTokenLogitsProcessor(prompt_len + n, policy.eos_token_id, device=str(adapter.device))]

    numeric = Engine(adapter, policy, n, extra_processors=force_eos)
    infinite = Engine(adapter, policy, None, extra_processors=force_eos)
    numeric.run(sample)  # warm both paths once
    infinite.run(sample)
    arms: dict[str, list[float]] = {"numeric": [], "inf": []}
    decode: dict[str, list[float]] = {"numeric": [], "inf": []}
    for _ in range(args.repeats):  # interleaved so drift hits both arms alike
        for name, engine in (("numeric", numeric), ("inf", infinite)):
            wall, run = timed(lambda: engine.run(sample), adapter.device)
            assert run.tokens == n, f"{name}: {run.tokens} tokens, expected {n}"
            arms[name].append(wall)
            decode[name].append(run.decode_ms)
    naive = []
    for _ in range(args.naive_repeats):
        wall, ids = timed(lambda: naive_loop(adapter, policy, sample, n), adapter.device)
        assert len(ids) == n
        naive.append(wall)

    med = {k: statistics.median(v) for k, v in arms.items()}
    print(f"model {args.size} on {adapter.device} ({adapter.dtype}), page {sample.sample_id}, N={n} tokens")
    print(f"{'arm':<34} {'wall ms (min / median / max)':>32} {'decode ms (median)':>20}")
    print(f"{'engine, max_new_tokens=' + str(n):<34} {spread(arms['numeric']):>32} {statistics.median(decode['numeric']):>20.2f}")
    print(f"{'engine, max_new_tokens=inf':<34} {spread(arms['inf']):>32} {statistics.median(decode['inf']):>20.2f}")
    print(f"{'naive generate(max_new_tokens=1)':<34} {spread(naive):>32} {'-':>20}")
    print(f"ratio inf / numeric (wall)   : {med['inf'] / med['numeric']:.3f}")
    print(f"ratio inf / numeric (decode) : {statistics.median(decode['inf']) / statistics.median(decode['numeric']):.3f}")
    print(f"ratio naive / numeric (wall) : {statistics.median(naive) / med['numeric']:.1f}")
    return report([Goal("wall time max_new_tokens=inf / numeric cap", med["inf"] / med["numeric"], "<=",
                        INF_RATIO_GOAL)])


if __name__ == "__main__":
    raise SystemExit(main())
