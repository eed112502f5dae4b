# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Noise generators for diffusion anomaly detection: Gaussian and AnoDDPM's simplex noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import StrEnum, look_up_option

from monai_diffad.noise.gaussian import gaussian_noise
from monai_diffad.noise.simplex import simplex_noise

__all__ = ["NoiseType", "gaussian_noise", "simplex_noise", "make_noise"]


class NoiseType(StrEnum):
    """Names of the available noise generators."""

    GAUSSIAN = "gaussian"
    SIMPLEX = "simplex"


def make_noise(
    noise_type: str,
    shape: Sequence[int] | torch.Size,
    t: float | Sequence[float] | torch.Tensor = 0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    simplex_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Draw noise of a named type.

    Args:
        noise_type: ``"gaussian"`` or ``"simplex"`` (see :class:`NoiseType`).
        shape: output shape ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
        t: simplex noise's time coordinate (see :func:`simplex_noise`); ignored for Gaussian noise.
        generator: optional random generator for reproducible draws; Simplex noise also takes one generator per
            image (see :func:`simplex_noise`).
        device: output device; ``None`` means the generator's device (CPU without a generator).
        simplex_kwargs: further keyword arguments of :func:`simplex_noise` (``normalize``, ``octaves``,
            ``persistence``, ``frequency``, ``per_image``, ``dtype``); ignored for Gaussian noise so that one
            configuration can serve both types.

    Returns:
        float32 (unless ``simplex_kwargs`` sets ``dtype``) noise tensor of ``shape`` on ``device``.

    Raises:
        ValueError: for an unknown ``noise_type`` or any invalid argument of the selected generator.
    """
    kind = look_up_option(noise_type, NoiseType)
    if kind == NoiseType.SIMPLEX:
        return simplex_noise(shape, t=t, generator=generator, device=device, **dict(simplex_kwargs or {}))
    if isinstance(generator, Sequence):
        raise TypeError("Gaussian noise takes one generator; draw per-image streams one image at a time.")
    return gaussian_noise(shape, generator=generator, device=device)
