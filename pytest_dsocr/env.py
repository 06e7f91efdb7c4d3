"""What machine and software a run measured on: the `env` section of metrics.json."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch
import transformers

import pytest_dsocr
from pytest_dsocr.models import resolve_device as checked_device


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when one is visible, else the CPU; other names as
    :func:`pytest_dsocr.models.resolve_device` checks them."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return checked_device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect_env(device: torch.device | None = None, root: Path | None = None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pytest_dsocr": pytest_dsocr.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "argv": sys.argv,
    }
    if device is not None:
        env["device"] = str(device)
        env["device_name"] = device_name(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            env.update(cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    if root is not None:
        env["git_commit"] = _git_commit(root)
    return env


def peak_memory(device: torch.device | None) -> dict:
    """CUDA max allocated/reserved on a GPU; max RSS of this process on the CPU (MiB)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    memory = {"max_rss_mib": round(rss_kib / 1024, 1)}
    if device is not None and device.type == "cuda":
        memory["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        memory["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return memory
