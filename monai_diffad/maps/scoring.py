# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Image-level anomaly scores from voxel-wise maps."""

from __future__ import annotations

import math

import torch

__all__ = ["top_fraction_mean"]


def top_fraction_mean(maps: torch.Tensor, fraction: float = 0.01, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the highest ``fraction`` of each map's values (inside ``mask`` when given): a robust maximum.

    A plain maximum reacts to one noisy voxel; the mean of the top 1 % reacts to a lesion of at least that size.

    Args:
        maps: ``(B, ...)`` anomaly maps.
        fraction: share of values averaged, in (0, 1].
        mask: optional ``(B, ...)`` foreground, same number of elements per item as ``maps``.

    Returns:
        ``(B,)`` scores (0 for an item whose mask is empty).

    Raises:
        TypeError: ``maps`` or ``mask`` is not a tensor.
        ValueError: ``fraction`` outside (0, 1], ``maps`` without a batch axis, empty or not finite (a NaN would
            sort first and become the score), or a mask of another size.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if not isinstance(maps, torch.Tensor) or not (mask is None or isinstance(mask, torch.Tensor)):
        raise TypeError(f"maps and mask must be torch.Tensors, got {type(maps).__name__} and {type(mask).__name__}.")
    if maps.ndim < 2 or maps.numel() == 0:
        raise ValueError(f"maps must be a non-empty (B, ...) batch, got shape {tuple(maps.shape)}.")
    flat = maps.flatten(1).float()
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("maps contain NaN or infinite values.")
    if mask is None:
        valid = torch.ones_like(flat, dtype=torch.bool)
    else:
        if mask.shape[:1] != maps.shape[:1] or mask.numel() != maps.numel():
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match maps of shape {tuple(maps.shape)}.")
        valid = mask.to(flat.device).reshape(flat.shape) > 0
    # masked-out values sort below every valid one and are excluded by the per-item count
    ranked = torch.where(valid, flat, torch.full_like(flat, -math.inf)).sort(dim=1, descending=True).values
    counts = torch.ceil(fraction * valid.sum(1).float()).long()
    keep = torch.arange(flat.shape[1], device=flat.device)[None, :] < counts[:, None]
    return torch.where(keep, ranked, torch.zeros_like(ranked)).sum(1) / counts.clamp(min=1)
