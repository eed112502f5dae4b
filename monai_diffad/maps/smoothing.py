# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Spatial Gaussian smoothing of anomaly maps, matching ``scipy.ndimage.gaussian_filter``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from monai_diffad.maps._checks import check_image_tensor

__all__ = ["gaussian_kernel1d", "gaussian_smooth", "symmetric_pad_indices"]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1D Gaussian kernel with scipy's radius rule ``int(truncate * sigma + 0.5)``.

    Args:
        sigma: standard deviation in pixels, > 0.
        truncate: kernel half-width in standard deviations.
        dtype: dtype of the returned kernel.

    Returns:
        (2 * radius + 1,) kernel that sums to 1.
    """
    radius = int(truncate * sigma + 0.5)
    # built in float64 like scipy, then cast, so float32 results agree with scipy to rounding
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def symmetric_pad_indices(length: int, pad: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices that pad an axis of ``length`` by ``pad`` on both sides with scipy's ``'reflect'`` rule.

    scipy's ``'reflect'`` repeats the edge sample (``d c b a | a b c d | d c b a``); torch's own
    ``'reflect'`` padding does not (``d c b | a b c d | c b a``), hence this index table. Pads wider
    than the axis keep reflecting (period ``2 * length``), as scipy does.

    Args:
        length: size of the axis, >= 1.
        pad: number of samples to add on each side, >= 0.
        device: device of the returned indices.

    Returns:
        (length + 2 * pad,) int64 indices into the axis.
    """
    positions = torch.arange(-pad, length + pad, device=device) % (2 * length)
    return torch.where(positions >= length, 2 * length - 1 - positions, positions)


def _as_sigmas(sigma: float | Sequence[float], spatial_dims: int) -> tuple[float, ...]:
    sigmas = tuple(float(s) for s in sigma) if isinstance(sigma, Sequence) else (float(sigma),) * spatial_dims
    if len(sigmas) != spatial_dims:
        raise ValueError(f"sigma must be a number or have {spatial_dims} entries, got {len(sigmas)}.")
    if any(not (math.isfinite(s) and s >= 0.0) for s in sigmas):
        raise ValueError(f"sigma must be finite and non-negative, got {sigmas}.")
    return sigmas


def gaussian_smooth(m: torch.Tensor, sigma: float | Sequence[float], truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter over the spatial axes only, with scipy's ``'reflect'`` border.

    Equal to ``scipy.ndimage.gaussian_filter(m, sigma=(0, 0, *sigmas), truncate=truncate,
    mode="reflect")``: batch and channel axes are never mixed (the THOR reference filters its
    N x 1 x H x W array on all axes; we filter spatially on purpose).

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        sigma: standard deviation in pixels, one number or one per spatial axis; 0 leaves an axis as is.
        truncate: kernel half-width in standard deviations (scipy's default 4.0).

    Returns:
        Smoothed maps, same shape, dtype and device as ``m``.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values, negative ``sigma`` or ``truncate``.
    """
    check_image_tensor(m, "m")
    if not truncate >= 0.0:
        raise ValueError(f"truncate must be non-negative, got {truncate}.")
    sigmas = _as_sigmas(sigma, m.ndim - 2)
    out = m
    for axis, s in enumerate(sigmas):
        if s == 0.0:
            continue
        weights = gaussian_kernel1d(s, truncate, dtype=m.dtype).tolist()
        if len(weights) == 1:
            continue
        dim = axis + 2
        radius = len(weights) // 2
        padded = out.index_select(dim, symmetric_pad_indices(out.shape[dim], radius, device=m.device))
        # a weighted sum of shifted copies rather than a convolution: every output value is then the same sequence
        # of floating-point operations whatever the batch size (CPU oneDNN and cuDNN pick batch-dependent kernels),
        # so maps are bit-identical across batch sizes and chunking, and batch and channels never mix. Multiply and
        # add stay separate ops: a fused alpha-add rounds differently in vectorised and scalar tails.
        out = padded.narrow(dim, 0, out.shape[dim]) * weights[0]
        for offset, weight in enumerate(weights[1:], start=1):
            out = out + padded.narrow(dim, offset, out.shape[dim]) * weight
    return out
