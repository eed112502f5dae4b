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
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    flat = maps.flatten(1).float()
    if mask is None:
        valid = torch.ones_like(flat, dtype=torch.bool)
    else:
        valid = mask.to(flat.device).flatten(1) > 0
        if valid.shape != flat.shape:
            raise ValueError(f"mask has {valid.shape[1]} elements per item, maps have {flat.shape[1]}.")
    # masked-out values sort below every valid one and are excluded by the per-item count
    ranked = torch.where(valid, flat, torch.full_like(flat, -math.inf)).sort(dim=1, descending=True).values
    counts = torch.ceil(fraction * valid.sum(1).float()).long()
    keep = torch.arange(flat.shape[1], device=flat.device)[None, :] < counts[:, None]
    return torch.where(keep, ranked, torch.zeros_like(ranked)).sum(1) / counts.clamp(min=1)
