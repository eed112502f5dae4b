# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Gaussian noise and the shape/device checks shared by every noise generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["gaussian_noise", "check_noise_shape", "resolve_noise_device"]


def check_noise_shape(shape: Sequence[int] | torch.Size) -> tuple[int, ...]:
    """Validate a noise shape ``(B, C, H, W)`` or ``(B, C, H, W, D)``.

    Args:
        shape: the requested shape; 4 or 5 positive integers.

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        TypeError: when ``shape`` is not a sequence of integers.
        ValueError: when it does not have 4 or 5 entries or an entry is not positive.
    """
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__}.")
    # bool is an int subclass but never a meaningful size
    if not all(isinstance(size, int) and not isinstance(size, bool) for size in shape):
        raise TypeError(f"shape must contain only ints, got {tuple(shape)}.")
    if len(shape) not in (4, 5):
        raise ValueError(f"shape must be (B, C, H, W) or (B, C, H, W, D), got {len(shape)} dims: {tuple(shape)}.")
    if any(size <= 0 for size in shape):
        raise ValueError(f"all sizes in shape must be positive, got {tuple(shape)}.")
    return tuple(int(size) for size in shape)


def resolve_noise_device(
    generator: torch.Generator | None, device: str | torch.device | None
) -> tuple[torch.device, torch.device]:
    """Choose where random numbers are drawn and where the noise is returned.

    ``torch`` samplers only accept a generator on their own device, so draws happen on the generator's device
    and are moved afterwards; a CPU generator therefore gives the same values whatever ``device`` is.

    Args:
        generator: optional random generator.
        device: requested output device; ``None`` means the generator's device (CPU without a generator).

    Returns:
        ``(draw_device, output_device)``.
    """
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    output_device = torch.device(device) if device is not None else draw_device
    return draw_device, output_device


def gaussian_noise(
    shape: Sequence[int] | torch.Size,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise, reproducible with a seeded generator.

    Args:
        shape: output shape ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
        generator: optional random generator; values are drawn on its device.
        device: output device; ``None`` means the generator's device (CPU without a generator).
        dtype: floating point output dtype.

    Returns:
        Tensor of ``shape`` with i.i.d. N(0, 1) values on ``device``.

    Raises:
        TypeError: for a malformed shape or a non-floating ``dtype``.
        ValueError: for a shape without 4 or 5 positive sizes.
    """
    shape = check_noise_shape(shape)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point dtype, got {dtype}.")
    draw_device, output_device = resolve_noise_device(generator, device)
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return noise.to(output_device)
