# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The calibrated map scale: the bundle's threshold lands on 0.5, order and labels are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_diffad.maps import CALIBRATED_LEVEL, rescale_to_threshold


@pytest.mark.parametrize("t", [0.04, 0.231, 0.5, 0.9])
def test_threshold_goes_to_one_half_and_ends_stay(t):
    assert rescale_to_threshold(t, t) == pytest.approx(CALIBRATED_LEVEL)
    assert rescale_to_threshold(0.0, t) == 0.0 and rescale_to_threshold(1.0, t) == pytest.approx(1.0)
    # the two pieces meet at t: no jump a colour window would show
    assert rescale_to_threshold(t - 1e-7, t) == pytest.approx(rescale_to_threshold(t + 1e-7, t), abs=1e-5)


@pytest.mark.parametrize("t", [0.04, 0.352])
def test_monotone_and_labels_unchanged(t):
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    values[:3] = torch.tensor([0.0, t, 1.0])
    out = rescale_to_threshold(values, t)
    order = torch.argsort(values)
    assert bool((out[order].diff() >= 0).all())
    # labels agree except within float32 rounding of t itself (float32(0.352) < 0.352, yet it maps to 0.5)
    clear = (values - t).abs() > 1e-6
    assert torch.equal((out >= CALIBRATED_LEVEL)[clear], (values >= t)[clear])
    # the rule of the docstring, checked on one value per piece
    assert float(rescale_to_threshold(torch.tensor(t / 2), t)) == pytest.approx(0.25)
    assert float(rescale_to_threshold(torch.tensor((1 + t) / 2), t)) == pytest.approx(0.75)


def test_types_are_kept_and_out_of_range_values_clipped():
    array = np.array([-0.1, 0.02, 0.3, 1.2], dtype=np.float32)
    out = rescale_to_threshold(array, 0.04)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5 + 0.5 * 0.26 / 0.96, 1.0], rtol=1e-6)
    tensor = torch.tensor([0.02], dtype=torch.float64)
    assert rescale_to_threshold(tensor, 0.04).dtype == torch.float64
    assert isinstance(rescale_to_threshold(0.02, 0.04), float)


@pytest.mark.parametrize("t", [0.0, 1.0, -0.2, 1.5])
def test_a_threshold_outside_the_open_unit_interval_is_refused(t):
    with pytest.raises(ValueError, match="threshold"):
        rescale_to_threshold(torch.zeros(3), t)
