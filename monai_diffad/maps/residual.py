# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Pixel-wise residual between an image and its reconstruction."""

from __future__ import annotations

import torch
from monai.utils import look_up_option

from monai_diffad.maps._checks import check_image_tensor, check_same_shape

__all__ = ["residual_map", "RESIDUAL_KINDS"]

RESIDUAL_KINDS = ("l1", "l2")


def residual_map(x: torch.Tensor, y: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Residual map between two images, averaged over channels.

    Args:
        x: input images, (B, C, H, W) or (B, C, H, W, D), any value range.
        y: reconstructions, same shape, dtype family and device as ``x``.
        kind: ``"l1"`` for ``|x - y|`` or ``"l2"`` for the squared error ``(x - y)**2``.

    Returns:
        (B, 1, *spatial) tensor of non-negative residuals, the mean over the channels.

    Raises:
        TypeError: when an input is not a floating-point tensor.
        ValueError: for wrong dimensions, differing shapes, non-finite values or an unknown ``kind``.
    """
    kind = look_up_option(kind, RESIDUAL_KINDS)
    check_image_tensor(x, "x")
    check_image_tensor(y, "y")
    check_same_shape(x, y)
    diff = x - y
    error = diff.abs() if kind == "l1" else diff.square()
    return error.mean(dim=1, keepdim=True)
