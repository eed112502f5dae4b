# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Grey-level (float) morphology with flat square or disc structuring elements.

Matches ``scipy.ndimage.grey_dilation`` / ``grey_erosion`` / ``grey_closing`` with
``mode="nearest"`` and the same footprint, on the spatial axes of (B, C, H, W) or (B, C, H, W, D)
tensors. THOR harmonises with a 13 x 13 flat square closing followed by a dilation.
"""

from __future__ import annotations

import itertools
import math
from types import EllipsisType

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from monai_diffad.maps._checks import check_image_tensor

__all__ = ["STRUCTURE_SHAPES", "structuring_element", "grey_dilation", "grey_erosion", "grey_closing"]

STRUCTURE_SHAPES = ("square", "disc")


def _check_kernel_size(kernel_size: int) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}.")
    return kernel_size


def structuring_element(kernel_size: int, spatial_dims: int, shape: str = "square") -> torch.Tensor:
    """Boolean flat structuring element (footprint).

    Args:
        kernel_size: odd side length ``k``; the radius is ``r = k // 2``.
        spatial_dims: 2 or 3.
        shape: ``"square"`` (all ones, a cube in 3D) or ``"disc"`` (offsets with
            ``sum(offset**2) <= r**2``, a ball in 3D).

    Returns:
        (k, k) or (k, k, k) bool tensor, usable as scipy's ``footprint``.
    """
    kernel_size = _check_kernel_size(kernel_size)
    shape = look_up_option(shape, STRUCTURE_SHAPES)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    radius = kernel_size // 2
    if shape == "square":
        return torch.ones((kernel_size,) * spatial_dims, dtype=torch.bool)
    grids = torch.meshgrid(*[torch.arange(-radius, radius + 1)] * spatial_dims, indexing="ij")
    return torch.stack(grids).square().sum(0) <= radius**2


def _max_filter(m: torch.Tensor, kernel_size: int, shape: str) -> torch.Tensor:
    """Flat max filter with replicate ('nearest') borders; ``m`` already validated."""
    spatial_shape = m.shape[2:]
    spatial_dims = len(spatial_shape)
    radius = kernel_size // 2
    if radius == 0:
        return m
    max_pool = F.max_pool2d if spatial_dims == 2 else F.max_pool3d
    padded = F.pad(m, [radius] * (2 * spatial_dims), mode="replicate")
    if shape == "square":
        # a box max is separable: one 1D pass per axis is O(n k) instead of O(k^n) per pixel
        for axis in range(spatial_dims):
            window = [1] * spatial_dims
            window[axis] = kernel_size
            padded = max_pool(padded, tuple(window), stride=1)
        return padded
    # A disc is a union of 1D chords along the last axis: one max-pool per distinct chord width,
    # then a shifted maximum over the other axes' offsets (O(k^(n-1)) ops instead of O(k^n)).
    chord_maxima: dict[int, torch.Tensor] = {}
    result: torch.Tensor | None = None
    last_len = spatial_shape[-1]
    for offset in itertools.product(range(-radius, radius + 1), repeat=spatial_dims - 1):
        remaining = radius**2 - sum(o * o for o in offset)
        if remaining < 0:
            continue
        half_width = math.isqrt(remaining)
        if half_width not in chord_maxima:
            chord = (1,) * (spatial_dims - 1) + (2 * half_width + 1,)
            chord_maxima[half_width] = max_pool(padded, chord, stride=1)
        chords = chord_maxima[half_width]
        # output index p on the last axis holds the window centred at padded index p + half_width
        index = tuple(slice(radius + o, radius + o + n) for o, n in zip(offset, spatial_shape[:-1]))
        start = radius - half_width
        window_index: tuple[EllipsisType | slice, ...] = (..., *index, slice(start, start + last_len))
        shifted = chords[window_index]
        result = shifted if result is None else torch.maximum(result, shifted)
    assert result is not None  # the zero offset (the centre chord) is always in the disc
    return result


def grey_dilation(m: torch.Tensor, kernel_size: int, shape: str = "square") -> torch.Tensor:
    """Grey-level dilation (local maximum) with a flat structuring element and 'nearest' borders.

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        kernel_size: odd side length of the structuring element (1 returns ``m``).
        shape: ``"square"`` or ``"disc"``, see :func:`structuring_element`.

    Returns:
        Dilated maps, same shape, dtype and device as ``m``.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values, an even/non-positive ``kernel_size`` or
            an unknown ``shape``.
    """
    check_image_tensor(m, "m")
    return _max_filter(m, _check_kernel_size(kernel_size), look_up_option(shape, STRUCTURE_SHAPES))


def grey_erosion(m: torch.Tensor, kernel_size: int, shape: str = "square") -> torch.Tensor:
    """Grey-level erosion (local minimum) with a flat structuring element and 'nearest' borders.

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        kernel_size: odd side length of the structuring element (1 returns ``m``).
        shape: ``"square"`` or ``"disc"``, see :func:`structuring_element`.

    Returns:
        Eroded maps, same shape, dtype and device as ``m``.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values, an even/non-positive ``kernel_size`` or
            an unknown ``shape``.
    """
    check_image_tensor(m, "m")
    # min over a symmetric footprint is minus the max of the negated map
    return -_max_filter(-m, _check_kernel_size(kernel_size), look_up_option(shape, STRUCTURE_SHAPES))


def grey_closing(m: torch.Tensor, kernel_size: int, shape: str = "square") -> torch.Tensor:
    """Grey-level closing: dilation then erosion with the same flat structuring element.

    Fills dark gaps narrower than the structuring element while keeping larger structures.

    Args:
        m: maps, (B, C, H, W) or (B, C, H, W, D), floating point, finite.
        kernel_size: odd side length of the structuring element (1 returns ``m``).
        shape: ``"square"`` or ``"disc"``, see :func:`structuring_element`.

    Returns:
        Closed maps, same shape, dtype and device as ``m``.

    Raises:
        TypeError: when ``m`` is not a floating-point tensor.
        ValueError: for wrong dimensions, non-finite values, an even/non-positive ``kernel_size`` or
            an unknown ``shape``.
    """
    check_image_tensor(m, "m")
    kernel_size = _check_kernel_size(kernel_size)
    shape = look_up_option(shape, STRUCTURE_SHAPES)
    return -_max_filter(-_max_filter(m, kernel_size, shape), kernel_size, shape)
