# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The two layers of every inferer: the detection frame and the partial-diffusion layer with its ``reverse_step``.

The frame (validation, value ranges, per-image seeds, 2D/3D slicing in chunks, evaluator protocol, image score) runs
any restoration; the partial-diffusion layer adds noise, noise level and step stride, and its one reverse step is
what the plain loop, THOR and AutoDDPM's re-sampling are made of. DISYRE stands on the frame alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import phantom
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler, RFlowScheduler

from monai_diffad import (
    AnoDDPMInferer,
    AutoDDPMInferer,
    DDPMAnomalyInferer,
    DiffusionAnomalyInferer,
    DISYREInferer,
    PartialDiffusionInferer,
    THORInferer,
)
from monai_diffad.inferers import DetectionBatch

PARTIAL = (DDPMAnomalyInferer, AnoDDPMInferer, THORInferer, AutoDDPMInferer)
ALL = (*PARTIAL, DISYREInferer)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_layers():
    for cls in ALL:
        assert issubclass(cls, DiffusionAnomalyInferer) and issubclass(cls, DiffusionInferer)
    assert all(issubclass(cls, PartialDiffusionInferer) for cls in PARTIAL)
    assert not issubclass(DISYREInferer, PartialDiffusionInferer)
    disyre = DISYREInferer()
    # no placeholders: DISYRE has no noise and says so by not having the attributes
    for name in ("noise_level", "noise_type", "step_stride", "simplex_normalize", "reverse_step"):
        assert not hasattr(disyre, name), name


@pytest.mark.parametrize("option", ["step_stride", "noise_type", "simplex_normalize", "noise_level"])
def test_disyre_refuses_the_diffusion_options(option):
    value = {"step_stride": 1, "noise_type": "gaussian", "simplex_normalize": False, "noise_level": 50}[option]
    with pytest.raises(TypeError, match=option):
        DISYREInferer(**{option: value})  # even the harmless default value: it would mean nothing


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda: DDPMScheduler(num_train_timesteps=10),
        lambda: DDIMScheduler(num_train_timesteps=1000),
        lambda: RFlowScheduler(num_train_timesteps=1000),
        lambda: PNDMScheduler(num_train_timesteps=1000),
    ],
    ids=["ddpm_T10", "ddim", "rflow", "pndm"],
)
@pytest.mark.parametrize("cls", ALL, ids=[c.__name__ for c in ALL])
def test_every_inferer_constructs_with_any_scheduler(cls, make_scheduler):
    scheduler = make_scheduler()
    inferer = cls(scheduler)
    assert inferer.scheduler is scheduler
    with pytest.raises((TypeError, ValueError)):  # T = 10 < L (or step_size), or not a DDPMScheduler
        inferer.validate_settings()


SMALL: dict[type, dict[str, Any]] = {
    DDPMAnomalyInferer: {"noise_level": 12},
    AnoDDPMInferer: {"noise_level": 12},
    THORInferer: {"noise_level": 12, "harmonization_steps": (8, 4), "record_interval": 4},
    AutoDDPMInferer: {"noise_level": 12, "resample_level": 5, "resample_passes": 2},
}


@pytest.mark.parametrize("stride", [1, 5])
@pytest.mark.parametrize("cls", PARTIAL, ids=[c.__name__ for c in PARTIAL])
def test_num_network_calls_is_what_detection_calls(scheduler, tiny_unet, cls, stride):
    inferer = cls(scheduler, perceptual="ssim", step_stride=stride, max_batch_size=2, **SMALL[cls])
    inferer.detect(phantom(32, batch=2)[0], tiny_unet, generator=_gen())
    assert tiny_unet.calls == inferer.num_network_calls
    # a volume of 3 slices in chunks of 2: two batches
    tiny_unet.calls = 0
    inferer.detect(phantom(32, batch=3)[0].permute(1, 2, 3, 0)[None], tiny_unet, generator=_gen())
    assert tiny_unet.calls == 2 * inferer.num_network_calls


def test_num_network_calls_disyre(tiny_unet):
    for inferer, expected in ((DISYREInferer(), 4), (DISYREInferer(step_size=10), 10),
                              (DISYREInferer(timesteps=(60, 30)), 2)):  # fmt: skip
        tiny_unet.calls = 0
        inferer.detect(phantom(32)[0], tiny_unet)
        assert tiny_unet.calls == inferer.num_network_calls == expected


class _Spy:
    """Wraps an inferer's ``reverse_step`` and records the (t, t') of every call."""

    def __init__(self, inferer: PartialDiffusionInferer) -> None:
        self.steps: list[tuple[int, int]] = []
        original = inferer.reverse_step

        def spy(model: torch.nn.Module, x_t: torch.Tensor, t: int, prev_t: int, noise: Any) -> Any:
            self.steps.append((t, prev_t))
            return original(model, x_t, t, prev_t, noise)

        inferer.reverse_step = spy  # type: ignore[method-assign]


