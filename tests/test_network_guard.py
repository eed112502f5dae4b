# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The test networks compute something: an untrained MONAI UNet predicts exactly 0, which makes every comparison
of two network paths vacuous. Every tiny architecture the suite uses is checked here."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ATTENTION_UNET, TINY_UNET, tiny_diffusion_unet

from monai_diffad.networks import diffusion_unet


@pytest.mark.parametrize("architecture", [TINY_UNET, TINY_ATTENTION_UNET], ids=["tiny", "tiny_attention"])
def test_test_networks_are_not_constant(architecture):
    net = tiny_diffusion_unet(**architecture)
    assert all(bool(p.any()) for p in net.parameters()), "a parameter is still all zero"
    g = torch.Generator().manual_seed(0)
    x, other = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1, torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out = net(x, timesteps=t)
        # varies over pixels and images, with the input and with the timestep: no constant or input-blind output
        assert float(out.std()) > 0.05
        assert float((out[0] - out[1]).abs().mean()) > 0.01
        assert float((net(other, timesteps=t) - out).abs().mean()) > 0.01
        assert float((net(x, timesteps=t.flip(0)) - out).abs().mean()) > 1e-3


def test_untrained_monai_unet_is_degenerate():
    """Why the helper exists: without it the output is exactly 0 (if MONAI changes this, the helper can go)."""
    torch.manual_seed(0)
    net = diffusion_unet(**TINY_UNET).eval()
    with torch.no_grad():
        assert not net(torch.rand(1, 1, 16, 16), timesteps=torch.tensor([5])).any()


def test_tiny_networks_are_seeded():
    a, b = tiny_diffusion_unet(seed=1), tiny_diffusion_unet(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), tiny_diffusion_unet(seed=2).parameters()))
