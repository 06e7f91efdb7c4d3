"""Finding the profilers, knowing when we run under one, and the skip reasons of the stages.

Nothing here starts a profiler. The stages skip (never fail) when their profiler is not
selected, not installed, or has no GPU to work on; each reason says how to enable it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

# Set in the environment of every child process a profiler stage starts (the nsys re-launch,
# the ncu children), naming the profiler; a child never starts another profiler.
CHILD_ENV = "DSOCR_PROFILER_CHILD"

# How a process knows a tool launched it, as seen on Nsight Systems and Nsight Compute 2025.3.1
# (benchmarks/perf/gpu_profilers.sh facts). nsys sets NSYS_PROFILING_SESSION_ID and points
# CUDA's and NVTX's documented tool hooks (CUDA_INJECTION64_PATH, NVTX_INJECTION64_PATH) and
# LD_PRELOAD at its libToolsInjection*.so (those also ship inside Nsight Compute's folder, so the
# library name counts, not the folder). ncu sets NV_TPS_LAUNCH_TOKEN and
# NV_COMPUTE_PROFILER_PERFWORKS_DIR in its target.
INJECTION_ENV = ("CUDA_INJECTION64_PATH", "NVTX_INJECTION64_PATH", "LD_PRELOAD")
NSYS_LIBRARY_MARKER = "libtoolsinjection"
NSYS_SESSION_ENV = "NSYS_PROFILING_SESSION_ID"
NCU_ENV = ("NV_TPS_LAUNCH_TOKEN", "NV_COMPUTE_PROFILER_PERFWORKS_DIR")

NSYS_URL = "https://developer.nvidia.com/nsight-systems"
NCU_URL = "https://developer.nvidia.com/nsight-compute"
NSYS_BARE_COMMAND = "nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi pytest benchmarks -m nsys"


def which(tool: str) -> str | None:
    """Absolute path of ``tool`` on PATH, or None."""
    return shutil.which(tool)


def _injection_text(env: Mapping[str, str]) -> str:
    return " ".join(env.get(name, "") for name in INJECTION_ENV).lower()


def under_nsys(env: Mapping[str, str] | None = None) -> bool:
    """True inside a process that Nsight Systems launched (our re-launch or `nsys profile ...`)."""
    env = os.environ if env is None else env
    if env.get(CHILD_ENV) == "nsys" or env.get(NSYS_SESSION_ENV):
        return True
    return NSYS_LIBRARY_MARKER in _injection_text(env)


def under_ncu(env: Mapping[str, str] | None = None) -> bool:
    """True inside a process that Nsight Compute launched."""
    env = os.environ if env is None else env
    return env.get(CHILD_ENV) == "ncu" or any(env.get(name) for name in NCU_ENV)


def profiler_child(env: Mapping[str, str] | None = None) -> str | None:
    """The profiler that started this process as a child of a stage, if any."""
    env = os.environ if env is None else env
    return env.get(CHILD_ENV) or None


# --- skip reasons (None: the stage runs) -------------------------------------------------------

def torch_skip_reason(profiler: str) -> str | None:
    if profiler != "torch":
        return "torch profiler stage not selected: run with --dsocr-profiler=torch"
    return None


def nsys_skip_reason(profiler: str, *, cuda: bool, env: Mapping[str, str] | None = None,
                     nsys_path: str | None | bool = False) -> str | None:
    """Why the nsys stage cannot run here. ``nsys_path=False`` looks nsys up on PATH."""
    inside = under_nsys(env)
    if not inside:
        if profiler != "nsys":
            return ("nsys stage not selected: run with --dsocr-profiler=nsys (re-launches the selected tests "
                    f"under Nsight Systems) or under `{NSYS_BARE_COMMAND}`")
        path = which("nsys") if nsys_path is False else nsys_path
        if not path:
            return f"nsys not on PATH: install Nsight Systems ({NSYS_URL}) and put its bin folder on PATH"
        return ("not running under Nsight Systems: with --dsocr-profiler=nsys the plugin re-launches the tests "
                f"under nsys; or run `{NSYS_BARE_COMMAND}`")
    if not cuda:
        return "nsys stage needs a CUDA device (this session runs on the CPU): set model.device=cuda on a GPU machine"
    return None


def ncu_skip_reason(profiler: str, *, cuda: bool, env: Mapping[str, str] | None = None,
                    ncu_path: str | None | bool = False) -> str | None:
    """Why the ncu stage cannot run here. ``ncu_path=False`` looks ncu up on PATH."""
    child = profiler_child(env)
    if child:
        return f"inside a {child} child process: the ncu stage runs only in the parent session"
    if profiler != "ncu":
        return "ncu stage not selected: run with --dsocr-profiler=ncu"
    path = which("ncu") if ncu_path is False else ncu_path
    if not path:
        return f"ncu not on PATH: install Nsight Compute ({NCU_URL}) and put its folder on PATH"
    if not cuda:
        return "ncu stage needs a CUDA device (this session runs on the CPU): set model.device=cuda on a GPU machine"
    return None
