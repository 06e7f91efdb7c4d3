"""Cross-check: analytic matmul FLOPs vs torch's FlopCounterMode on the full DeepSeek-OCR v1 module.

Builds the module (meta device by default: same module code, no memory, seconds) and, per crop
grid, counts each stage (sam, clip, projector, prefill decoder + lm_head on the last token, one
decode step) with FlopCounterMode; prints stage | analytic | FlopCounterMode | ratio, and the
parameter counts. ``--device cpu`` runs the real tensors instead (fp32 needs ~14 GB and minutes).
Exits non-zero when a stage differs by more than 1% or the parameter counts differ.

    python benchmarks/perf/crosscheck_full.py
    python benchmarks/perf/crosscheck_full.py --grid 1x1 --grid 3x3 --batch 2
"""

from __future__ import annotations

import argparse
import time

from pytest_dsocr.analytic.crosscheck import crosscheck, module_params
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import workload_for_grid
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr.spec import SPECS

TOLERANCE = 0.01


def grid(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid {text!r}: expected WxH, e.g. 2x3") from None
    return w, h


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=sorted(SPECS))
    parser.add_argument("--device", default="meta", help="meta (default) | cpu | cuda")
    parser.add_argument("--grid", type=grid, action="append", help="crop grid WxH (repeatable; default 1x1 and 2x3)")
    parser.add_argument("--base-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    spec = SPECS[args.size]
    started = time.perf_counter()
    # eager experts need data (nonzero); on meta transformers' batched_mm does the same matmuls
    experts = "batched_mm" if args.device == "meta" else None
    module = build_model("deepseek_ocr", args.size, device=args.device, experts_implementation=experts)
    cost = DeepseekOCRCostModel(spec)
    params_module, params_analytic = module_params(module), cost.params
    ok = params_module == params_analytic
    print(f"DeepSeek-OCR v1 {args.size} on {args.device} (built in {time.perf_counter() - started:.1f} s)")
    print(f"parameters: module {params_module:,} | analytic {params_analytic:,} | "
          f"{'equal' if params_module == params_analytic else 'DIFFER'}")
    for crop_grid in args.grid or [(1, 1), (2, 3)]:
        wl = workload_for_grid(spec, args.base_size, args.image_size, crop_grid, batch=args.batch)
        started = time.perf_counter()
        rows = crosscheck(module, cost, wl)
        print(f"\ncrop grid {crop_grid[0]}x{crop_grid[1]}: global {args.base_size} px + {int(wl.crops)} crops of "
              f"{args.image_size} px, prefill {int(wl.prefill_tokens)} tokens, decode step at context "
              f"{int(wl.prefill_tokens) + 1}, batch {args.batch} ({time.perf_counter() - started:.1f} s)")
        print(f"| {'stage':11s} | {'analytic':>19s} | {'FlopCounterMode':>19s} | {'ratio':>8s} |")
        print(f"|{'-' * 13}|{'-' * 21}|{'-' * 21}|{'-' * 10}|")
        for row in rows:
            print(f"| {row.stage:11s} | {row.analytic:19,} | {row.counted:19,} | {row.ratio:8.6f} |")
            ok = ok and abs(row.ratio - 1) <= TOLERANCE
    print(f"\n{'all stages within 1%' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
