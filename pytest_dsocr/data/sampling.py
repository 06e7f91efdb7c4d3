"""Turn a list of images into the samples of each epoch: the benchmark tests' parametrization.

- Each epoch takes all images, or ``num_samples_per_epoch`` of them. A request for more
  images than the dataset has is clamped to the dataset, with one warning.
- Without ``randomize`` an epoch takes the first images in dataset order, so every epoch runs
  the same images in the same order. With it, epoch ``e`` draws its images (without
  replacement) with ``random.Random(seed + epoch)``: reproducible for a seed, different from
  epoch to epoch, and independent of how many epochs run.
- ``sample_id`` is the file stem reduced to ``[A-Za-z0-9_.-]`` (other runs of characters become
  ``_``), computed over the whole image list so it does not depend on the draw. Two images
  with the same id (same stem in different folders) get ``-2``, ``-3``... in dataset order.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from pytest_dsocr.data.config import SamplingConfig, validate_sampling_config
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import Sample

log = logging.getLogger(__name__)

UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
FALLBACK_ID = "image"  # for stems with no safe character at all


def sample_images(images: list[Path], cfg: SamplingConfig) -> list[Sample]:
    """All samples of all epochs, epoch by epoch, in run order."""
    validate_sampling_config(cfg)
    if not images:
        raise DsocrError("dataset: no images to sample")
    ids = sample_ids(images)
    count = len(images)
    if cfg.num_samples_per_epoch is not None:
        if cfg.num_samples_per_epoch > count:
            log.warning(
                "dataset.sampling.num_samples_per_epoch=%d is more than the %d images of the "
                "dataset; using %d per epoch",
                cfg.num_samples_per_epoch, count, count,
            )
        count = min(cfg.num_samples_per_epoch, count)
    samples = []
    for epoch in range(cfg.num_epochs):
        if cfg.randomize:
            chosen = random.Random(cfg.seed + epoch).sample(range(len(images)), count)
        else:
            chosen = range(count)
        for index, position in enumerate(chosen):
            path = Path(images[position])
            samples.append(Sample(image_path=path, epoch=epoch, index=index, sample_id=ids[position]))
    return samples


def sample_ids(images: list[Path]) -> list[str]:
    """One unique, readable id per image, in the images' order (see the module docstring)."""
    ids: list[str] = []
    taken: set[str] = set()
    for path in images:
        base = UNSAFE_ID_CHARS.sub("_", Path(path).stem).strip("._-") or FALLBACK_ID
        candidate, suffix = base, 2
        while candidate in taken:
            candidate, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids
