"""Peak FLOP/s and memory bandwidth per GPU (``conf/hardware/*.yaml``) and device detection.

Each table file is one GPU: ``display_name``, ``match`` (substrings of the name torch reports,
e.g. ``"H100 80GB HBM3"``), dense ``peak_tflops`` per dtype (bf16, fp16, tf32, fp32 non-tensor),
``memory_bandwidth_gb_s`` and ``memory_gb``, with the vendor datasheet cited in a comment. The file
stem is the name users pass as ``hardware.name``. On a CPU or an unknown GPU nothing is chosen and
the reason says why: MFU/MBU are then omitted, never invented.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import yaml

from pytest_dsocr.errors import DsocrError

HARDWARE_DIR = Path(__file__).parent / "conf" / "hardware"
TFLOPS = 1e12
GB = 1e9

PEAK_KEYS = ("bf16", "fp16", "tf32", "fp32")
# torch dtype names -> the table's keys. float32 means plain FP32 (torch's default
# allow_tf32=False for matmuls); pass "tf32" explicitly for TF32 tensor-core matmuls.
DTYPE_KEYS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "tf32": "tf32",
              "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


@dataclass(frozen=True)
class Hardware:
    """One GPU's peak numbers (dense, no sparsity)."""

    name: str  # file stem: what hardware.name selects
    display_name: str
    match: tuple[str, ...]
    peak_tflops: Mapping[str, float]
    memory_bandwidth_gb_s: float
    memory_gb: float
    source: str  # the table file

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for matmuls in ``dtype`` (torch name or table key)."""
        key = DTYPE_KEYS.get(dtype)
        if key is None:
            raise DsocrError(f"dtype {dtype!r} has no peak in {self.source}; use one of {sorted(DTYPE_KEYS)}")
        return self.peak_tflops[key] * TFLOPS

    @property
    def bandwidth(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.memory_bandwidth_gb_s * GB

    def to_json(self) -> dict:
        return {
            "name": self.name, "display_name": self.display_name,
            "peak_tflops": dict(self.peak_tflops),
            "memory_bandwidth_gb_s": self.memory_bandwidth_gb_s, "memory_gb": self.memory_gb,
        }


@dataclass(frozen=True)
class HardwareChoice:
    """The GPU whose peaks apply, or None with the reason (shown where MFU/MBU would be)."""

    hardware: Optional[Hardware]
    reason: str
    device_name: Optional[str] = None  # what torch reported, when a device was looked at


def _parse(path: Path) -> Hardware:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DsocrError(f"hardware table {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise DsocrError(f"hardware table {path} must be a mapping of keys")
    missing = [k for k in ("display_name", "match", "peak_tflops", "memory_bandwidth_gb_s", "memory_gb")
               if k not in data]
    peaks = data.get("peak_tflops") or {}
    missing += [f"peak_tflops.{k}" for k in PEAK_KEYS if not isinstance(peaks, dict) or k not in peaks]
    if missing:
        raise DsocrError(f"hardware table {path} lacks {', '.join(missing)}")
    match = data["match"]
    if not isinstance(match, list) or not match or not all(isinstance(m, str) and m for m in match):
        raise DsocrError(f"hardware table {path}: match must be a list of device-name substrings")
    return Hardware(
        name=path.stem,
        display_name=str(data["display_name"]),
        match=tuple(match),
        peak_tflops={k: float(peaks[k]) for k in PEAK_KEYS},
        memory_bandwidth_gb_s=float(data["memory_bandwidth_gb_s"]),
        memory_gb=float(data["memory_gb"]),
        source=str(path),
    )


@functools.lru_cache(maxsize=8)
def load_hardware_table(folder: Path = HARDWARE_DIR) -> dict[str, Hardware]:
    """Every table in ``folder`` by name (file stem), sorted by name."""
    return {p.stem: _parse(p) for p in sorted(Path(folder).glob("*.yaml"))}


def hardware_names(folder: Path = HARDWARE_DIR) -> list[str]:
    return list(load_hardware_table(folder))


def get_hardware(name: str, folder: Path = HARDWARE_DIR) -> Hardware:
    """The table named ``name``; an unknown name is a usage error listing the known ones."""
    table = load_hardware_table(folder)
    if name not in table:
        raise DsocrError(f"hardware.name={name!r} is not in {folder}; known: {', '.join(table)}")
    return table[name]


def match_device(device_name: str, folder: Path = HARDWARE_DIR) -> Optional[Hardware]:
    """The table whose ``match`` rule is a (case-insensitive) substring of ``device_name``; the
    longest matching rule wins, so "H200 NVL" beats "H200"."""
    name = device_name.lower()
    best: Optional[Hardware] = None
    best_len = 0
    for hw in load_hardware_table(folder).values():
        for rule in hw.match:
            if rule.lower() in name and len(rule) > best_len:
                best, best_len = hw, len(rule)
    return best


def detect_device_name() -> Optional[str]:
    """Name of CUDA device 0 as torch reports it, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


_DETECT = object()


def select_hardware(name: Optional[str] = None, device_name=_DETECT,
                    folder: Path = HARDWARE_DIR) -> HardwareChoice:
    """``hardware.name`` when given (unknown -> DsocrError), else the detected device's table.

    ``device_name`` defaults to detection through torch; pass None to mean "no CUDA device".
    """
    if name:
        hw = get_hardware(name, folder)
        return HardwareChoice(hw, f"hardware.name={name}")
    if device_name is _DETECT:
        device_name = detect_device_name()
    if device_name is None:
        return HardwareChoice(None, "no CUDA device: peak FLOP/s and bandwidth are GPU figures "
                                    "(set hardware.name=NAME for a GPU's floor times)")
    hw = match_device(device_name, folder)
    if hw is None:
        known = ", ".join(load_hardware_table(folder))
        return HardwareChoice(None, f"device {device_name!r} is not in conf/hardware (known: {known}); "
                                    "add a table or set hardware.name", device_name)
    return HardwareChoice(hw, f"detected {device_name!r}", device_name)
