# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Per-pixel structural similarity (SSIM) and the derived dissimilarity map.

The SSIM map follows Wang et al. (2004) with a Gaussian window and population covariances, i.e.
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, full=True)``. It is the offline stand-in for LPIPS when the
backbone weights are not available (see :mod:`monai_diffad.maps.perceptual`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_diffad.maps._checks import check_image_tensor, check_same_shape
from monai_diffad.maps.smoothing import gaussian_smooth

__all__ = ["ssim_map", "structural_dissimilarity_map"]


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    win_size: int = 11,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel, per-channel SSIM with a Gaussian window and 'reflect' borders.

    Args:
        x: images, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        y: images of the same shape.
        data_range: value range of the images (max - min), sets the stabilisers C1, C2.
        sigma: standard deviation of the Gaussian window in pixels.
        win_size: odd window side; the Gaussian is truncated at radius ``win_size // 2``.
        k1: SSIM constant, ``C1 = (k1 * data_range)**2``.
        k2: SSIM constant, ``C2 = (k2 * data_range)**2``.

    Returns:
        (B, C, *spatial) SSIM values in [-1, 1] (1 where the images agree locally).

    Raises:
        TypeError: when an input is not a floating-point tensor.
        ValueError: for wrong dimensions, differing shapes, non-finite values, a non-positive
            ``data_range`` or ``sigma``, or an even ``win_size``.
    """
    check_image_tensor(x, "x")
    check_image_tensor(y, "y")
    check_same_shape(x, y)
    if not data_range > 0 or not sigma > 0:
        raise ValueError(f"data_range and sigma must be positive, got {data_range} and {sigma}.")
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd int, got {win_size}.")
    # truncate chosen so that scipy's radius rule int(truncate * sigma + 0.5) gives win_size // 2
    truncate = (win_size // 2) / sigma

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return gaussian_smooth(t, sigma, truncate=truncate)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x * mean_x
    var_y = local_mean(y * y) - mean_y * mean_y
    cov_xy = local_mean(x * y) - mean_x * mean_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def structural_dissimilarity_map(
    x: torch.Tensor,
    y: torch.Tensor,
    scales: int = 1,
    data_range: float = 1.0,
    sigma: float = 1.5,
    win_size: int = 11,
) -> torch.Tensor:
    """Structural dissimilarity ``clip((1 - SSIM) / 2, 0, 1)``, mean over channels, optionally multi-scale.

    With ``scales > 1`` the map is the mean of the single-scale maps of the images average-pooled
    by 1, 2, 4, ... (each linearly upsampled back to full size), which adds sensitivity to larger
    structures at little cost. This is not the MS-SSIM index of Wang et al. (2003), which multiplies
    per-scale scalar terms.

    Args:
        x: images, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        y: images of the same shape.
        scales: number of pyramid levels, >= 1; every spatial side must be >= 2**(scales - 1).
        data_range: value range of the images (max - min).
        sigma: standard deviation of the Gaussian SSIM window in pixels.
        win_size: odd SSIM window side.

    Returns:
        (B, 1, *spatial) map in [0, 1]; 0 where the images are identical.

    Raises:
        TypeError: when an input is not a floating-point tensor.
        ValueError: for invalid shapes or values (see :func:`ssim_map`), ``scales < 1`` or images
            too small for ``scales`` levels.
    """
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be a positive int, got {scales!r}.")
    check_image_tensor(x, "x")
    spatial_shape = x.shape[2:]
    if min(spatial_shape) < 2 ** (scales - 1):
        raise ValueError(f"images of spatial shape {tuple(spatial_shape)} are too small for {scales} scales.")
    avg_pool = F.avg_pool2d if len(spatial_shape) == 2 else F.avg_pool3d
    mode = "bilinear" if len(spatial_shape) == 2 else "trilinear"
    total = torch.zeros_like(x[:, :1])
    for level in range(scales):
        if level > 0:
            x, y = avg_pool(x, 2), avg_pool(y, 2)
        level_map = ((1.0 - ssim_map(x, y, data_range, sigma, win_size)) / 2.0).clamp(0.0, 1.0).mean(1, keepdim=True)
        if level > 0:
            level_map = F.interpolate(level_map, size=spatial_shape, mode=mode, align_corners=False)
        total = total + level_map
    return total / scales
