# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE's reference training recipes 'fpi' and 'dag': the intensity-class shift, its α and timestep, the presets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import phantom
from monai.bundle import ConfigParser
from scipy.ndimage import gaussian_filter

from monai_diffad.disyre_schedule import timestep_for_alpha
from monai_diffad.transforms.corruption import (
    DAG_CODEBOOK,
    DISYRE_CORRUPTIONS,
    RandForeignPatchCorruption,
    RandForeignPatchCorruptiond,
    class_selection_probs,
    intensity_class_bias,
    quantize_intensities,
)

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "bundles", "disyre", "train.json")


def _image_and_mask(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(1, size, size)`` image in [0, 1] and a soft disc mask with a hard zero outside radius size/4."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).float().sqrt()
    mask = (1.0 - r / (size / 4)).clamp(0.0, 1.0)[None]
    return image, mask


# ---------------------------------------------------------------------------------------------------- pure functions
def test_quantize_and_selection_probs():
    x = torch.tensor([[[0.0, 0.1, 0.4, 0.6, 0.75, 1.0]]])
    assert quantize_intensities(x, DAG_CODEBOOK).tolist() == [[[0, 0, 1, 2, 3, 4]]]
    # a value half-way between two levels goes to the lower one
    assert quantize_intensities(torch.tensor([0.5]), (0.0, 1.0)).tolist() == [0]
    mask = torch.tensor([[[1.0, 0.5, 0.0, 0.2, 0.0, 1.0]]])  # classes 0, 0, 2, 4 inside the support
    probs = class_selection_probs(x, mask, DAG_CODEBOOK, pseudo_count=6.0)
    assert torch.allclose(probs, torch.tensor([2, 0, 1, 0, 1], dtype=torch.float64) / 10)
    assert class_selection_probs(x, torch.zeros_like(mask)).sum() == 0


def test_class_bias_changes_only_the_masks_support():
    image, mask = _image_and_mask()
    selected = torch.tensor([False, True, False, True, False])
    for shift in (0.7, -0.4):
        out, alpha_bias = intensity_class_bias(image, mask, selected, shift)
        changed = out != image
        assert changed.any() and not changed[mask == 0].any()
        assert out.min() >= 0 and out.max() <= 1
        assert alpha_bias == float((out - image).abs().max()) and 0 < alpha_bias <= abs(shift)
        assert ((out - image) * np.sign(shift) >= 0).all()  # the shift has one sign


def test_class_bias_matches_its_formula():
    """out = clip(x + shift·m·G_σ(1[class ∈ selected]), 0, 1), with scipy's Gaussian filter (σ = 1, 'reflect')."""
    image, mask = _image_and_mask(seed=1)
    selected = torch.tensor([True, False, True, False, False])
    out, alpha_bias = intensity_class_bias(image, mask, selected, -0.6)
    x = image.double().numpy()
    classes = np.abs(x[..., None] - np.asarray(DAG_CODEBOOK)).argmin(-1)
    indicator = np.isin(classes, [0, 2]).astype(np.float64)
    weight = mask.double().numpy() * gaussian_filter(indicator, sigma=(0, 1, 1), mode="reflect")
    expected = np.clip(x - 0.6 * weight, 0, 1)
    assert np.abs(out.double().numpy() - expected).max() < 1e-6
    assert abs(alpha_bias - np.abs(expected - x).max()) < 1e-6
    # σ = 0: the unblurred indicator, exactly
    hard, _ = intensity_class_bias(image, mask, selected, 0.3, sigma=0.0)
    sel = torch.isin(quantize_intensities(image, DAG_CODEBOOK), torch.tensor([0, 2]))
    assert torch.equal(hard, torch.where(mask * sel > 0, (image + 0.3 * mask * sel).clamp(0, 1), image))


def test_no_class_selected_shifts_the_whole_shape_and_zero_shift_is_identity():
    image, mask = _image_and_mask(seed=2)
    none, _ = intensity_class_bias(image, mask, torch.zeros(5, dtype=torch.bool), 0.5)
    every, _ = intensity_class_bias(image, mask, torch.ones(5, dtype=torch.bool), 0.5)
    assert torch.equal(none, every)
    # every class selected: the blurred indicator is 1 everywhere, so the weight is the mask itself
    assert torch.allclose(every, (image + 0.5 * mask).clamp(0, 1), atol=1e-6)
    same, alpha_bias = intensity_class_bias(image, mask, torch.ones(5, dtype=torch.bool), 0.0)
    assert torch.equal(same, image) and alpha_bias == 0.0
    with pytest.raises(ValueError, match="one flag per codebook level"):
        intensity_class_bias(image, mask, torch.ones(3, dtype=torch.bool), 0.5)


# ---------------------------------------------------------------------------------------------------- transform
def _twins(seed: int, **kwargs) -> tuple[RandForeignPatchCorruption, RandForeignPatchCorruption]:
    """'dag' and the same options without the class shift, equally seeded: their first calls draw the same
    (α, shape, patch), the shift's draws come after (later calls differ: the shift consumes random numbers)."""
    options = {**DISYRE_CORRUPTIONS["dag"], **kwargs}
    return (
        RandForeignPatchCorruption(**options).set_random_state(seed),
        RandForeignPatchCorruption(**{**options, "class_bias": False}).set_random_state(seed),
    )


def test_zero_shift_gives_the_fpi_output():
    """A zero shift magnitude changes nothing: x_t, α and t are those of the same draw without the class shift."""
    x = phantom(32)[0][0]
    for seed in range(5):
        with_bias, without = _twins(seed, class_bias_range=(0.0, 0.0))
        a, b = with_bias(x), without(x)
        assert torch.equal(a, b) and with_bias.alpha_bias == 0.0
        assert (with_bias.alpha, with_bias.timestep) == (without.alpha, without.timestep)


@pytest.mark.parametrize("alpha, magnitude", [(0.1, 0.9), (0.9, 0.05)])
def test_timestep_follows_the_larger_alpha(alpha, magnitude):
    x = phantom(32)[0][0]
    raised = 0
    for seed in range(8):
        dag, fpi = _twins(seed, alpha_range=(alpha, alpha), class_bias_range=(magnitude, magnitude))
        out, texture_only = dag(x), fpi(x)
        # the shift is applied to the foreign-patch output; α_bias is its largest change
        assert dag.alpha_bias == float((out - texture_only).abs().max())
        assert dag.alpha_texture == fpi.alpha
        assert dag.alpha == max(dag.alpha_texture, dag.alpha_bias)
        assert dag.timestep == int(timestep_for_alpha(torch.tensor([dag.alpha]), dag.alphas)[0])
        raised += dag.alpha_bias > dag.alpha_texture
    assert raised > 0 if magnitude > alpha else raised == 0


def test_unchanged_image_reports_no_corruption():
    x = phantom(32)[0][0]
    background = torch.zeros(1, 32, 32)  # no foreground: the shape is zeroed, the image cannot change
    flagged = RandForeignPatchCorruption(**DISYRE_CORRUPTIONS["fpi"]).set_random_state(0)
    assert torch.equal(flagged(x, foreground=background), x) and (flagged.alpha, flagged.timestep) == (0.0, 0)
    legacy = RandForeignPatchCorruption().set_random_state(0)
    assert torch.equal(legacy(x, foreground=background), x) and legacy.alpha > 0 and legacy.timestep > 0


def test_dag_is_deterministic_with_a_seed():
    x = phantom(32, batch=3, seed=1)[0]
    x[1] = x[1].flip(-1) * 0.7

    def run(seed: int) -> dict[str, torch.Tensor]:
        return RandForeignPatchCorruption(**DISYRE_CORRUPTIONS["dag"]).set_random_state(seed).corrupt_batch(x)

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["image"], c["image"])
    d1 = RandForeignPatchCorruptiond("image", preset="dag").set_random_state(2)({"image": x[0]})
    d2 = RandForeignPatchCorruptiond("image", preset="dag").set_random_state(2)({"image": x[0]})
    assert all(torch.equal(torch.as_tensor(d1[k]), torch.as_tensor(d2[k])) for k in d1)


