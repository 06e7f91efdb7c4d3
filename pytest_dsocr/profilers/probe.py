"""A few CUDA kernels inside the engine's NVTX ranges, to check a profiler setup without the model.

``python -m pytest_dsocr.profilers.probe [--steps N]`` pushes the same ranges as the engine
(``sample:probe`` > ``prefill`` > ``vision`` > ``sam``/``clip``/``projector``, then ``decode``)
in the "dsocr" domain and launches small matmuls, softmaxes and adds inside each, so that
``ncu --nvtx --nvtx-include dsocr@prefill/`` or an nsys capture shows kernels per stage in
seconds. Used by benchmarks/perf/gpu_profilers.sh to record real tool output.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pytest_dsocr import nvtx

WIDTH = 256  # matrix side: big enough for a real GEMM kernel, small enough to replay fast
DEFAULT_STEPS = 4


def _block(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x @ weight, dim=-1) + x


def run(steps: int = DEFAULT_STEPS, device: str = "cuda") -> float:
    """One "inference": returns a checksum so the work cannot be skipped."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    weight = torch.randn(WIDTH, WIDTH, generator=generator).to(device)
    x = torch.randn(WIDTH, WIDTH, generator=generator).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.start()  # what the nsys stage does around measured rounds
    with nvtx.nvtx_range("sample:probe"):
        with nvtx.nvtx_range("prefill"):
            with nvtx.nvtx_range("vision"):
                for name in ("sam", "clip", "projector"):
                    with nvtx.nvtx_range(name):
                        x = _block(x, weight)
            x = _block(x, weight)  # the decoder's prefill
        with nvtx.nvtx_range("decode"):
            for _ in range(steps):
                x = _block(x[:1].expand_as(x).contiguous(), weight)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return float(x.float().sum().item())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_dsocr.profilers.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="decode steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"probe checksum {run(args.steps, args.device):.4f} on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
