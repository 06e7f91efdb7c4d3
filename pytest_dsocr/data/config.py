"""Typed config of the dataset and its sampling (OmegaConf structured dataclasses).

The integrator composes ``DatasetConfig`` under the top-level key ``dataset``; the YAML
presets in ``conf/dataset/`` and ``conf/sampling/`` only choose values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from PIL import Image, ImageFile

from pytest_dsocr.errors import DsocrError

DATASET_NAMES = ("samples", "folder", "omnidocbench")
# Keys a dataset kind never reads: a value there is a mistake (most often a forgotten
# ``dataset=folder``), never silently ignored.
UNUSED_KEYS: dict[str, tuple[str, ...]] = {"samples": ("root",)}
# Formats Pillow recognises but cannot turn into a page here: video (MPEG: Pillow reads the
# header only) and PostScript (EPS: needs Ghostscript installed); identify-only stubs (BUFR,
# GRIB, HDF5, WMF) are left out by their class.
NOT_PAGE_FORMATS = frozenset({"MPEG", "EPS"})


def pillow_patterns() -> list[str]:
    """``*.<ext>`` for every file extension of a format Pillow can open and decode, sorted.

    The default ``dataset.patterns``: any image a user drops into the folder (an animated
    GIF, a JPEG 2000 scan, a PSD) is a page, not a file skipped for its extension.
    """
    Image.init()  # registers every plugin's extensions
    openable = {name for name, (factory, _accept) in Image.OPEN.items()
                if name not in NOT_PAGE_FORMATS
                and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    return sorted(f"*{ext}" for ext, name in Image.registered_extensions().items() if name in openable)


DEFAULT_PATTERNS = pillow_patterns()


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
    root: Optional[str] = None  # image folder (folder) or dataset root (omnidocbench); an error with samples
    # file-name globs, case-insensitive; default: every extension of an image format Pillow decodes
    patterns: List[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
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


def validate_dataset_config(cfg: DatasetConfig, prefix: str = "dataset") -> None:
    """The dataset kind exists and no key it never reads is set (checked before any model is built)."""
    if cfg.name not in DATASET_NAMES:
        raise DsocrError(f"{prefix}.name: unknown dataset {cfg.name!r}; choose one of {', '.join(DATASET_NAMES)}")
    for key in UNUSED_KEYS.get(cfg.name, ()):
        value = getattr(cfg, key)
        if value is not None:
            raise DsocrError(
                f"{prefix}.{key}={value}: not used by dataset={cfg.name} (the bundled sample pages); "
                f"add --dsocr-set dataset=folder to read the images under it "
                f"(or dataset=omnidocbench for an OmniDocBench copy)"
            )


def validate_sampling_config(cfg: SamplingConfig, prefix: str = "dataset.sampling") -> None:
    """Fail fast, naming the key, on values the type system lets through."""
    require_int(cfg.num_epochs, f"{prefix}.num_epochs", 1)
    if cfg.num_samples_per_epoch is not None:
        require_int(cfg.num_samples_per_epoch, f"{prefix}.num_samples_per_epoch", 1)
    require_int(cfg.seed, f"{prefix}.seed")
