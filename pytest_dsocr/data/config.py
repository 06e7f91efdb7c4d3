"""Typed config of the dataset and its sampling (OmegaConf structured dataclasses).

The integrator composes ``DatasetConfig`` under the top-level key ``dataset``; the YAML
presets in ``conf/dataset/`` and ``conf/sampling/`` only choose values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from pytest_dsocr.errors import DsocrError

DEFAULT_PATTERNS = ["*.png", "*.jpg", "*.jpeg", "*.webp", "*.bmp", "*.tif", "*.tiff"]


@dataclass
class SamplingConfig:
    """Which images each epoch runs, in which order."""

    num_epochs: int = 1  # passes over the dataset (>= 1)
    num_samples_per_epoch: Optional[int] = None  # images per epoch; null = all (clamped to the dataset)
    randomize: bool = False  # draw each epoch's images with random.Random(seed + epoch)
    seed: int = 0  # base seed of the random draw


@dataclass
class DatasetConfig:
    """Where the images come from: bundled pages, a folder, or an OmniDocBench copy."""

    name: str = "samples"  # samples | folder | omnidocbench
    root: Optional[str] = None  # image folder (folder) or dataset root (omnidocbench); ignored by samples
    patterns: List[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))  # file-name globs, case-insensitive
    subset_file: Optional[str] = None  # text file naming images one per line, relative to the image folder
    recursive: bool = True  # also look in sub-folders (folder, omnidocbench without its json)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # epochs and samples per epoch


def require_int(value: object, key: str, minimum: int | None = None) -> int:
    """``value`` as an int (>= ``minimum`` when given), or a DsocrError naming ``key`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        bound = "" if minimum is None else f" >= {minimum}"
        raise DsocrError(f"{key}: expected an integer{bound}, got {value!r}")
    if minimum is not None and value < minimum:
        raise DsocrError(f"{key}: must be >= {minimum}, got {value}")
    return value


def validate_sampling_config(cfg: SamplingConfig, prefix: str = "dataset.sampling") -> None:
    """Fail fast, naming the key, on values the type system lets through."""
    require_int(cfg.num_epochs, f"{prefix}.num_epochs", 1)
    if cfg.num_samples_per_epoch is not None:
        require_int(cfg.num_samples_per_epoch, f"{prefix}.num_samples_per_epoch", 1)
    require_int(cfg.seed, f"{prefix}.seed")
