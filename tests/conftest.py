# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared fixtures: tiny networks; the analytic denoiser and phantom come from :mod:`monai_diffad.testing`."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from monai.networks.schedulers import DDPMScheduler  # noqa: E402

from monai_diffad.networks import ddpm_scheduler, diffusion_unet  # noqa: E402
from monai_diffad.testing import HealthyOracle, phantom  # noqa: E402,F401  (re-exported for the tests)


class CountingModel(torch.nn.Module):
    """Wraps a network and counts forward calls (one per reverse step, whatever the batch size)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return self.net(x, timesteps=timesteps)


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
