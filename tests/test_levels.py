# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Noise levels across value ranges (AutoDDPM's reference runs its network on [0, 1], ours on [-1, 1])."""

from __future__ import annotations

import pytest
import torch

from monai_diffad.inferers import equal_snr_level, signal_to_noise_ratio
from monai_diffad.networks import ddpm_scheduler

SCHEDULER = ddpm_scheduler()


def test_autoddpm_reference_levels_on_the_package_range():
    # the reference's 200 / 50 on [0, 1]: what the AutoDDPM bundle runs on its [-1, 1] network
    assert equal_snr_level(SCHEDULER, 200) == 331
    assert equal_snr_level(SCHEDULER, 50) == 103


@pytest.mark.parametrize("level", [0, 1, 50, 350, 999])
def test_same_range_keeps_the_level(level):
    assert equal_snr_level(SCHEDULER, level, (-1, 1), (-1, 1)) == level
    assert equal_snr_level(SCHEDULER, level, (0, 1), (2, 3)) == level  # only the width matters


def test_the_conversion_matches_the_noised_images():
    """A [0, 1] image at level t and its [-1, 1] copy at the matched level have about the same contrast-to-noise."""
    image = (torch.arange(64.0).reshape(8, 8) / 63.0)[None, None]
    contrast = lambda x, t: float(SCHEDULER.alphas_cumprod[t].sqrt() * x.std() / (1 - SCHEDULER.alphas_cumprod[t]).sqrt())  # noqa: E731
    matched = equal_snr_level(SCHEDULER, 200)
    assert contrast(2 * image - 1, matched) == pytest.approx(contrast(image, 200), rel=0.02)
    assert contrast(2 * image - 1, 200) > 1.5 * contrast(image, 200)  # unconverted, the [-1, 1] run noises far less


def test_snr_decreases_and_bad_input_is_refused():
    snr = signal_to_noise_ratio(SCHEDULER, (0.0, 1.0))
    assert snr.shape == (1000,) and bool((snr[1:] < snr[:-1]).all())
    with pytest.raises(ValueError, match="level must be an integer"):
        equal_snr_level(SCHEDULER, 1000)
    with pytest.raises(ValueError, match="level must be an integer"):
        equal_snr_level(SCHEDULER, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="high > low"):
        signal_to_noise_ratio(SCHEDULER, (1.0, 1.0))
