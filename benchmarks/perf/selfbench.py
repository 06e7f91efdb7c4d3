"""Self-benchmark on a GPU: harness overhead, decode against the memory floor, batch scaling.

One process, one fixed page, a fixed number of generated tokens (EOS suppressed, so every run
generates the same count), every figure min / median / max over repeats, arms interleaved:

- harness: the engine's direct_inference path vs a bare ``model.generate`` on the same
  prepared inputs (goal <= 1.02);
- ``max_new_tokens=inf`` vs the numeric cap at equal token count (goal <= 1.02);
- NVTX ranges + stage timers on vs off (goal <= 1 %);
- TTFT, prefill (vision + decoder) and decode TPOT for decode_backend eager and static, against
  the analytic floor of the cost model on this GPU (MFU for vision/prefill, MBU for decode);
- static-vs-eager token parity;
- batch 1, 4, 16 pages through ``generate``: pages/s and tokens/s.

Prints one table and writes ``selfbench.json`` under ``--out``.

    python benchmarks/perf/selfbench.py --size full --tokens 128 --out runs/selfbench
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import ForcedEOSTokenLogitsProcessor, MinNewTokensLengthLogitsProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_arguments, build, spread, timed  # noqa: E402

from pytest_dsocr.analytic import DeepseekOCRCostModel  # noqa: E402
from pytest_dsocr.analytic.efficiency import Measured, efficiency  # noqa: E402
from pytest_dsocr.engine import Engine, ProfilingHooks  # noqa: E402
from pytest_dsocr.env import collect_env  # noqa: E402
from pytest_dsocr.hardware import select_hardware  # noqa: E402
from pytest_dsocr.static_decode import StaticDecoder  # noqa: E402

DTYPE_BYTES = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class DecodeOnlyCapture(ProfilingHooks):
    """cudaProfilerStart/Stop around the decode stage only."""

    def stage_range(self, name: str):
        return torch.cuda.profiler.profile() if name == "decode" else nullcontext()


class DecodeProfile(ProfilingHooks):
    """torch.profiler (CPU + CUDA) around the decode stage only."""

    def __init__(self):
        self.profile = None

    def stage_range(self, name: str):
        if name != "decode":
            return nullcontext()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        self.profile = torch.profiler.profile(activities=activities)
        return self.profile


def profile_decode(name: str, engine: Engine, sample, tokens: int) -> None:
    engine.run(sample)  # warm (and capture)
    hooks = DecodeProfile()
    run = engine.run(sample, hooks=hooks)
    events = [e for e in hooks.profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.device_time for e in events) / 1e3  # microseconds -> ms (kernel-only, summed)
    steps = max(run.tokens - 1, 1)
    print(f"\n[{name}] decode {run.decode_ms:.2f} ms for {steps} steps: {run.decode_ms / steps:.3f} ms/step, "
          f"GPU kernel time {busy_ms / steps:.3f} ms/step ({100 * busy_ms / run.decode_ms:.0f} % busy), "
          f"{len(events) / steps:.0f} kernels/step")
    table = hooks.profile.key_averages().table(sort_by="device_time_total", row_limit=12, max_name_column_width=60)
    print(table)


def median(values):
    return statistics.median(values)


def figure(values):
    return {"min": min(values), "median": median(values), "max": max(values), "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.set_defaults(page="page_001")
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--out", default="runs/selfbench", help="folder for selfbench.json")
    parser.add_argument("--decode-probe", action="store_true",
                        help="only a few static decode steps (for ncu on the decode kernels)")
    parser.add_argument("--static-variants", action="store_true",
                        help="only static-backend TPOT for MoE kernel / torch.compile variants")
    parser.add_argument("--profile-decode", action="store_true",
                        help="torch.profiler over the decode of each backend: GPU busy time and top kernels per step")
    args = parser.parse_args(argv)
    cfg, adapter, policy, sample = build(args)
    device, n = adapter.device, args.tokens

    def exact_length(prompt_len: int):
        return [MinNewTokensLengthLogitsProcessor(prompt_len, n, policy.eos_token_id, device=str(device))]

    def force_eos(prompt_len: int):
        return [ForcedEOSTokenLogitsProcessor(prompt_len + n, policy.eos_token_id, device=str(device))]

    static_adapter = copy.copy(adapter)
    static_adapter.decode_backend = "static"
    static_adapter.static = StaticDecoder(adapter.model, adapter.model.model.language_model.config,
                                          adapter.max_positions, device)
    eager = Engine(adapter, policy, n, extra_processors=exact_length)
    static = Engine(static_adapter, policy, n, extra_processors=exact_length)
    if args.decode_probe:
        # Warm (and capture the graph), then open the CUDA profiler only around one decode:
        # `ncu --profile-from-start off` then sees exactly the decode kernels.
        static.run(sample)
        static.run(sample, hooks=DecodeOnlyCapture())
        return 0
    if args.static_variants:
        for kernel, compiled in (("batched_mm", False), ("grouped_mm", False), ("batched_mm", True)):
            variant = copy.copy(adapter)
            variant.static = StaticDecoder(adapter.model, adapter.model.model.language_model.config,
                                           adapter.max_positions, device, experts_kernel=kernel, compile_step=compiled)
            engine = Engine(variant, policy, n, extra_processors=exact_length)
            try:
                start = time.perf_counter()
                first = engine.run(sample)
                warm_s = time.perf_counter() - start
                runs_v = [engine.run(sample) for _ in range(3)]
            except Exception as exc:  # report the variant that cannot run, try the next
                print(f"static {kernel} compile={compiled}: failed: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            graph = variant.static.active.graph is not None
            print(f"static {kernel} compile={compiled}: first run {warm_s:.1f} s, graph={graph}, "
                  f"TPOT {spread([r.tpot_ms for r in runs_v])} ms, tokens == first {runs_v[-1].token_ids == first.token_ids}")
        return 0
    if args.profile_decode:
        for name, engine in (("eager", eager), ("static", static)):
            profile_decode(name, engine, sample, n)
        return 0
    numeric_eos = Engine(adapter, policy, n, extra_processors=force_eos)
    inf_eos = Engine(adapter, policy, None, extra_processors=force_eos)
    prepared = adapter.prepare(adapter.load(sample.image_path))

    def bare_generate(batch: int = 1):
        images = prepared.images * batch
        ids = prepared.input_ids.repeat(batch, 1)
        with torch.inference_mode():
            return adapter.model.generate(
                input_ids=ids, images=images, images_seq_mask=prepared.images_seq_mask.repeat(batch, 1),
                images_spatial_crop=prepared.images_spatial_crop.repeat(batch, 1),
                attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                pad_token_id=policy.eos_token_id, **policy.generate_kwargs())

    for engine in (eager, static, numeric_eos, inf_eos):  # warm every path (static: graph capture)
        engine.run(sample)
    bare_generate()

    walls = {k: [] for k in ("engine", "engine_bare", "generate", "numeric", "inf", "static")}
    runs = {"eager": [], "static": []}
    tokens = {}
    for _ in range(args.repeats):
        wall, run = timed(lambda: eager.run(sample), device)
        walls["engine"].append(wall - run.preprocess_ms)  # generate below starts from prepared inputs
        runs["eager"].append(run)
        tokens["eager"] = run.token_ids
        wall, run = timed(lambda: eager.run(sample, instrument=False), device)
        walls["engine_bare"].append(wall)
        wall, out = timed(bare_generate, device)
        walls["generate"].append(wall)
        tokens["generate"] = tuple(out[0, prepared.input_ids.shape[1]:].tolist())
        wall, run = timed(lambda: numeric_eos.run(sample), device)
        walls["numeric"].append(wall)
        wall, run = timed(lambda: inf_eos.run(sample), device)
        walls["inf"].append(wall)
        wall, run = timed(lambda: static.run(sample), device)
        walls["static"].append(wall - run.preprocess_ms)
        runs["static"].append(run)
        tokens["static"] = run.token_ids
    # Instrumented time minus preprocess vs bare time (bare has no stage timers: it includes it).
    engine_full = [r.preprocess_ms for r in runs["eager"]]

    batches = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        times = []
        for _ in range(max(2, args.repeats // 2)):
            wall, out = timed(lambda: bare_generate(batch), device)
            times.append(wall)
        batches.append({"batch": batch, "wall_ms": figure(times), "pages_per_s": batch / (median(times) / 1e3),
                        "tokens_per_s": batch * n / (median(times) / 1e3)})

    choice = select_hardware(cfg.hardware.name, torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    cost_model = DeepseekOCRCostModel(adapter.spec)
    dtype_name = DTYPE_NAMES[adapter.dtype]
    eff = {name: efficiency(cost_model, [Measured.from_run(r) for r in rs], choice, dtype_name,
                            adapter.base_size, adapter.image_size, DTYPE_BYTES[adapter.dtype],
                            cfg.static_analysis.attention) for name, rs in runs.items()}

    def tpot(rs):
        return [r.tpot_ms for r in rs]

    def stage(rs, key):
        return [getattr(r, key) if not key.startswith("sub:") else r.substage_ms[key[4:]] for r in rs]

    mismatch = next((i for i, (a, b) in enumerate(zip(tokens["static"], tokens["eager"])) if a != b), None)
    result = {
        "env": collect_env(device),
        "model": {"size": args.size, "dtype": str(adapter.dtype), "page": sample.sample_id,
                  "prompt_tokens": runs["eager"][0].prefill_len, "image_tokens": runs["eager"][0].image_tokens,
                  "crop_grid": list(runs["eager"][0].crop_grid), "generated_tokens": n},
        "harness_ms": figure(walls["engine"]), "generate_ms": figure(walls["generate"]),
        "harness_over_generate": median(walls["engine"]) / median(walls["generate"]),
        "inf_ms": figure(walls["inf"]), "numeric_ms": figure(walls["numeric"]),
        "inf_over_numeric": median(walls["inf"]) / median(walls["numeric"]),
        "instrumented_ms": figure([w + p for w, p in zip(walls["engine"], engine_full)]),
        "uninstrumented_ms": figure(walls["engine_bare"]),
        "instrumentation_overhead": median([w + p for w, p in zip(walls["engine"], engine_full)])
        / median(walls["engine_bare"]) - 1,
        "ttft_ms": figure(stage(runs["eager"], "ttft_ms")),
        "prefill_ms": figure(stage(runs["eager"], "prefill_ms")),
        "vision_ms": figure(stage(runs["eager"], "vision_ms")),
        "sam_ms": figure(stage(runs["eager"], "sub:sam")),
        "clip_ms": figure(stage(runs["eager"], "sub:clip")),
        "projector_ms": figure(stage(runs["eager"], "sub:projector")),
        "tpot_eager_ms": figure(tpot(runs["eager"])), "tpot_static_ms": figure(tpot(runs["static"])),
        "static_tokens_equal_eager": tokens["static"] == tokens["eager"], "static_first_mismatch": mismatch,
        "engine_tokens_equal_generate": tokens["eager"] == tokens["generate"],
        "efficiency": eff, "batches": batches,
    }
    decode_floor = eff["eager"].get("stages", {}).get("decode", {})
    if decode_floor:
        result["tpot_floor_ms"] = decode_floor["floor_ms"] / sum(max(r.tokens - 1, 0) for r in runs["eager"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selfbench.json").write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    return 0


def print_table(r: dict) -> None:
    m = r["model"]
    print(f"\nDeepSeek-OCR {m['size']} ({m['dtype']}) on {r['env'].get('device_name')}, page {m['page']} "
          f"(grid {m['crop_grid']}, {m['prompt_tokens']} prompt tokens), {m['generated_tokens']} tokens")
    print(f"torch {r['env']['torch']}, transformers {r['env']['transformers']}")
    rows = [
        ("harness (engine, direct_inference path) ms", r["harness_ms"]),
        ("bare model.generate ms", r["generate_ms"]),
        ("max_new_tokens=inf ms", r["inf_ms"]),
        ("max_new_tokens=N ms", r["numeric_ms"]),
        ("instrumented (NVTX + timers) ms", r["instrumented_ms"]),
        ("uninstrumented ms", r["uninstrumented_ms"]),
        ("TTFT ms", r["ttft_ms"]),
        ("prefill ms (vision + decoder)", r["prefill_ms"]),
        ("  vision ms", r["vision_ms"]),
        ("    sam ms", r["sam_ms"]),
        ("    clip ms", r["clip_ms"]),
        ("    projector ms", r["projector_ms"]),
        ("TPOT eager ms", r["tpot_eager_ms"]),
        ("TPOT static ms", r["tpot_static_ms"]),
    ]
    print(f"{'figure':<46} {'min / median / max':>30}")
    for name, fig in rows:
        print(f"{name:<46} {spread(fig['values']):>30}")
    print(f"{'TPOT floor ms (analytic, memory-bound)':<46} {r.get('tpot_floor_ms', float('nan')):>30.3f}")
    print(f"ratio harness / generate      : {r['harness_over_generate']:.3f}  (goal <= 1.02)")
    print(f"ratio inf / numeric           : {r['inf_over_numeric']:.3f}  (goal <= 1.02)")
    print(f"instrumentation overhead      : {100 * r['instrumentation_overhead']:+.2f} %  (goal <= 1 %)")
    floor = r.get("tpot_floor_ms")
    if floor:
        print(f"TPOT / floor eager, static    : {median(r['tpot_eager_ms']['values']) / floor:.1f}x, "
              f"{median(r['tpot_static_ms']['values']) / floor:.1f}x  (goal static <= 2x)")
    print(f"tokens: static == eager {r['static_tokens_equal_eager']} (first mismatch {r['static_first_mismatch']}), "
          f"engine == generate {r['engine_tokens_equal_generate']}")
    for name, section in r["efficiency"].items():
        stages = section.get("stages")
        if not stages:
            print(f"efficiency ({name}): {section.get('omitted')}")
            continue
        parts = ", ".join(f"{s} MFU {v['mfu']:.1%} MBU {v['mbu']:.1%}" for s, v in stages.items())
        print(f"efficiency ({name}): {parts}")
    for b in r["batches"]:
        print(f"batch {b['batch']:>3}: {spread(b['wall_ms']['values'])} ms, {b['pages_per_s']:.2f} pages/s, "
              f"{b['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    raise SystemExit(main())
