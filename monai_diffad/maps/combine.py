# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Combining several anomaly maps into one."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai_diffad.maps._checks import check_image_tensor

__all__ = ["harmonic_mean"]


def _stack_maps(maps: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(maps, torch.Tensor):
        if maps.ndim not in (5, 6):
            raise ValueError(
                "a stacked maps tensor must have shape (N, B, C, H, W) or (N, B, C, H, W, D), "
                f"got {tuple(maps.shape)}."
            )
        stacked = maps
    else:
        maps = list(maps)
        if not maps:
            raise ValueError("maps must hold at least one map.")
        for i, m in enumerate(maps):
            check_image_tensor(m, f"maps[{i}]", require_finite=False)
            if m.shape != maps[0].shape:
                raise ValueError(
                    f"all maps must have the same shape, maps[0] is {tuple(maps[0].shape)} "
                    f"and maps[{i}] is {tuple(m.shape)}."
                )
        stacked = torch.stack(maps, dim=0)
    if stacked.shape[0] == 0:
        raise ValueError("maps must hold at least one map.")
    check_image_tensor(stacked[0], "maps[0]", require_finite=False)
    if not bool(torch.isfinite(stacked).all()):
        raise ValueError("maps contain NaN or infinite values.")
    return stacked


def harmonic_mean(maps: Sequence[torch.Tensor] | torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Pixel-wise harmonic mean ``N / sum_i(1 / m_i)`` of N non-negative maps.

    A pixel that is zero (``<= eps``) in any map is exactly 0 in the result, the limit of the
    formula, so the mean never produces NaN or inf. The THOR reference combines its recorded maps
    this way (and clips the result at 0.999 afterwards, which is the caller's job).

    Args:
        maps: N >= 1 maps, either a sequence of (B, C, *spatial) tensors of equal shape or one
            tensor stacked on dim 0, (N, B, C, *spatial); non-negative and finite.
        eps: values ``<= eps`` count as zero; 0 gives the exact harmonic mean.

    Returns:
        (B, C, *spatial) harmonic mean, same dtype and device as the maps, in [0, max(maps)].

    Raises:
        TypeError: when a map is not a floating-point tensor.
        ValueError: for no maps, wrong dimensions, differing shapes, negative ``eps``, or negative
            or non-finite values.
    """
    if not eps >= 0.0:
        raise ValueError(f"eps must be non-negative, got {eps}.")
    stacked = _stack_maps(maps)
    if bool((stacked < 0).any()):
        raise ValueError("harmonic_mean needs non-negative maps.")
    is_zero = stacked <= eps
    # replace zeros before the reciprocal so no inf is ever formed (safe for autograd too)
    reciprocal_sum = torch.where(is_zero, torch.ones_like(stacked), stacked).reciprocal().sum(dim=0)
    mean = stacked.shape[0] / reciprocal_sum
    return torch.where(is_zero.any(dim=0), torch.zeros_like(mean), mean)
