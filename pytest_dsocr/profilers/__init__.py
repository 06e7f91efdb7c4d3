"""Profiler integrations: torch.profiler, Nsight Systems and Nsight Compute.

Each profiler is a set of :class:`~pytest_dsocr.engine.ProfilingHooks` (what runs around the
engine's inferences), a command builder (for the tools that wrap a process) and a parser that
folds the tool's output into tables per DeepSeek-OCR stage. Typed presets live in
:mod:`pytest_dsocr.profilers.config`; ``conf/profiling/{torch,nsys,ncu}/`` only choose values.
"""

# The values of --dsocr-profiler: one per profiler stage, or none.
PROFILERS = ("none", "torch", "nsys", "ncu")
