"""Sampling: epochs, counts, determinism of the random draw, sample ids, bad values."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from pytest_dsocr.data.config import SamplingConfig
from pytest_dsocr.data.sampling import sample_ids, sample_images
from pytest_dsocr.errors import DsocrError

IMAGES = [Path(f"/data/page_{i:03d}.png") for i in range(1, 11)]


def ids(samples):
    return [s.sample_id for s in samples]


def test_default_is_every_image_once_in_order():
    samples = sample_images(IMAGES, SamplingConfig())
    assert [s.image_path for s in samples] == IMAGES
    assert [s.index for s in samples] == list(range(10))
    assert {s.epoch for s in samples} == {0}
    assert samples[2].test_id == "e0-page_003"


def test_epochs_and_count_without_randomize_repeat_the_first_images():
    samples = sample_images(IMAGES, SamplingConfig(num_epochs=3, num_samples_per_epoch=2))
    assert [(s.epoch, s.index, s.sample_id) for s in samples] == [
        (e, i, f"page_00{i + 1}") for e in range(3) for i in range(2)
    ]


def test_randomize_is_seeded_per_epoch_and_reproducible():
    cfg = SamplingConfig(num_epochs=3, num_samples_per_epoch=4, randomize=True, seed=7)
    first = sample_images(IMAGES, cfg)
    assert first == sample_images(IMAGES, cfg)
    per_epoch = [ids(s for s in first if s.epoch == e) for e in range(3)]
    assert all(len(set(epoch)) == 4 for epoch in per_epoch)  # no repeats within an epoch
    assert len({tuple(epoch) for epoch in per_epoch}) > 1  # epochs draw differently
    # epoch e uses random.Random(seed + e): epoch 1 of seed 7 is epoch 0 of seed 8
    shifted = sample_images(IMAGES, SamplingConfig(num_samples_per_epoch=4, randomize=True, seed=8))
    assert ids(shifted) == per_epoch[1]
    other_seed = sample_images(IMAGES, SamplingConfig(num_epochs=3, num_samples_per_epoch=4, randomize=True, seed=8))
    assert ids(other_seed) != ids(first)


def test_randomize_all_images_is_a_permutation():
    samples = sample_images(IMAGES, SamplingConfig(randomize=True, seed=1))
    assert sorted(s.image_path for s in samples) == IMAGES
    assert [s.image_path for s in samples] != IMAGES


def test_too_many_samples_are_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pytest_dsocr.data.sampling"):
        samples = sample_images(IMAGES[:3], SamplingConfig(num_samples_per_epoch=5))
    assert len(samples) == 3
    assert "num_samples_per_epoch=5" in caplog.text and "3 images" in caplog.text


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"num_epochs": 0}, "dataset.sampling.num_epochs"),
        ({"num_epochs": -1}, "dataset.sampling.num_epochs"),
        ({"num_samples_per_epoch": 0}, "dataset.sampling.num_samples_per_epoch"),
        ({"num_samples_per_epoch": 2.5}, "dataset.sampling.num_samples_per_epoch"),
        ({"num_epochs": True}, "dataset.sampling.num_epochs"),
        ({"seed": "x"}, "dataset.sampling.seed"),
    ],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(DsocrError, match="^" + re.escape(key) + ": "):
        sample_images(IMAGES, SamplingConfig(**kwargs))


def test_no_images():
    with pytest.raises(DsocrError, match="no images"):
        sample_images([], SamplingConfig())


def test_ids_are_sanitised_and_unique():
    paths = [
        Path("/a/page 1.png"),
        Path("/b/page 1.png"),
        Path("/c/page_1.png"),
        Path("/d/página (2).png"),
        Path("/e/日本.png"),
        Path("/f/..hidden.png"),
        Path("/g/page_1-2.png"),
    ]
    assert sample_ids(paths) == ["page_1", "page_1-2", "page_1-3", "p_gina_2", "image", "hidden", "page_1-2-2"]


def test_ids_do_not_depend_on_the_draw():
    paths = [Path("/x/doc.png"), Path("/y/doc.png"), Path("/z/doc.png")]
    every = {s.image_path: s.sample_id for s in sample_images(paths, SamplingConfig())}
    drawn = sample_images(paths, SamplingConfig(num_samples_per_epoch=1, randomize=True, seed=3))
    assert drawn[0].sample_id == every[drawn[0].image_path]
