# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Property-based tests (hypothesis): ranges, shapes and invariants of maps, metrics and transforms."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monai_diffad.maps import (
    gaussian_smooth,
    grey_closing,
    grey_dilation,
    grey_erosion,
    harmonic_mean,
    minmax_normalize,
    normalize_by_max,
    per_image_quantile,
    percentile_normalize,
    residual_map,
    structural_dissimilarity_map,
)
from monai_diffad.maps.scoring import top_fraction_mean
from monai_diffad.metrics import auroc, best_dice, healthy_fpr_threshold
from monai_diffad.transforms import AnomalyMapToLabel, ForegroundPercentileScale

SETTINGS = settings(max_examples=40, deadline=None)

#: small (B, C, H, W) shapes
shapes_2d = st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(2, 9), st.integers(2, 9))
#: values in [0, 1] including the edges and exact zeros, which the formulas special-case; no subnormals, whose
#: float32 reciprocals overflow (a harmonic mean of 1e-40 is 0 instead of 1e-40: harmless, but not what is tested)
unit_floats = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, width=32, allow_subnormal=False))


def unit_maps(shape_strategy=shapes_2d) -> st.SearchStrategy[torch.Tensor]:
    return shape_strategy.flatmap(lambda s: arrays(np.float32, s, elements=unit_floats)).map(torch.from_numpy)


def finite_maps(shape_strategy=shapes_2d) -> st.SearchStrategy[torch.Tensor]:
    values = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    return shape_strategy.flatmap(lambda s: arrays(np.float32, s, elements=values)).map(torch.from_numpy)


odd_sizes = st.sampled_from([1, 3, 5])
shapes_both = st.sampled_from(["square", "disc"])


# ---------------------------------------------------------------- normalisation


@SETTINGS
@given(m=unit_maps())
def test_normalize_by_max_in_unit_range_with_max_one(m):
    out = normalize_by_max(m * 7.0)
    assert out.shape == m.shape and out.min() >= 0 and out.max() <= 1
    per_item_max = out.flatten(1).amax(1)
    nonzero = m.flatten(1).amax(1) > 0
    assert torch.all(per_item_max[nonzero] == 1) and torch.all(per_item_max[~nonzero] == 0)


@SETTINGS
@given(m=finite_maps())
def test_minmax_normalize_in_unit_range(m):
    out = minmax_normalize(m)
    assert out.shape == m.shape and out.min() >= 0 and out.max() <= 1


@SETTINGS
@given(m=unit_maps(), q=st.floats(0.0, 100.0))
def test_percentile_normalize_in_unit_range_and_quantile_bounded(m, q):
    out = percentile_normalize(m, q)
    assert out.shape == m.shape and out.min() >= 0 and out.max() <= 1
    p = per_image_quantile(m, q)
    flat = m.flatten(1)
    assert torch.all(flat.amin(1) <= p) and torch.all(p <= flat.amax(1))


# ---------------------------------------------------------------- combination


@SETTINGS
@given(data=st.data(), n=st.integers(1, 4))
def test_harmonic_mean_bounds_and_zeros(data, n):
    shape = data.draw(shapes_2d)
    maps = [data.draw(arrays(np.float32, shape, elements=unit_floats)) for _ in range(n)]
    maps = [torch.from_numpy(m) for m in maps]
    stacked = torch.stack(maps)
    hm = harmonic_mean(maps)
    lowest = stacked.amin(0)
    assert hm.shape == maps[0].shape
    assert torch.all(hm >= 0)
    assert torch.all(hm <= lowest * n * (1 + 1e-6))
    # a harmonic mean lies between the smallest and largest value (float32 rounding aside)
    assert torch.all(hm >= lowest * (1 - 1e-5)) and torch.all(hm <= stacked.amax(0) * (1 + 1e-5))
    assert torch.all(hm[(stacked == 0).any(0)] == 0)
    assert torch.isfinite(hm).all()


# ---------------------------------------------------------------- residuals and perceptual fallback


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["l1", "l2"]))
def test_residual_symmetric_non_negative_zero_on_identity(data, kind):
    shape = data.draw(shapes_2d)
    x = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=unit_floats)))
    y = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=unit_floats)))
    r = residual_map(x, y, kind)
    assert r.shape == (shape[0], 1, *shape[2:])
    assert torch.equal(r, residual_map(y, x, kind))
    assert r.min() >= 0 and r.max() <= 1
    assert torch.all(residual_map(x, x, kind) == 0)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_structural_dissimilarity_in_unit_range_and_zero_on_identity(data):
    shape = data.draw(st.tuples(st.just(1), st.just(1), st.integers(4, 12), st.integers(4, 12)))
    x = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=unit_floats)))
    y = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=unit_floats)))
    d = structural_dissimilarity_map(x, y)
    assert d.shape == (1, 1, *shape[2:]) and d.min() >= 0 and d.max() <= 1
    assert structural_dissimilarity_map(x, x).max() <= 1e-5


