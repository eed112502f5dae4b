# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared fixtures: tiny networks, an analytic "healthy" denoiser and a blob phantom."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from monai.networks.schedulers import DDPMScheduler  # noqa: E402

from monai_diffad.networks import ddpm_scheduler, diffusion_unet  # noqa: E402


class CountingModel(torch.nn.Module):
    """Wraps a network and counts forward calls (one per reverse step, whatever the batch size)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return self.net(x, timesteps=timesteps)


class HealthyOracle(torch.nn.Module):
    """The exact epsilon-predictor for a data distribution concentrated on one healthy image per batch item.

    With ε̂ = (x_t − √ᾱ_t·h) / √(1 − ᾱ_t) the network's x̂0 is exactly ``h`` (in the model range), so a
    reconstruction removes anything that differs from ``h``: an analytically "trained" model.
    """

    def __init__(self, healthy_model_range: torch.Tensor, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_buffer("healthy", healthy_model_range)
        self.alphas_cumprod = scheduler.alphas_cumprod.clone()
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        a = self.alphas_cumprod.to(x.device)[timesteps.long()].view(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * self.healthy[: x.shape[0]]) / (1 - a).sqrt()


def phantom(
    size: int = 32, batch: int = 1, blob: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth "brain" ellipse with texture in [0, 1] and, optionally, a bright square lesion.

    Returns:
        (image, lesion_mask, healthy), each ``(batch, 1, size, size)``.
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


@pytest.fixture
def scheduler() -> DDPMScheduler:
    return ddpm_scheduler()


@pytest.fixture
def tiny_unet() -> CountingModel:
    torch.manual_seed(0)
    net = diffusion_unet(channels=(8, 8), attention_levels=(False, False), num_head_channels=8, norm_num_groups=4)
    return CountingModel(net.eval())


def oracle_for(healthy01: torch.Tensor, scheduler: DDPMScheduler) -> HealthyOracle:
    """Oracle for healthy images given in [0, 1] (mapped to the default model range [-1, 1])."""
    return HealthyOracle(healthy01 * 2 - 1, scheduler)
