# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The training diversity recipe: synthetic subjects and intensity augmentation (docs/data.md "Diversity recipe")."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from monai_diffad.data import build
from monai_diffad.data.build import (
    AUGMENTATION_RECIPES,
    INTENSITY_STRENGTHS,
    VALIDATION_EVERY,
    build_training_set,
    intensity_augmentation,
    slices_at_resolution,
    training_augmentation,
    training_set_path,
)
from monai_diffad.data.sources import TRAIN_SOURCES, source_available
from monai_diffad.data.subjects import unseen_intensity_model
from monai_diffad.training.data import load_slice_items

torch.set_num_threads(1)

needs_templates = pytest.mark.skipif(
    not all(source_available(name) for name in TRAIN_SOURCES), reason="the training templates are not installed"
)


def brain_slice(size: int) -> dict[str, np.ndarray]:
    """A textured elliptic "brain" slice in [0, 1] and its mask, channel-first ``(1, size, size)``."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    brain = (xx / 0.75) ** 2 + (yy / 0.85) ** 2 < 1
    image = np.where(brain, 0.6 + 0.35 * np.sin(7 * xx) * np.cos(5 * yy), 0.0).astype(np.float32)
    return {"image": image[None], "mask": brain[None].astype(np.float32)}


# ------------------------------------------------------------------ synthetic subjects


def test_training_set_names():
    assert training_set_path("d", 64) == os.path.join("d", "train_slices_64.npz")
    assert training_set_path("d", 64, synthetic_subjects=0, seed=3) == os.path.join("d", "train_slices_64.npz")
    assert training_set_path("d", 64, synthetic_subjects=8) == os.path.join("d", "train_slices_64_k8.npz")
    assert training_set_path("d", 128, synthetic_subjects=8, seed=2) == os.path.join("d", "train_slices_128_k8_s2.npz")


@needs_templates
def test_no_synthetic_subjects_is_the_templates_set(tmp_path):
    path = build_training_set(str(tmp_path), 64, synthetic_subjects=0, seed=5)
    assert os.path.basename(path) == "train_slices_64.npz"
    data = dict(np.load(path))
    assert set(data) == {"images", "masks", "source", "z", "validation"}  # the published keys, nothing added
    parts = [slices_at_resolution(name, 64) for name in TRAIN_SOURCES]
    np.testing.assert_array_equal(data["images"], np.concatenate([p["images"] for p in parts]))
    np.testing.assert_array_equal(data["masks"], np.concatenate([p["masks"] for p in parts]).astype(np.uint8))
    np.testing.assert_array_equal(data["z"], np.concatenate([p["z"] for p in parts]))
    assert [int((data["source"] == name).sum()) for name in TRAIN_SOURCES] == [106, 86, 106]
    rows = np.concatenate([np.arange(len(p["z"])) for p in parts])
    np.testing.assert_array_equal(data["validation"], rows % VALIDATION_EVERY == VALIDATION_EVERY // 2)


@pytest.mark.skipif(not source_available("mni152"), reason="MNI152 needs nilearn")
def test_synthetic_subjects_are_added_after_each_template(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "TRAIN_SOURCES", ("mni152",))
    plain = dict(np.load(build_training_set(str(tmp_path), 64)))
    path = build_training_set(str(tmp_path), 64, synthetic_subjects=2, seed=0)
    assert os.path.basename(path) == "train_slices_64_k2.npz"
    data = dict(np.load(path))
    n = len(plain["z"])
    np.testing.assert_array_equal(data["images"][:n], plain["images"])  # the template first, unchanged
    assert set(data["subject"]) == {0, 1, 2} and (data["subject"][:n] == 0).all()
    copies = [data["images"][data["subject"] == k] for k in (1, 2)]
    assert all(len(c) > 0.8 * n for c in copies)
    assert data["images"].min() >= 0 and data["images"].max() <= 1
    # each copy is another anatomy: its mid slice is not any of the template's slices
    for c in copies:
        assert min(np.abs(plain["images"] - c[len(c) // 2]).mean(axis=(1, 2))) > 0.005
    again = dict(np.load(build_training_set(str(tmp_path / "again"), 64, synthetic_subjects=2, seed=0)))
    np.testing.assert_array_equal(again["images"], data["images"])
    with pytest.raises(ValueError, match="synthetic_subjects"):
        build_training_set(str(tmp_path), 64, synthetic_subjects=-1)


# ------------------------------------------------------------------ intensity augmentation


def test_training_items_read_each_array_once(tmp_path, monkeypatch):
    """Indexing an ``NpzFile`` decompresses the whole array each time: reading it per slice made loading the
    synthetic-subject sets quadratic in their size (minutes before the first iteration)."""
    rng = np.random.default_rng(0)
    images = rng.random((12, 8, 8), dtype=np.float32)
    masks = (images > 0.5).astype(np.uint8)
    validation = np.arange(12) % 4 == 0
    np.savez_compressed(training_set_path(str(tmp_path), 64), images=images, masks=masks, validation=validation)
    reads: list[str] = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def counting_getitem(self, key):
        reads.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counting_getitem)
    train = load_slice_items(str(tmp_path), 64, "train")
    assert sorted(reads) == ["images", "masks", "validation"]
    assert len(train) == 9
    np.testing.assert_array_equal(np.stack([item["image"][0] for item in train]), images[~validation])
    np.testing.assert_array_equal(np.stack([item["mask"][0] for item in train]), masks[~validation])
    assert train[0]["image"].shape == (1, 8, 8) and train[0]["image"].dtype == np.float32


def test_default_recipe_is_unchanged():
    names = [type(t).__name__ for t in training_augmentation(64).transforms]
    assert names == [
        "EnsureTyped", "RandAffined", "Rand2DElasticd", "RandBiasFieldd", "RandGibbsNoised", "RandAdjustContrastd",
        "MaskIntensityd", "ScaleIntensityRanged",
    ]  # fmt: skip
    a, b = training_augmentation(64), training_augmentation(64, recipe="default")
    a.set_random_state(2)
    b.set_random_state(2)
    item = brain_slice(64)
    np.testing.assert_array_equal(np.asarray(a(dict(item))["image"]), np.asarray(b(dict(item))["image"]))


@pytest.mark.parametrize("recipe", ["mild", "diverse"])
@pytest.mark.parametrize("resolution", [64, 128])
def test_intensity_recipes_range_background_and_difference(resolution, recipe):
    item = brain_slice(resolution)
    augment, default, again = (training_augmentation(resolution, recipe=r) for r in (recipe, "default", recipe))
    for transform in (augment, default, again):
        transform.set_random_state(1)
    differs = False
    for _ in range(6):
        out = augment(dict(item))
        image, mask = np.asarray(out["image"]), np.asarray(out["mask"])
        assert image.shape == (1, resolution, resolution) and image.min() >= 0.0 and image.max() <= 1.0
        assert (image[mask == 0] == 0).all()
        np.testing.assert_array_equal(np.asarray(again(dict(item))["image"]), image)  # seeded
        differs |= not np.array_equal(np.asarray(default(dict(item))["image"]), image)
    assert differs
    with pytest.raises(ValueError):
        training_augmentation(resolution, recipe="wild")


def test_recipes_and_their_steps():
    assert AUGMENTATION_RECIPES == ("default", "mild", "diverse")
    steps = {
        recipe: [type(t).__name__ for t in training_augmentation(64, recipe=recipe).flatten().transforms]
        for recipe in ("mild", "diverse")
    }
    spatial = [
        "EnsureTyped",
        "RandAffined",
        "Rand2DElasticd",
        "RandGibbsNoised",
        "RandBiasFieldd",
        "RandAdjustContrastd",
    ]
    tail = ["RandGaussianSmoothd", "RandGaussianNoised", "MaskIntensityd", "ScaleIntensityRanged"]
    # "diverse" is the recipe fine-tune 1 was trained with: its steps must not change
    assert steps["diverse"] == [*spatial, "RandScaleIntensityFixedMeand", "RandShiftIntensityd", *tail]
    assert steps["mild"] == [*spatial, "RandScaleIntensityFixedMeand", *tail]  # no brightness step


def test_mild_strength_is_within_the_diverse_one():
    mild, diverse = INTENSITY_STRENGTHS["mild"], INTENSITY_STRENGTHS["diverse"]
    for name in ("bias", "contrast", "brightness", "noise"):
        assert 0 <= mild[name] < diverse[name]
    assert diverse["gamma"][0] < mild["gamma"][0] < 1 < mild["gamma"][1] < diverse["gamma"][1]
    by_name = {type(t).__name__: t for t in intensity_augmentation(strength="mild").transforms}
    assert by_name["RandBiasFieldd"].rand_bias_field.coeff_range == (0.0, 0.15)
    assert tuple(by_name["RandAdjustContrastd"].adjuster.gamma) == (0.7, 1.5)
    with pytest.raises(ValueError):
        intensity_augmentation(strength="default")  # Recipe 1 is training_augmentation's, not a strength


@pytest.mark.parametrize("strength", ["mild", "diverse"])
def test_intensity_augmentation_covers_scanner_variation_and_keeps_the_range(strength):
    augment = intensity_augmentation(strength=strength)
    names = {type(t).__name__ for t in augment.transforms}
    assert {"RandBiasFieldd", "RandAdjustContrastd", "RandScaleIntensityFixedMeand"} <= names
    assert {"RandGaussianNoised", "RandGaussianSmoothd", "MaskIntensityd"} <= names
    augment.set_random_state(0)
    item = brain_slice(64)
    changed = 0
    for _ in range(8):
        image = np.asarray(augment(dict(item))["image"])
        assert image.min() >= 0.0 and image.max() <= 1.0 and (image[item["mask"] == 0] == 0).all()
        changed += not np.allclose(image, item["image"])
    assert changed >= 6


def test_unseen_set_contrast_is_another_family():
    # the unseen-anatomy set must test generalisation, not the augmentation: no shared contrast or noise model
    training = {
        type(t).__name__
        for strength in INTENSITY_STRENGTHS
        for t in intensity_augmentation(strength=strength).transforms
    }
    unseen = {type(t).__name__ for t in unseen_intensity_model().transforms}
    assert "RandTissueContrastd" in unseen and "RandTissueContrastd" not in training
    assert not {"RandAdjustContrastd", "RandScaleIntensityFixedMeand", "RandGaussianNoised"} & unseen