# ---------------------------------------------------------------- morphology and smoothing


@SETTINGS
@given(m=finite_maps(), k=odd_sizes, shape=shapes_both)
def test_morphology_ordering(m, k, shape):
    eroded, dilated, closed = grey_erosion(m, k, shape), grey_dilation(m, k, shape), grey_closing(m, k, shape)
    assert eroded.shape == dilated.shape == closed.shape == m.shape
    assert torch.all(eroded <= m) and torch.all(m <= dilated)
    assert torch.all(closed >= m) and torch.all(closed <= dilated)
    if k == 1:
        assert torch.equal(eroded, m) and torch.equal(dilated, m) and torch.equal(closed, m)


@SETTINGS
@given(m=unit_maps(), k=odd_sizes)
def test_closing_is_idempotent_and_dilation_monotone(m, k):
    closed = grey_closing(m, k)
    assert torch.equal(grey_closing(closed, k), closed)
    assert torch.all(grey_dilation(m * 0.5, k) <= grey_dilation(m, k))


@SETTINGS
@given(m=unit_maps(), sigma=st.floats(0.0, 3.0))
def test_gaussian_smooth_stays_within_the_maps_range(m, sigma):
    out = gaussian_smooth(m.double(), sigma)
    flat, smooth = m.double().flatten(2), out.flatten(2)
    # a normalised non-negative kernel averages: per image and channel, no new extremes
    assert torch.all(smooth.amin(2) >= flat.amin(2) - 1e-12) and torch.all(smooth.amax(2) <= flat.amax(2) + 1e-12)


# ---------------------------------------------------------------- scores and metrics


@SETTINGS
@given(m=unit_maps(), fraction=st.floats(1e-3, 1.0))
def test_top_fraction_mean_between_mean_and_max(m, fraction):
    score = top_fraction_mean(m, fraction)
    flat = m.flatten(1)
    assert score.shape == (m.shape[0],)
    assert torch.all(score <= flat.amax(1) + 1e-6) and torch.all(score >= flat.mean(1) - 1e-6)


@SETTINGS
@given(shape=shapes_2d, seed=st.integers(0, 2**31 - 1))
def test_dice_of_a_mask_with_itself_is_one(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    mask.view(-1)[0] = True  # at least one positive, so Dice is defined
    dice, threshold = best_dice(mask.float(), mask)
    assert dice == 1.0 and 0.0 <= threshold <= 1.0
    assert threshold > 0 or bool(mask.all())  # threshold 0 flags everything: only right when all is positive


@SETTINGS
@given(m=unit_maps(), seed=st.integers(0, 2**31 - 1))
def test_auroc_in_unit_range_and_one_for_a_perfect_map(m, seed):
    labels = torch.rand(m.shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    labels.view(-1)[0], labels.view(-1)[-1] = True, False
    if m.numel() < 2:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = auroc(m, labels)
    assert 0.0 <= value <= 1.0
    assert auroc(labels.float(), labels) == 1.0


@SETTINGS
@given(m=unit_maps(), fpr=st.floats(0.01, 0.99))
def test_healthy_fpr_threshold_meets_its_rate(m, fpr):
    th = healthy_fpr_threshold(m[:, :1], fpr=fpr, num_thresholds=100)
    share = (m[:, :1].flatten(1) > th).double().mean(1).mean()
    assert 0.0 <= th < 1.0
    assert share <= fpr or th == 0.99


# ---------------------------------------------------------------- transforms


@SETTINGS
@given(m=unit_maps(), t=st.floats(0.0, 0.5), gap=st.floats(0.01, 0.5))
def test_anomaly_map_to_label_values_and_monotonicity(m, t, gap):
    high = min(1.0, t + gap)
    label = AnomalyMapToLabel(t, high)(m)
    assert label.dtype == torch.uint8 and label.shape == m.shape
    assert set(label.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(label >= 1, m >= t) and torch.equal(label == 2, m >= high)


@SETTINGS
@given(img=finite_maps(st.tuples(st.just(1), st.integers(2, 8), st.integers(2, 8))), p=st.floats(1.0, 100.0))
def test_foreground_percentile_scale_range(img, p):
    img = img.abs() + 0.0
    if not bool((img > 0).any()) or img.min() == img.max():
        return  # refused inputs are tested in test_input_validation.py
    try:
        out = ForegroundPercentileScale(p)(img)
    except ValueError as e:  # a percentile of 0 inside the foreground cannot happen: fg is > 0
        raise AssertionError(f"valid image refused: {e}") from e
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert torch.all(out[img <= 0] == 0)
