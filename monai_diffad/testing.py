# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Analytic stand-ins for checking detectors without a trained network: an exact "healthy" denoiser and a phantom.

Used by the test suite and by the figure scripts' ``--demo-oracle`` mode.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler

__all__ = ["HealthyOracle", "phantom"]


class HealthyOracle(torch.nn.Module):
    """The exact ε-predictor for data concentrated on one healthy image per batch item.

    With ε̂ = (x_t − √ᾱ_t·h) / √(1 − ᾱ_t) the network's x̂0 is exactly ``h``, so a reconstruction removes anything
    that differs from ``h``: an analytically "trained" model. ``calls`` counts forward passes.

    Args:
        healthy_model_range: ``(B, C, H, W)`` healthy images in the network's value range (e.g. ``2h − 1``).
        scheduler: the scheduler whose ᾱ table defines the noising.
    """

    # registered buffers, which nn.Module's __getattr__ types as Tensor | Module
    healthy: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __init__(self, healthy_model_range: torch.Tensor, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_buffer("healthy", healthy_model_range)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone())
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        a = self.alphas_cumprod.to(x.device)[timesteps.long()].view(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * self.healthy[: x.shape[0]]) / (1 - a).sqrt()


def phantom(
    size: int = 32, batch: int = 1, blob: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A textured ellipse "brain" in [0, 1] and, optionally, a bright square lesion.

    Returns:
        ``(image, lesion_mask, healthy)``, each ``(batch, 1, size, size)``.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float()
    texture = 0.5 + 0.15 * torch.sin(6 * xx) * torch.cos(5 * yy)
    base = (brain * texture).expand(batch, 1, size, size).clone()
    base = base + 0.02 * torch.rand(base.shape, generator=g) * brain
    mask = torch.zeros_like(base)
    if blob:
        c, r = size // 2, max(2, size // 8)
        mask[..., c - r : c + r, c - r + 2 : c + r + 2] = 1.0
    image = torch.where(mask > 0, torch.full_like(base, 0.98), base)
    return image.clamp(0, 1), mask, base.clamp(0, 1)
