# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared base, DDPM baseline and AnoDDPM: behaviour, fidelity and error handling."""

from __future__ import annotations

import pytest
import torch
from conftest import BATCH_ATOL, assert_batch_close, assert_nontrivial, oracle_for, phantom, tiny_diffusion_unet
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
    kwargs = {"noise_level": 40, "step_stride": 5, "perceptual": "ssim"}
    if cls is THORInferer:
        kwargs.update(harmonization_steps=(30, 15), record_interval=5)
    inferer = cls(scheduler, **kwargs)
    a = inferer.detect(x, tiny_unet, generator=_gen(7))
    assert_nontrivial(a, x)
    b = inferer.detect(x, tiny_unet, generator=_gen(7))
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pseudo_healthy, b.pseudo_healthy)
    # same seeds per image whatever the chunking; batched kernels round differently with the batch size
    inferer.max_batch_size = 1
    assert_batch_close(a, inferer.detect(x, tiny_unet, generator=_gen(7)))
    d = inferer.detect(x, tiny_unet, generator=_gen(8))
    assert (a.pseudo_healthy - d.pseudo_healthy).abs().max() > 100 * BATCH_ATOL


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
    assert_batch_close(out, inferer.detect(vol, tiny_unet, generator=_gen()))


@pytest.mark.parametrize("chunk", [2, 8])
def test_volume_slices_keep_their_place(scheduler, chunk):
    """Slice k of a volume is restored as slice k, in place: the oracle restores each slice to its own healthy image
    and only the slice holding the lesion lights up (two volumes, so the batch and slice axes cannot be swapped)."""
    image, lesion, healthy = phantom(32, batch=8, seed=4)
    texture = torch.linspace(0.7, 1.3, 8).view(8, 1, 1, 1)  # every slice different
    healthy = healthy * texture
    image = torch.where(lesion > 0, image, healthy)
    lesion_slice = 5
    image[torch.arange(8) != lesion_slice] = healthy[torch.arange(8) != lesion_slice]

    def as_volumes(t):  # (8, 1, H, W) -> (2, 1, H, W, 4): slices 0-3 and 4-7
        return t.reshape(2, 4, 1, 32, 32).permute(0, 2, 3, 4, 1)

    inferer = DDPMAnomalyInferer(scheduler, noise_level=60, step_stride=20, max_batch_size=chunk)
    if chunk == 8:  # the oracle serves the images of one network call in order: all slices in one chunk
        out = inferer.detect(as_volumes(image), oracle_for(healthy, scheduler), generator=_gen())
        torch.testing.assert_close(out.pseudo_healthy, as_volumes(healthy), atol=1e-3, rtol=0)
        per_slice = out.anomaly_map.permute(0, 4, 1, 2, 3).reshape(8, -1).amax(1)
        assert per_slice.argmax() == lesion_slice and per_slice[lesion_slice] > 10 * per_slice.sort()[0][-2]
    else:  # a slice's result depends on that slice alone, whatever shares its chunk
        changed = image.clone()
        changed[2] = healthy[3]
        a = inferer.detect(as_volumes(image), tiny_diffusion_unet(), generator=_gen())
        b = inferer.detect(as_volumes(changed), tiny_diffusion_unet(), generator=_gen())
        moved = (a.anomaly_map - b.anomaly_map).abs().amax(dim=(1, 2, 3)).flatten()  # per slice
        assert moved[2] > 1e-3 and moved[torch.arange(8) != 2].max() <= BATCH_ATOL


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
        ({"noise_level": 2.5}, "integer"),
        ({"noise_type": "perlin"}, "perlin"),
        ({"value_range": (1, 0)}, "value_range"),
        ({"residual": "l3"}, "l3"),
    ],
)
def test_bad_options_raise(scheduler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMAnomalyInferer(scheduler, **kwargs)


def test_scheduler_type_and_length_checked_when_detection_runs(tiny_unet):
    """Any scheduler constructs (drop-in for the parent); detection refuses what it cannot use, before any call."""
    from monai_diffad.networks import ddpm_scheduler

    x, _, _ = phantom(32)
    ddim = DDPMAnomalyInferer(DDIMScheduler(num_train_timesteps=1000))
    with pytest.raises(TypeError, match="DDPMScheduler"):
        ddim.detect(x, tiny_unet)
    short = DDPMAnomalyInferer(ddpm_scheduler(num_train_timesteps=100), noise_level=350)
    with pytest.raises(ValueError, match=r"noise_level=350 is outside \[1, 99\] for a scheduler with T=100"):
        short(x, tiny_unet)
    assert tiny_unet.calls == 0


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
    kwargs = {"noise_level": 40, "step_stride": 10, "perceptual": "ssim"}
    if cls is THORInferer:
        kwargs.update(harmonization_steps=(30, 10), record_interval=10)
    ref = cls(scheduler, **kwargs).detect(x, tiny_unet, generator=_gen())
    assert_nontrivial(ref, x)
    cl = cls(scheduler, channels_last=True, **kwargs).detect(
        x, tiny_unet.to(memory_format=torch.channels_last), generator=_gen()
    )
    assert torch.allclose(cl.pseudo_healthy, ref.pseudo_healthy, atol=1e-5)
    bf16 = cls(scheduler, precision="bf16", **kwargs).detect(x, tiny_unet, generator=_gen())
    assert bf16.anomaly_map.dtype == torch.float32
    assert (bf16.pseudo_healthy - ref.pseudo_healthy).abs().mean() < 0.02
    with pytest.raises(ValueError, match="fp8"):
        cls(scheduler, precision="fp8", **kwargs)


@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("fp32", True), ("bf16", False), ("fp16", True)])
def test_call_network_is_the_network_under_the_chosen_precision(scheduler, tiny_unet, precision, channels_last):
    """call_network returns what the network gives under the same autocast and memory format, as float32."""
    x = torch.rand(3, 1, 32, 32, generator=_gen(1)) * 2 - 1
    t = torch.tensor([5, 200, 700])
    inferer = DDPMAnomalyInferer(scheduler, precision=precision, channels_last=channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        expected = tiny_unet(x.contiguous(memory_format=torch.channels_last) if channels_last else x, timesteps=t)
        out = inferer.call_network(tiny_unet, x, t)
    assert out.dtype == torch.float32 and expected.abs().mean() > 0.1
    assert torch.equal(out, expected.float())
    # one step for the whole batch is the same as that step per item
    with torch.no_grad():
        one_step = inferer.call_network(tiny_unet, x, 200)
        assert torch.equal(one_step, inferer.call_network(tiny_unet, x, torch.full((3,), 200)))


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