# ---------------------------------------------------------------------------------------------------- presets
def test_presets_are_the_reference_recipes():
    common = {
        "timestep_sampling": "uniform_alpha",
        "alpha_range": (0.0, 1.0),
        "prob": 1.0,
        "bias_prob": 0.0,
        "cache_size": 512,
        "zero_alpha_if_unchanged": True,
    }
    assert dict(DISYRE_CORRUPTIONS["fpi"]) == {**common, "intensity_matching": "none", "class_bias": False}
    assert dict(DISYRE_CORRUPTIONS["dag"]) == {
        **common,
        "intensity_matching": "minmax",
        "class_bias": True,
        "class_bias_codebook": (0.00565079, 0.38283867, 0.61224216, 0.76920754, 0.9385473),
        "class_bias_range": (0.0, 1.0),
    }
    with pytest.raises(TypeError):
        DISYRE_CORRUPTIONS["dag"]["class_bias"] = False
    dag = RandForeignPatchCorruptiond("image", preset="dag").corruption
    assert dag.class_bias and dag.intensity_matching == "minmax" and dag.zero_alpha_if_unchanged
    assert dag.class_bias_codebook.tolist() == pytest.approx(list(DAG_CODEBOOK))
    fpi = RandForeignPatchCorruptiond("image", preset="fpi", cache_size=8).corruption  # an explicit option wins
    assert not fpi.class_bias and fpi.intensity_matching == "none" and fpi.cache_size == 8
    legacy = RandForeignPatchCorruptiond("image").corruption  # no preset: the constructor's defaults
    assert not legacy.class_bias and legacy.intensity_matching == "minmax" and not legacy.zero_alpha_if_unchanged
    with pytest.raises(ValueError, match="dag"):
        RandForeignPatchCorruptiond("image", preset="dagg")
    with pytest.raises(ValueError, match="class_bias_range"):
        RandForeignPatchCorruption(class_bias_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="class_bias_codebook"):
        RandForeignPatchCorruption(class_bias_codebook=[])


@pytest.mark.parametrize(
    "preset, class_bias, matching", [("dag", True, "minmax"), ("fpi", False, "none"), (None, False, "minmax")]
)
def test_bundle_preset_by_name(preset, class_bias, matching):
    with open(BUNDLE) as f:
        config = json.load(f)
    assert config["corruption_preset"] == "dag"  # the recipe the reference trains with is the default
    config["corruption_preset"] = preset
    corruption = ConfigParser(config).get_parsed_content("corruption").corruption
    assert corruption.class_bias is class_bias and corruption.intensity_matching == matching
