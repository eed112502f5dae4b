# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR fidelity: call counts, harmonization with the initial noise, reduction to the DDPM baseline."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_batch_close, oracle_for, phantom

from monai_diffad import DDPMAnomalyInferer, THORInferer
from monai_diffad.inferers import harmonization_mask, harmonize


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small(scheduler, **kwargs):
    opts = {"noise_level": 20, "harmonization_steps": (15, 10, 5), "record_interval": 5, "perceptual": "ssim"}
    opts.update(kwargs)
    return THORInferer(scheduler, **opts)


def test_variant_defaults(scheduler):
    g = THORInferer(scheduler)
    assert (g.noise_type, g.noise_level, g.harmonization_steps) == ("gaussian", 350, (300, 150, 50))
    assert len(g.recorded_steps()) == 8
    s = THORInferer(scheduler, noise_type="simplex")
    assert (s.noise_level, s.harmonization_steps) == (250, (200, 150, 100, 50))
    assert len(s.recorded_steps()) == 6
    custom = THORInferer(scheduler, noise_type="simplex", noise_level=120, harmonization_steps=[100, 20])
    assert (custom.noise_level, custom.harmonization_steps) == (120, (100, 20))


@pytest.mark.parametrize("kwargs, match", [
    ({"harmonization_steps": (400,)}, "harmonization step"),
    ({"closing_size": 12}, "odd"),
    ({"final_maps": "all"}, "all"),
    ({"noise_type": "uniform"}, "uniform"),
    ({"record_interval": 0}, "record_interval"),
])
def test_bad_options(scheduler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        THORInferer(scheduler, **kwargs)


def test_network_calls_are_L_plus_1(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    out = _small(scheduler).detect(x, tiny_unet, generator=_gen(), return_intermediates=True)
    assert tiny_unet.calls == 21
    assert out.intermediates["timesteps"].tolist() == [20, 15, 10, 5, 0]
    assert out.intermediates["maps"].shape == (2, 5, 1, 32, 32)
    assert out.intermediates["x0"].shape == (2, 5, 1, 32, 32)
    assert out.anomaly_map.max() <= 0.999


def test_without_harmonization_equals_ddpm_bit_for_bit(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    thor = _small(scheduler, harmonization_steps=()).detect(x, tiny_unet, generator=_gen(5))
    ddpm = DDPMAnomalyInferer(scheduler, noise_level=20).detect(x, tiny_unet, generator=_gen(5))
    assert torch.equal(thor.pseudo_healthy, ddpm.pseudo_healthy)


def _record_add_noise(inferer):
    calls = []
    original = inferer.scheduler.add_noise

    def spy(original_samples, noise, timesteps):
        calls.append((original_samples.clone(), noise.clone(), timesteps.clone()))
        return original(original_samples, noise, timesteps)

    inferer.scheduler.add_noise = spy
    return calls


@pytest.mark.parametrize("weight, expect", [(1.0, "x0"), (0.0, "input")])
def test_harmonization_renoises_blend_with_initial_noise(scheduler, weight, expect):
    x, _, healthy = phantom(32, batch=2)
    model = oracle_for(healthy, scheduler)
    inferer = _small(scheduler)
    inferer.blend_weight = lambda m: torch.full_like(m, weight)
    calls = _record_add_noise(inferer)
    inferer.detect(x, model, generator=_gen())
    eps0 = calls[0][1]
    assert [int(c[2][0]) for c in calls] == [20, 15, 10, 5]  # initial noising, then re-noise to level t
    target = healthy if expect == "x0" else x
    for samples, noise, _ in calls[1:]:
        assert torch.equal(noise, eps0)
        assert torch.allclose(samples, target * 2 - 1, atol=1e-5)


def test_renoise_level_option(scheduler):
    x, _, healthy = phantom(32)
    inferer = _small(scheduler, renoise_level="t-1")
    calls = _record_add_noise(inferer)
    inferer.detect(x, oracle_for(healthy, scheduler), generator=_gen())
    assert [int(c[2][0]) for c in calls] == [20, 14, 9, 4]


def test_final_map_highlights_inserted_anomaly(scheduler):
    x, mask, healthy = phantom(48, batch=2)
    model = oracle_for(healthy, scheduler)
    out = _small(scheduler, noise_level=60, harmonization_steps=(50, 30, 10), record_interval=10).detect(
        x, model, generator=_gen()
    )
    for b in range(2):
        m, lesion = out.anomaly_map[b], mask[b]
        assert m[lesion > 0].mean() > 5 * m[lesion == 0].mean()
    assert torch.allclose(out.pseudo_healthy, healthy, atol=0.05)


def test_per_image_normalisation_in_batches(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    x[1] = x[1] * 0.5
    inferer = _small(scheduler)
    both = inferer.detect(x, tiny_unet, generator=_gen(1), return_intermediates=True)
    maps = both.intermediates["maps"]
    assert torch.allclose(maps.flatten(2).amax(-1), torch.ones(2, 5), atol=1e-6)  # each image's map has max 1
    inferer.max_batch_size = 1
    single = inferer.detect(x, tiny_unet, generator=_gen(1))
    assert_batch_close(both, single, fields=("anomaly_map",))


def test_volume_and_simplex_variant(scheduler, tiny_unet):
    x2d, _, _ = phantom(32, batch=3)
    vol = x2d.permute(1, 2, 3, 0).unsqueeze(0)
    inferer = _small(scheduler, noise_type="simplex", noise_level=10, harmonization_steps=(5,))
    out = inferer.detect(vol, tiny_unet, generator=_gen())
    assert out.anomaly_map.shape == (1, 1, 32, 32, 3)
    assert tiny_unet.calls == 11


def test_paper_final_maps_option(scheduler, tiny_unet):
    x, _, _ = phantom(32)
    a = _small(scheduler, final_maps="harmonization").detect(x, tiny_unet, generator=_gen())
    b = _small(scheduler).detect(x, tiny_unet, generator=_gen())
    assert a.anomaly_map.shape == b.anomaly_map.shape and not torch.equal(a.anomaly_map, b.anomaly_map)


def test_harmonization_mask_and_blend():
    m = torch.zeros(1, 1, 32, 32)
    m[..., 16, 16] = 1.0
    w = harmonization_mask(m, 13, 13)
    # closing of a single peak is the peak itself; dilation grows it to 13x13 at 0.5, the centre stays 1
    assert w[..., 16, 16] == 1.0 and w[..., 10, 10] == 0.5 and w[..., 9, 9] == 0.0
    x0, x = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    assert torch.equal(harmonize(x0, x, torch.full_like(x, 0.25)), torch.full_like(x, 0.25))


def test_strided_schedule_maps_harmonization_onto_its_grid(scheduler, tiny_unet):
    inferer = THORInferer(scheduler, step_stride=10, perceptual="ssim")
    assert inferer.reverse_schedule(350)[:3] == [350, 340, 330] and inferer.reverse_schedule(350)[-1] == 0
    assert inferer.active_harmonization_steps() == [300, 150, 50]
    assert len(inferer.recorded_steps()) == 8
    odd = THORInferer(scheduler, noise_level=20, harmonization_steps=(13, 6), record_interval=5, step_stride=4,
                      perceptual="ssim")
    assert odd.reverse_schedule(20) == [20, 16, 12, 8, 4, 0]
    assert odd.active_harmonization_steps() == [12, 8]  # nearest visited steps (6: tie, goes to the larger)
    x, _, _ = phantom(32)
    odd.detect(x, tiny_unet, generator=_gen())
    assert tiny_unet.calls == 6
