# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Seeded runs on CPU: the same bits across repeated runs; across batch sizes, chunking and 2D/3D layouts the same
results to float rounding (``BATCH_ATOL``), for every inferer, with a network that computes something.

Why not bit for bit across batch sizes: oneDNN/MKL pick batch-size-dependent blockings for convolutions and matrix
products, so a network's output for one image changes in the last bits with its batch size (the noise itself is
drawn per image and does not). Noise levels here are high enough (40, strided) that a 0.1 % change of the network
output per extra batch item moves the results by far more than ``BATCH_ATOL``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from conftest import BATCH_ATOL, assert_batch_close, assert_nontrivial, phantom, tiny_diffusion_unet

from monai_diffad.inferers import AnoDDPMInferer, AutoDDPMInferer, DDPMAnomalyInferer, THORInferer
from monai_diffad.inferers.disyre import DISYREInferer
from monai_diffad.networks import ddpm_scheduler

SCHEDULER = ddpm_scheduler()
FAST = {"noise_level": 40, "step_stride": 10, "perceptual": "ssim"}
METHODS = {
    "ddpm": lambda **k: DDPMAnomalyInferer(SCHEDULER, **FAST, **k),
    "ddpm_perceptual": lambda **k: DDPMAnomalyInferer(SCHEDULER, perceptual_weighting=True, **FAST, **k),
    "anoddpm": lambda **k: AnoDDPMInferer(SCHEDULER, **FAST, **k),
    "thor": lambda **k: THORInferer(SCHEDULER, harmonization_steps=(30, 10), record_interval=10, **FAST, **k),
    "thor_simplex": lambda **k: THORInferer(
        SCHEDULER, noise_type="simplex", harmonization_steps=(20,), record_interval=10, **FAST, **k
    ),
    "autoddpm": lambda **k: AutoDDPMInferer(SCHEDULER, resample_level=20, resample_passes=2, **FAST, **k),
    "disyre": lambda **k: DISYREInferer(step_size=50, **k),
}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return tiny_diffusion_unet()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return phantom(16, batch=3)[0]


def _run(method: str, inputs: torch.Tensor, net: torch.nn.Module, seed: int = 5, **kwargs):
    return METHODS[method](**kwargs).detect(inputs, net, generator=torch.Generator().manual_seed(seed))


def _assert_identical(a, b) -> None:
    for field in ("anomaly_map", "pseudo_healthy", "score"):
        assert torch.equal(a[field], b[field]), f"{field} differs by {float((a[field] - b[field]).abs().max())}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_same_bits_across_runs_and_close_across_chunking(method, net, images):
    reference = _run(method, images, net, max_batch_size=8)
    assert_nontrivial(reference, images)
    _assert_identical(reference, _run(method, images, net, max_batch_size=8))
    for chunk in (1, 2):
        assert_batch_close(reference, _run(method, images, net, max_batch_size=chunk))
    # a batch's first images get the same seeds as a shorter batch: results do not depend on batch-mates
    assert_batch_close({k: v[:2] for k, v in reference.items() if k != "intermediates"}, _run(method, images[:2], net))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_volumes_close_whatever_the_slice_chunking(method, net, images):
    volume = images.permute(1, 2, 3, 0).unsqueeze(0).repeat(2, 1, 1, 1, 1)  # (2, 1, 16, 16, 3)
    reference = _run(method, volume, net, max_batch_size=6)
    assert reference.anomaly_map.shape == (2, 1, 16, 16, 3)
    _assert_identical(reference, _run(method, volume, net, max_batch_size=6))
    for chunk in (1, 4):
        assert_batch_close(reference, _run(method, volume, net, max_batch_size=chunk))
    # a volume's slices do not depend on the other volumes of the batch
    alone = _run(method, volume[:1], net, max_batch_size=6)
    assert_batch_close({k: v[:1] for k, v in reference.items() if k != "intermediates"}, alone)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"disyre"}))
def test_other_seed_other_noise(method, net, images):
    one, two = _run(method, images, net, seed=1), _run(method, images, net, seed=2)
    assert float((one.pseudo_healthy - two.pseudo_healthy).abs().max()) > 100 * BATCH_ATOL


def test_disyre_needs_no_seed(net, images):
    """DISYRE draws no noise: the generator does not matter."""
    _assert_identical(_run("disyre", images, net, seed=1), _run("disyre", images, net, seed=2))


def test_global_rng_state_is_used_and_restorable(net, images):
    inferer = METHODS["ddpm"]()
    torch.manual_seed(3)
    a = inferer.detect(images, net)
    torch.manual_seed(3)
    _assert_identical(a, inferer.detect(images, net))


def test_lpips_path_is_batch_invariant_on_cpu(net, tmp_path):
    """With LPIPS weights on disk (a random squeezenet here: plumbing, not real LPIPS) THOR stays batch-invariant."""
    images = phantom(32, batch=3)[0]  # LPIPS-squeeze needs at least 17 pixels per side
    torch.manual_seed(0)
    backbone = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), backbone)

    def thor(**kwargs):
        inferer = THORInferer(
            SCHEDULER, noise_level=40, step_stride=10, harmonization_steps=(30, 10), record_interval=10,
            lpips_backbone_path=str(backbone), **kwargs,
        )
        return inferer.detect(images, net, generator=torch.Generator().manual_seed(5)), inferer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, inferer = thor(max_batch_size=8)
        assert inferer.perceptual.description == "lpips-squeeze"
        assert_nontrivial(reference, images)
        _assert_identical(reference, thor(max_batch_size=8)[0])
        assert_batch_close(reference, thor(max_batch_size=1)[0])


def test_draw_image_seeds_skips_images_of_a_stream(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=3)
    inferer = AnoDDPMInferer(scheduler, noise_level=40, step_stride=10)
    whole = inferer.detect(x, tiny_unet, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    inferer.draw_image_seeds(2, generator)  # what a shard starting at image 2 does
    tail = inferer.detect(x[2:], tiny_unet, generator=generator)
    assert_batch_close({k: v[2:] for k, v in whole.items() if k != "intermediates"}, tail)
    unskipped = inferer.detect(x[2:], tiny_unet, generator=torch.Generator().manual_seed(7))
    assert float((unskipped.pseudo_healthy - tail.pseudo_healthy).abs().max()) > 100 * BATCH_ATOL