@pytest.mark.parametrize("cls", PARTIAL, ids=[c.__name__ for c in PARTIAL])
def test_every_network_call_is_a_reverse_step(scheduler, tiny_unet, cls):
    """The plain loop, THOR's harmonized loop and AutoDDPM's re-sampling all step through reverse_step."""
    inferer = cls(scheduler, perceptual="ssim", step_stride=3, **SMALL[cls])
    spy = _Spy(inferer)
    inferer.detect(phantom(32)[0], tiny_unet, generator=_gen())
    assert len(spy.steps) == tiny_unet.calls == inferer.num_network_calls
    reconstruction = list(zip(inferer.reverse_schedule(12), [*inferer.reverse_schedule(12)[1:], -1]))
    assert spy.steps[: len(reconstruction)] == reconstruction
    if cls is AutoDDPMInferer:  # re-sampling from R = 5 over [5, 2, 0], K = 2 passes per step, no call at t = 0
        assert spy.steps[len(reconstruction) :] == [(5, 2), (5, 2), (2, 0), (2, 0)]


def test_partial_reverse_is_a_loop_of_reverse_steps(scheduler, tiny_unet):
    inferer = DDPMAnomalyInferer(scheduler, noise_level=9, step_stride=4)
    x = inferer.to_model(phantom(32, batch=2)[0])
    batch = DetectionBatch(x, (3, 4), progress=False, return_intermediates=False)
    restored = inferer.partial_reverse(x, tiny_unet, inferer.noise_streams(batch), 9)
    noise = inferer.noise_streams(batch)
    x_t = inferer.noise_to_level(x, noise(tuple(x.shape[1:]), t=9), 9)
    with torch.no_grad():
        for t, prev_t in [(9, 5), (5, 1), (1, 0), (0, -1)]:
            _, x_t = inferer.reverse_step(tiny_unet, x_t, t, prev_t, noise)
    assert torch.equal(restored, x_t) and float((restored - x).abs().mean()) > 1e-3


def test_reverse_step_is_the_schedulers_step(scheduler, tiny_unet):
    """For consecutive levels and the same noise, one reverse_step is one network call and DDPMScheduler.step."""
    inferer = DDPMAnomalyInferer(scheduler)
    x_t = torch.randn(2, 1, 32, 32, generator=_gen(1))
    with torch.no_grad():
        x0_hat, x_prev = inferer.reverse_step(
            tiny_unet, x_t, 40, 39, lambda shape, t: torch.randn((2, *shape), generator=_gen(3))
        )
        expected_prev, expected_x0 = scheduler.step(tiny_unet(x_t, timesteps=torch.full((2,), 40)), 40, x_t, _gen(3))
    assert torch.equal(x0_hat, expected_x0) and torch.equal(x_prev, expected_prev)
    assert tiny_unet.calls == 2


class _Blur(DiffusionAnomalyInferer):
    """A toy method on the frame alone: the restoration is a 3x3 mean filter (no network call)."""

    @property
    def num_network_calls(self) -> int:
        return 0

    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        healthy = torch.nn.functional.avg_pool2d(batch.images, 3, stride=1, padding=1, count_include_pad=False)
        amap = (batch.images - healthy).abs().mean(dim=1, keepdim=True)
        seeds = torch.tensor(batch.seeds, dtype=torch.long)
        return {"anomaly_map": amap, "pseudo_healthy": healthy, "intermediates": {"seeds": seeds}}


def test_the_frame_runs_a_method_without_diffusion(tiny_unet):
    """Validation, chunked 3D slicing, per-image seeds, masks, the score and the evaluator protocol come from the
    frame, for any restoration."""
    inferer = _Blur(DDPMScheduler(num_train_timesteps=10), value_range=(0, 255), max_batch_size=2,
                    evaluator_outputs=("anomaly_map", "pseudo_healthy"))  # fmt: skip
    images = phantom(32, batch=3)[0] * 255
    out = inferer.detect(images, tiny_unet, generator=_gen(4), return_intermediates=True)
    assert out.anomaly_map.shape == (3, 1, 32, 32) and 0 <= out.anomaly_map.min() and out.anomaly_map.max() <= 1
    assert out.pseudo_healthy.max() > 1  # back in value_range
    assert out.intermediates["seeds"].flatten().tolist() == inferer.draw_image_seeds(3, _gen(4))
    volume = images.permute(1, 2, 3, 0)[None]  # (1, 1, 32, 32, 3): slice k is image k
    out3d = inferer.detect(volume, tiny_unet, mask=(volume > 0).float())
    torch.testing.assert_close(out3d.anomaly_map[0, ..., 2], out.anomaly_map[2] * (images[2] > 0))
    stacked = inferer(images, tiny_unet)
    assert stacked.shape == (3, 2, 32, 32) and torch.equal(stacked[:, :1], out.anomaly_map)
    assert tiny_unet.calls == 0
    with pytest.raises(TypeError, match="abstract"):
        DiffusionAnomalyInferer(DDPMScheduler())  # type: ignore[abstract]
    with pytest.raises(TypeError, match="abstract"):
        PartialDiffusionInferer(DDPMScheduler())  # type: ignore[abstract]

