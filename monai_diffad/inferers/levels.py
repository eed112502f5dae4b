# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Noise levels across value ranges: the level at which a network trained on another range sees the same noise.

A DDPM noises x to √ᾱ_t·x + √(1 − ᾱ_t)·ε whatever the range of x. A paper's level t is therefore tied to the value
range its network was trained on: the same t noises [0, 1] images twice as hard, relative to their contrast, as
[−1, 1] images. The signal-to-noise ratio of level t on a range of width w is w²·ᾱ_t / (1 − ᾱ_t); the matching
level on another range is the one whose ratio is closest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import Scheduler

__all__ = ["equal_snr_level", "signal_to_noise_ratio"]


def signal_to_noise_ratio(scheduler: Scheduler, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """SNR of every level of ``scheduler`` for images spanning ``value_range``: ``w² · ᾱ_t / (1 − ᾱ_t)``.

    Args:
        scheduler: a scheduler with an ``alphas_cumprod`` table of length T.
        value_range: ``(low, high)`` of the images, ``high > low``.

    Returns:
        ``(T,)`` float64 tensor, decreasing with t.
    """
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {tuple(value_range)}.")
    alphas = scheduler.alphas_cumprod.double()
    return (high - low) ** 2 * alphas / (1.0 - alphas)


def equal_snr_level(
    scheduler: Scheduler,
    level: int,
    from_range: Sequence[float] = (0.0, 1.0),
    to_range: Sequence[float] = (-1.0, 1.0),
) -> int:
    """The level on ``to_range`` whose signal-to-noise ratio is closest to that of ``level`` on ``from_range``.

    AutoDDPM's reference trains and infers on [0, 1] with levels 200 and 50; a network trained on [−1, 1] sees the
    same noise, relative to the image contrast, at ``equal_snr_level(scheduler, 200) == 331`` and 103 (the papers'
    linear schedule, T = 1000).

    Args:
        scheduler: the schedule both networks were trained with.
        level: the level on ``from_range``, in [0, T − 1].
        from_range: value range ``level`` refers to.
        to_range: value range of the network that will run.

    Returns:
        A level in [0, T − 1] (``level`` itself when the ranges have the same width).

    Raises:
        ValueError: ``level`` is not an integer in [0, T − 1], or a range is empty.
    """
    source = signal_to_noise_ratio(scheduler, from_range)
    if isinstance(level, bool) or not float(level).is_integer() or not 0 <= int(level) < len(source):
        raise ValueError(f"level must be an integer in [0, {len(source) - 1}], got {level!r}.")
    target = signal_to_noise_ratio(scheduler, to_range)
    return int(torch.argmin((target.log() - source[int(level)].log()).abs()))
