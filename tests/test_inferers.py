# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared base, DDPM baseline and AnoDDPM: behaviour, fidelity and error handling."""

from __future__ import annotations

import pytest
import torch
from conftest import oracle_for, phantom
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler

from monai_diffad import AnoDDPMInferer, AnomalyOutput, DDPMAnomalyInferer, THORInferer
from monai_diffad.inferers import posterior_step, predict_original


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("t", [0, 1, 5, 999])
def test_posterior_step_matches_scheduler_step(scheduler, t):
    x_t, out = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    expected_prev, expected_x0 = scheduler.step(out, t, x_t, generator=_gen(3))
    x0 = predict_original(scheduler, out, t, x_t)
    noise = torch.randn(out.shape, generator=_gen(3))
    prev = posterior_step(scheduler, x0, x_t, t, t - 1, noise if t > 0 else None)
    assert torch.equal(x0, expected_x0)
    assert torch.equal(prev, expected_prev)


def test_ddpm_shapes_ranges_and_call_count(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    inferer = DDPMAnomalyInferer(scheduler, noise_level=10)
    out = inferer.detect(x, tiny_unet, generator=_gen())
    assert isinstance(out, AnomalyOutput) and set(out) >= {"anomaly_map", "pseudo_healthy", "score"}
    assert out.anomaly_map.shape == (2, 1, 32, 32) and out.pseudo_healthy.shape == x.shape
    assert out.score.shape == (2,)
    assert 0 <= out.anomaly_map.min() and out.anomaly_map.max() <= 1
    assert 0 <= out.pseudo_healthy.min() and out.pseudo_healthy.max() <= 1
    assert tiny_unet.calls == 11  # L + 1


def test_anoddpm_defaults_and_call_count(scheduler, tiny_unet):
    inferer = AnoDDPMInferer(scheduler)
    assert inferer.noise_type == "simplex" and inferer.noise_level == 249 and inferer.residual == "l2"
    x, _, _ = phantom(32)
    AnoDDPMInferer(scheduler, noise_level=6).detect(x, tiny_unet, generator=_gen())
    assert tiny_unet.calls == 7


@pytest.mark.parametrize("cls", [DDPMAnomalyInferer, AnoDDPMInferer, THORInferer])
def test_determinism_and_batch_invariance(scheduler, tiny_unet, cls):
    x, _, _ = phantom(32, batch=3)
    kwargs = {"noise_level": 8, "perceptual": "ssim"}
    if cls is THORInferer:
        kwargs.update(harmonization_steps=(6, 3), record_interval=2)
    inferer = cls(scheduler, **kwargs)
    a = inferer.detect(x, tiny_unet, generator=_gen(7))
    b = inferer.detect(x, tiny_unet, generator=_gen(7))
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pseudo_healthy, b.pseudo_healthy)
    # same seeds per image whatever the chunking
    inferer.max_batch_size = 1
    c = inferer.detect(x, tiny_unet, generator=_gen(7))
    assert torch.allclose(a.anomaly_map, c.anomaly_map, atol=1e-6)
    d = inferer.detect(x, tiny_unet, generator=_gen(8))
    assert not torch.equal(a.pseudo_healthy, d.pseudo_healthy)


def test_training_call_is_the_parents(scheduler, tiny_unet):
    x = torch.rand(2, 1, 16, 16)
    noise, t = torch.randn_like(x), torch.tensor([3, 500])
    expected = DiffusionInferer(scheduler)(x, tiny_unet, noise, t)
    for cls in (DDPMAnomalyInferer, AnoDDPMInferer, THORInferer):
        inferer = cls(scheduler)
        assert isinstance(inferer, DiffusionInferer)
        assert torch.equal(inferer(x, tiny_unet, noise, t), expected)


def test_evaluator_call_returns_stacked_outputs(scheduler, tiny_unet):
    x, _, _ = phantom(32)
    inferer = DDPMAnomalyInferer(scheduler, noise_level=4, evaluator_outputs=("anomaly_map", "pseudo_healthy"))
    out = inferer(x, tiny_unet, generator=_gen())
    ref = inferer.detect(x, tiny_unet, generator=_gen())
    assert out.shape == (1, 2, 32, 32)
    assert torch.equal(out[:, :1], ref.anomaly_map) and torch.equal(out[:, 1:], ref.pseudo_healthy)


def test_volume_is_processed_slice_wise(scheduler, tiny_unet):
    x2d, _, _ = phantom(32, batch=4)
    vol = x2d.permute(1, 2, 3, 0).unsqueeze(0)  # (1, 1, 32, 32, 4)
    inferer = DDPMAnomalyInferer(scheduler, noise_level=5, max_batch_size=3)
    out = inferer.detect(vol, tiny_unet, generator=_gen())
    assert out.anomaly_map.shape == (1, 1, 32, 32, 4) and out.pseudo_healthy.shape == vol.shape
    assert out.score.shape == (1,)
    assert tiny_unet.calls == 6 * 2  # two chunks of slices (3 + 1), L + 1 calls each
    inferer.max_batch_size = 4
    assert torch.allclose(inferer.detect(vol, tiny_unet, generator=_gen()).anomaly_map, out.anomaly_map, atol=1e-6)


def test_reconstruction_highlights_inserted_blob(scheduler):
    x, mask, healthy = phantom(32)
    model = oracle_for(healthy, scheduler)
    out = DDPMAnomalyInferer(scheduler, noise_level=100).detect(x, model, generator=_gen())
    inside, outside = out.anomaly_map[mask > 0].mean(), out.anomaly_map[mask == 0].mean()
    assert inside > 10 * outside
    assert torch.allclose(out.pseudo_healthy, healthy, atol=1e-3)


