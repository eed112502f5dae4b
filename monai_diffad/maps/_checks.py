# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Input checks shared by the anomaly-map functions."""

from __future__ import annotations

import torch

__all__ = ["check_image_tensor", "check_same_shape"]


def check_image_tensor(tensor: torch.Tensor, name: str = "input", require_finite: bool = True) -> None:
    """Check that ``tensor`` is a floating (B, C, H, W) or (B, C, H, W, D) tensor.

    Args:
        tensor: tensor to check.
        name: name used in error messages.
        require_finite: also reject NaN and +/-inf values.

    Raises:
        TypeError: when ``tensor`` is not a floating-point ``torch.Tensor``.
        ValueError: when it does not have 4 or 5 dimensions, has no elements, or holds NaN/inf values.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}.")
    if tensor.ndim not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, C, H, W) or (B, C, H, W, D), got {tuple(tensor.shape)} "
            f"({tensor.ndim} dimensions)."
        )
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(tensor.shape)}.")
    if require_finite and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values.")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    """Raise ``ValueError`` when two tensors differ in shape.

    Args:
        a: first tensor.
        b: second tensor.
        names: names of ``a`` and ``b`` used in the error message.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
