# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared fixtures: tiny networks that compute something; the analytic denoiser and phantom come from
:mod:`monai_diffad.testing`."""

from __future__ import annotations

import math
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from monai.networks.schedulers import DDPMScheduler  # noqa: E402

from monai_diffad.networks import ddpm_scheduler, diffusion_unet  # noqa: E402
from monai_diffad.testing import HealthyOracle, phantom  # noqa: E402,F401  (re-exported for the tests)

#: the tiny architectures the tests use (every one of them is checked by tests/test_network_guard.py)
TINY_UNET = {"channels": (8, 8), "attention_levels": (False, False), "num_head_channels": 8, "norm_num_groups": 4}
# 8 groups of 4 channels: with one channel per group, GroupNorm removes the timestep embedding (a per-channel shift)
TINY_ATTENTION_UNET = {
    "channels": (32, 32), "attention_levels": (False, True), "num_head_channels": 32, "norm_num_groups": 8,
}

#: largest difference allowed between results of different batch sizes or chunkings on CPU. Batched convolutions
#: and matrix products (oneDNN/MKL) round differently with the batch size, so results agree to float rounding,
#: not bit for bit. Measured with the shipped weights on the demo slices, batch 4 against 1: 3.2e-6 (THOR, L=100,
#: tests/test_shipped_weights.py), 7.0e-6 (AutoDDPM, step_stride 10); with the tiny test networks about 2e-6.
BATCH_ATOL = 1e-5


def nonzero_init_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every all-zero parameter with small seeded normal values, in place; returns ``net``.

    MONAI's ``DiffusionModelUNet`` zero-initialises its output convolution (and each residual block's second
    convolution and the norm biases), so an untrained one predicts exactly 0 for every input and any two network
    paths agree trivially. Weights get std 1/sqrt(fan_in) (the scale of PyTorch's default init), vectors std 0.1.
    A private generator keeps the global RNG untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.numel() and not bool(p.any()):
                std = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return net


def tiny_diffusion_unet(seed: int = 0, **architecture) -> torch.nn.Module:
    """A seeded :func:`~monai_diffad.networks.diffusion_unet` (``TINY_UNET`` unless told) with non-zero weights, in
    eval mode."""
    torch.manual_seed(seed)
    return nonzero_init_(diffusion_unet(**(architecture or TINY_UNET)), seed).eval()


def assert_batch_close(a, b, fields=("anomaly_map", "pseudo_healthy", "score"), atol: float = BATCH_ATOL) -> None:
    """Two detection results of the same images and seeds, computed in other batches: equal to ``atol``."""
    for field in fields:
        assert a[field].shape == b[field].shape, field
        diff = float((a[field] - b[field]).abs().max())
        assert diff <= atol, f"{field} differs by {diff:.3g} (> {atol:g})"


def assert_nontrivial(out, inputs: torch.Tensor) -> None:
    """Guards a comparison against comparing nothing: the network changed the image and the map varies."""
    assert float((out["pseudo_healthy"] - inputs).abs().mean()) > 1e-3, "restoration equals the input"
    assert float(out["anomaly_map"].std()) > 1e-4, "anomaly map is constant"


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
    return CountingModel(tiny_diffusion_unet())


def oracle_for(healthy01: torch.Tensor, scheduler: DDPMScheduler) -> HealthyOracle:
    """Oracle for healthy images given in [0, 1] (mapped to the default model range [-1, 1])."""
    return HealthyOracle(healthy01 * 2 - 1, scheduler)
