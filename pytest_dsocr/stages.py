"""The benchmark stages (pytest markers), in the order they run.

Static analysis runs after direct_inference because it reads the times just measured.
"""

STAGES = ("direct_inference", "static_analysis", "torch_profiler", "nsys", "ncu", "vendor_parity", "sweep")

STAGE_HELP = {
    "direct_inference": "inference through the engine, no profiler",
    "static_analysis": "analytic cost model and FLOP-count cross-check; MFU/MBU against the hardware",
    "torch_profiler": "torch.profiler around sampled runs (--dsocr-profiler=torch)",
    "nsys": "Nsight Systems capture of measured rounds (--dsocr-profiler=nsys)",
    "ncu": "Nsight Compute kernel metrics of NVTX-selected ranges (--dsocr-profiler=ncu)",
    "vendor_parity": "our instrumented path vs the model's own generate",
    "sweep": "analytic sweeps over crop grids and context lengths",
}