def test_mask_zeroes_map_and_restricts_score(scheduler):
    x, lesion, healthy = phantom(32)
    model = oracle_for(healthy, scheduler)
    inferer = DDPMAnomalyInferer(scheduler, noise_level=20)
    out = inferer.detect(x, model, mask=1 - lesion, generator=_gen())
    assert out.anomaly_map[lesion > 0].abs().max() == 0
    with pytest.raises(ValueError, match="mask must have shape"):
        inferer.detect(x, model, mask=torch.ones(1, 1, 8, 8))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 32, 32), "dimensions"),
        (torch.full((1, 1, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 1, 8, 8), "constant"),
        (torch.rand(1, 1, 8, 8) * 300, "outside value_range"),
        (torch.empty(0, 1, 8, 8), "empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(scheduler, tiny_unet, bad, match):
    with pytest.raises(ValueError, match=match):
        DDPMAnomalyInferer(scheduler, noise_level=2).detect(bad, tiny_unet)


def test_out_of_range_clip_policy(scheduler, tiny_unet):
    x = torch.rand(1, 1, 16, 16) * 1.5
    out = DDPMAnomalyInferer(scheduler, noise_level=2, out_of_range="clip").detect(x, tiny_unet)
    assert out.anomaly_map.shape == (1, 1, 16, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_level": 0}, "noise_level"),
        ({"noise_level": 1000}, "noise_level"),
        ({"noise_level": 2.5}, "integer"),
        ({"noise_type": "perlin"}, "perlin"),
        ({"value_range": (1, 0)}, "value_range"),
        ({"residual": "l3"}, "l3"),
    ],
)
def test_bad_options_raise(scheduler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMAnomalyInferer(scheduler, **kwargs)


def test_scheduler_type_and_length_checked():
    with pytest.raises(TypeError, match="DDPMScheduler"):
        DDPMAnomalyInferer(DDIMScheduler(num_train_timesteps=1000))
    from monai_diffad.networks import ddpm_scheduler

    with pytest.raises(ValueError, match="T=100"):
        DDPMAnomalyInferer(ddpm_scheduler(num_train_timesteps=100), noise_level=350)


def test_step_stride_reduces_calls_and_keeps_quality_on_oracle(scheduler):
    x, mask, healthy = phantom(32)
    model = oracle_for(healthy, scheduler)
    out = DDPMAnomalyInferer(scheduler, noise_level=100, step_stride=10).detect(x, model, generator=_gen())
    assert model.calls == 11
    assert out.anomaly_map[mask > 0].mean() > 10 * out.anomaly_map[mask == 0].mean()
    with pytest.raises(ValueError, match="step_stride"):
        DDPMAnomalyInferer(scheduler, step_stride=0)


@pytest.mark.parametrize("cls", [DDPMAnomalyInferer, THORInferer])
def test_bf16_and_channels_last_paths_match_fp32(scheduler, tiny_unet, cls):
    x, _, _ = phantom(32, batch=2)
    kwargs = {"noise_level": 6, "perceptual": "ssim"}
    if cls is THORInferer:
        kwargs.update(harmonization_steps=(4, 2), record_interval=2)
    ref = cls(scheduler, **kwargs).detect(x, tiny_unet, generator=_gen())
    cl = cls(scheduler, channels_last=True, **kwargs).detect(
        x, tiny_unet.to(memory_format=torch.channels_last), generator=_gen()
    )
    assert torch.allclose(cl.pseudo_healthy, ref.pseudo_healthy, atol=1e-5)
    bf16 = cls(scheduler, precision="bf16", **kwargs).detect(x, tiny_unet, generator=_gen())
    assert bf16.anomaly_map.dtype == torch.float32
    assert (bf16.pseudo_healthy - ref.pseudo_healthy).abs().mean() < 0.02
    with pytest.raises(ValueError, match="fp8"):
        cls(scheduler, precision="fp8", **kwargs)


def test_compile_mode_matches_eager_and_compiles_once(scheduler, tiny_unet, monkeypatch):
    # the "eager" backend checks the plumbing (cache, output copy) without paying inductor's C++ build
    built, real_compile = [], torch.compile

    def fake_compile(model, mode=None):
        built.append(mode)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", fake_compile)
    x, _, _ = phantom(32, batch=2)
    kwargs = {"noise_level": 6}
    ref = DDPMAnomalyInferer(scheduler, **kwargs).detect(x, tiny_unet, generator=_gen())
    inferer = DDPMAnomalyInferer(scheduler, compile_mode="reduce-overhead", **kwargs)
    out = inferer.detect(x, tiny_unet, generator=_gen())
    inferer.detect(x, tiny_unet, generator=_gen())
    assert built == ["reduce-overhead"]
    assert torch.allclose(out.pseudo_healthy, ref.pseudo_healthy, atol=1e-6)
    with pytest.raises(ValueError, match="fastest"):
        DDPMAnomalyInferer(scheduler, compile_mode="fastest")


@pytest.mark.slow
def test_inductor_compiled_network_matches_eager(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    kwargs = {"noise_level": 3}
    ref = DDPMAnomalyInferer(scheduler, **kwargs).detect(x, tiny_unet, generator=_gen())
    out = DDPMAnomalyInferer(scheduler, compile_mode="default", **kwargs).detect(x, tiny_unet, generator=_gen())
    assert torch.allclose(out.pseudo_healthy, ref.pseudo_healthy, atol=1e-4)
