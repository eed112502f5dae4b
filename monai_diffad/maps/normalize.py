# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Per-image normalisation of anomaly maps.

Every function treats each batch item on its own (all channels and spatial positions of one item
together), as THOR_DDPM does (per image) rather than the MICCAI THOR code (per batch).
"""

from __future__ import annotations

import torch

from monai_diffad.maps._checks import check_image_tensor

__all__ = ["normalize_by_max", "minmax_normalize", "per_image_quantile", "percentile_normalize"]


def _per_image_view(m: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, N) view of the items and the broadcast shape (B, 1, 1, ...) of per-item statistics."""
    return m.reshape(m.shape[0], -1), (m.shape[0],) + (1,) * (m.ndim - 1)


def normalize_by_max(m: torch.Tensor) -> torch.Tensor:
    """Divide each image by its own maximum.

    Args:
        m: non-negative maps, (B, C, H, W) or (B, C, H, W, D), finite.

    Returns:
        Maps of the same shape in [0, 1], each item's maximum equal to 1; all-zero items are returned
        unchanged.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, no elements, negative or non-finite values.
    """
    check_image_tensor(m, "m")
    # a negative value would end up outside [0, 1] (or flip the map's sign) without notice
    if bool((m < 0).any()):
        raise ValueError(f"normalize_by_max needs non-negative maps, got a minimum of {m.min().item():.4g}.")
    flat, stat_shape = _per_image_view(m)
    maximum = flat.amax(dim=1).reshape(stat_shape)
    return m / torch.where(maximum > 0, maximum, torch.ones_like(maximum))


def minmax_normalize(m: torch.Tensor) -> torch.Tensor:
    """Rescale each image linearly to [0, 1] with its own minimum and maximum.

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), any finite values.

    Returns:
        Maps of the same shape in [0, 1]; constant items become all zeros.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions or non-finite values.
    """
    check_image_tensor(m, "m")
    flat, stat_shape = _per_image_view(m)
    minimum = flat.amin(dim=1).reshape(stat_shape)
    value_range = flat.amax(dim=1).reshape(stat_shape) - minimum
    return (m - minimum) / torch.where(value_range > 0, value_range, torch.ones_like(value_range))


def per_image_quantile(m: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of each image, linear interpolation (``numpy.percentile`` default).

    Uses ``kthvalue`` rather than ``torch.quantile``, which refuses inputs above 2**24 elements
    (a 256^3 volume).

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), finite.
        q: percentile in [0, 100].

    Returns:
        (B,) tensor of percentiles.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values or ``q`` outside [0, 100].
    """
    check_image_tensor(m, "m")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}.")
    flat, _ = _per_image_view(m)
    position = q / 100.0 * (flat.shape[1] - 1)
    lower_rank = int(position)  # floor, position >= 0
    upper_rank = min(lower_rank + 1, flat.shape[1] - 1)
    lower = flat.kthvalue(lower_rank + 1, dim=1).values
    if upper_rank == lower_rank or position == lower_rank:
        return lower
    upper = flat.kthvalue(upper_rank + 1, dim=1).values
    return lower + (position - lower_rank) * (upper - lower)


def percentile_normalize(m: torch.Tensor, q: float = 95.0) -> torch.Tensor:
    """``clip(m / percentile_q(m), 0, 1)`` with the percentile taken per image (AutoDDPM's residual term).

    Args:
        m: non-negative maps, (B, C, H, W) or (B, C, H, W, D), finite.
        q: percentile in [0, 100]; AutoDDPM uses 95.

    Returns:
        Maps of the same shape in [0, 1]. Where an item's percentile is <= 0, its positive pixels
        become 1 and the rest 0 (the limit of ``m / p`` as ``p -> 0+``), so no NaN appears.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values or ``q`` outside [0, 100].
    """
    percentile = per_image_quantile(m, q).reshape((m.shape[0],) + (1,) * (m.ndim - 1))
    positive = percentile > 0
    ratio = m / torch.where(positive, percentile, torch.ones_like(percentile))
    return torch.where(positive, ratio, (m > 0).to(m.dtype)).clamp(0.0, 1.0)
