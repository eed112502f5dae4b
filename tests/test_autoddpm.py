# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""AutoDDPM fidelity: call count and order, the exact known region, mask rules, jump-back, anomaly highlighting."""

from __future__ import annotations

import pytest
import torch
from conftest import oracle_for, phantom
from monai.inferers import DiffusionInferer

from monai_diffad.inferers.autoddpm import AutoDDPMInferer, binary_anomaly_mask, initial_anomaly_map, stitch


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small(scheduler, **kwargs):
    opts = {"noise_level": 10, "resample_level": 4, "resample_passes": 2, "perceptual": "ssim"}
    opts.update(kwargs)
    return AutoDDPMInferer(scheduler, **opts)


class _TimestepRecorder(torch.nn.Module):
    """Records the timestep of every call of the wrapped network."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.steps: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.steps.append(int(timesteps[0]))
        return self.net(x, timesteps=timesteps)


def test_paper_defaults(scheduler):
    inferer = AutoDDPMInferer(scheduler)
    assert (inferer.noise_level, inferer.resample_level, inferer.resample_passes) == (200, 50, 5)
    assert (inferer.mask_threshold, inferer.dilation_size, inferer.noise_type) == (0.13, 3, "gaussian")
    assert (inferer.mask_order, inferer.resample_start, inferer.jump_beta_index) == (
        "binarize_dilate", "reconstruction", "t-1"
    )
    assert (inferer.perceptual.kind, inferer.perceptual.net, inferer.perceptual.sigma) == ("lpips", "squeeze", 0.0)
    assert inferer.num_network_calls == 451


@pytest.mark.parametrize("kwargs, match", [
    ({"resample_level": 0}, "resample_level"),
    ({"resample_passes": 0}, "resample_passes"),
    ({"resample_passes": 1.5}, "resample_passes"),
    ({"dilation_size": 2}, "dilation_size"),
    ({"dilation_size": -1}, "dilation_size"),
    ({"mask_threshold": float("nan")}, "mask_threshold"),
    ({"threshold_percentile": 101}, "threshold_percentile"),
    ({"residual_percentile": -1}, "residual_percentile"),
    ({"mask_order": "erode"}, "erode"),
    ({"resample_start": "noise"}, "noise"),
    ({"jump_beta_index": "t+1"}, "t\\+1"),
    ({"perceptual": "l2"}, "l2"),
])
def test_bad_options(scheduler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoDDPMInferer(scheduler, **kwargs)


def test_call_count_and_order(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    inferer = _small(scheduler)
    model = _TimestepRecorder(tiny_unet)
    out = inferer.detect(x, model, generator=_gen(), return_intermediates=True)
    assert tiny_unet.calls == inferer.num_network_calls == 11 + 4 * 2
    reconstruction = list(range(10, -1, -1))
    resampling = [t for t in range(4, 0, -1) for _ in range(2)]  # K passes per level, no call at t = 0
    assert model.steps == reconstruction + resampling
    assert set(out.intermediates) == {"reconstruction", "mask", "binary_mask", "stitched", "inpainted"}
    for name, channels in (("reconstruction", 1), ("mask", 1), ("binary_mask", 1), ("stitched", 1), ("inpainted", 1)):
        assert out.intermediates[name].shape == (2, channels, 32, 32)
    assert out.anomaly_map.shape == (2, 1, 32, 32) and out.score.shape == (2,)


def test_known_region_is_the_input_exactly(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    # the percentile rule guarantees a mask that is neither empty nor full, whatever the random network does
    out = _small(scheduler, mask_threshold=-1.0).detect(x, tiny_unet, generator=_gen(3), return_intermediates=True)
    inter = out.intermediates
    keep = (inter["binary_mask"] == 0).expand_as(x)
    assert 0 < keep.float().mean() < 1
    assert torch.equal(inter["inpainted"][keep], x[keep])
    assert torch.equal(out.pseudo_healthy[keep], x[keep])
    assert torch.equal(out.anomaly_map[keep], torch.zeros_like(x[keep]))
    assert not torch.equal(inter["inpainted"][~keep], x[~keep])  # the model in-painted the rest
    assert torch.equal(inter["stitched"], stitch(inter["binary_mask"], inter["reconstruction"], x))
    assert set(inter["binary_mask"].unique().tolist()) <= {0.0, 1.0}
    # final map: the in-painting residual weighted by the continuous (undilated) initial map c
    assert torch.allclose(out.anomaly_map, (x - inter["inpainted"].clamp(0, 1)).abs() * inter["mask"])


def test_determinism(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=2)
    inferer = _small(scheduler)
    a = inferer.detect(x, tiny_unet, generator=_gen(7))
    b = inferer.detect(x, tiny_unet, generator=_gen(7))
    c = inferer.detect(x, tiny_unet, generator=_gen(8))
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pseudo_healthy, b.pseudo_healthy)
    assert not torch.equal(a.pseudo_healthy, c.pseudo_healthy)


def test_batch_and_chunk_invariance(scheduler, tiny_unet):
    x, _, _ = phantom(32, batch=3)
    x[1] = x[1] * 0.6
    inferer = _small(scheduler, mask_threshold=-1.0)
    together = inferer.detect(x, tiny_unet, generator=_gen(1), return_intermediates=True)
    inferer.max_batch_size = 2
    chunked = inferer.detect(x, tiny_unet, generator=_gen(1), return_intermediates=True)
    for key in ("anomaly_map", "pseudo_healthy"):
        assert torch.allclose(together[key], chunked[key], atol=1e-6)
    assert torch.equal(together.intermediates["binary_mask"], chunked.intermediates["binary_mask"])


def test_volume_slice_wise(scheduler, tiny_unet):
    x2d, _, _ = phantom(32, batch=3)
    vol = x2d.permute(1, 2, 3, 0).unsqueeze(0)
    inferer = _small(scheduler)
    out = inferer.detect(vol, tiny_unet, generator=_gen())
    assert out.anomaly_map.shape == (1, 1, 32, 32, 3) and out.pseudo_healthy.shape == vol.shape
    assert tiny_unet.calls == inferer.num_network_calls  # the 3 slices go through the network together


def test_final_map_highlights_inserted_anomaly(scheduler):
    x, lesion, healthy = phantom(48, batch=2)
    model = oracle_for(healthy, scheduler)
    out = _small(scheduler, noise_level=60, resample_level=10).detect(
        x, model, generator=_gen(), return_intermediates=True
    )
    assert torch.allclose(out.intermediates["reconstruction"], healthy, atol=1e-3)
    for b in range(2):
        m, inside = out.anomaly_map[b], lesion[b] > 0
        assert m[inside].mean() > 5 * m[~inside].mean()
        assert out.intermediates["binary_mask"][b][inside].min() == 1.0  # the whole lesion is in-painted
    assert torch.allclose(out.pseudo_healthy, healthy, atol=0.05)


@pytest.mark.parametrize("start", ["reconstruction", "input"])
def test_resampling_start_option(scheduler, start):
    x, _, healthy = phantom(32)
    inferer = _small(scheduler, resample_start=start)
    calls = []
    original = inferer.scheduler.add_noise

    def spy(original_samples, noise, timesteps):
        calls.append((original_samples.clone(), int(timesteps[0])))
        return original(original_samples, noise, timesteps)

    inferer.scheduler.add_noise = spy
    inferer.detect(x, oracle_for(healthy, scheduler), generator=_gen())
    levels = [level for _, level in calls]
    # reconstruction from 10, start of re-sampling at 4, then the known part at t - 1 for each level and pass
    assert levels == [10, 4] + [t - 1 for t in range(4, 0, -1) for _ in range(2)]
    expected_start = healthy if start == "reconstruction" else x
    assert torch.allclose(calls[1][0], expected_start * 2 - 1, atol=1e-3)
    for samples, _ in calls[2:]:
        assert torch.equal(samples, x * 2 - 1)  # the known part is always the input itself


@pytest.mark.parametrize("index", ["t-1", "t"])
def test_jump_back_coefficients(scheduler, index):
    inferer = _small(scheduler, jump_beta_index=index)
    t = 7
    beta = scheduler.betas[t - 1 if index == "t-1" else t]
    one, zero = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert torch.allclose(inferer.jump_back(one, t, zero), (1 - beta).sqrt() * one)
    assert torch.allclose(inferer.jump_back(zero, t, one), beta.sqrt() * one)
    if index == "t":
        # the exact forward step carries the level t - 1 marginal to level t: √ᾱ_{t-1}·√(1-β_t) = √ᾱ_t
        signal = inferer.jump_back(scheduler.alphas_cumprod[t - 1].sqrt() * one, t, zero)
        assert torch.allclose(signal, scheduler.alphas_cumprod[t].sqrt() * one)


def test_jump_index_and_single_pass_change_the_result(scheduler, tiny_unet):
    x, _, _ = phantom(32)
    ref = _small(scheduler).detect(x, tiny_unet, generator=_gen()).pseudo_healthy
    exact = _small(scheduler, jump_beta_index="t").detect(x, tiny_unet, generator=_gen()).pseudo_healthy
    tiny_unet.calls = 0
    single = _small(scheduler, resample_passes=1).detect(x, tiny_unet, generator=_gen()).pseudo_healthy
    assert tiny_unet.calls == 11 + 4
    assert not torch.equal(ref, exact) and not torch.equal(ref, single)


def test_initial_anomaly_map_normalises_residual_by_its_percentile():
    residual = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    perceptual = torch.full_like(residual, 0.5)
    c = initial_anomaly_map(residual, perceptual, percentile=95.0)
    assert torch.allclose(c[..., 50], torch.tensor(0.5 * 0.5 / 0.95))
    assert torch.equal(c[..., 95:], torch.full_like(c[..., 95:], 0.5))  # clipped at 1 before the product


def test_binary_mask_rules():
    c = torch.zeros(2, 1, 16, 16)
    c[0, 0, 5, 5], c[1, 0, 10, 3] = 0.5, 0.1
    fixed = binary_anomaly_mask(c, threshold=0.13)
    assert fixed[0].sum() == 9 and fixed[0, 0, 4:7, 4:7].min() == 1  # 3x3 dilation of the single pixel
    assert fixed[1].sum() == 0  # 0.1 is below the fixed threshold
    # a flat max filter commutes with thresholding: the paper's order gives the same mask for a fixed threshold
    assert torch.equal(fixed, binary_anomaly_mask(c, threshold=0.13, order="dilate_binarize"))
    assert torch.equal(binary_anomaly_mask(c, 0.13, dilation_size=1)[0], (c[0] > 0.13).float())
    # the percentile rule is per image: the weak peak of image 1 is found too
    per_image = binary_anomaly_mask(c, threshold=-1.0, percentile=99.0)
    assert per_image[0].sum() == 9 and per_image[1].sum() == 9
    # with the percentile rule the paper's order thresholds the dilated map, a different mask
    g = torch.rand(1, 1, 16, 16, generator=_gen())
    assert not torch.equal(
        binary_anomaly_mask(g, -1.0, 95.0), binary_anomaly_mask(g, -1.0, 95.0, order="dilate_binarize")
    )


def test_training_call_equals_parent(scheduler, tiny_unet):
    x = torch.rand(2, 1, 32, 32, generator=_gen())
    noise = torch.randn(2, 1, 32, 32, generator=_gen(1))
    timesteps = torch.tensor([3, 900])
    ours = _small(scheduler)(x, tiny_unet, noise, timesteps)
    parent = DiffusionInferer(scheduler)(x, tiny_unet, noise, timesteps)
    assert torch.equal(ours, parent)


def test_stride_one_is_the_full_schedule(scheduler, tiny_unet):
    x, _, _ = phantom(32)
    default = _small(scheduler).detect(x, tiny_unet, generator=_gen(), return_intermediates=True)
    tiny_unet.calls = 0
    model = _TimestepRecorder(tiny_unet)
    explicit = _small(scheduler, step_stride=1).detect(x, model, generator=_gen(), return_intermediates=True)
    assert tiny_unet.calls == 11 + 4 * 2 and AutoDDPMInferer(scheduler, step_stride=1).num_network_calls == 451
    assert model.steps == list(range(10, -1, -1)) + [t for t in range(4, 0, -1) for _ in range(2)]
    for key in ("anomaly_map", "pseudo_healthy"):
        assert torch.equal(default[key], explicit[key])
    assert torch.equal(default.intermediates["inpainted"], explicit.intermediates["inpainted"])


def test_strided_schedule_in_both_stages(scheduler, tiny_unet):
    x, _, _ = phantom(32)
    inferer = _small(scheduler, step_stride=3)
    model = _TimestepRecorder(tiny_unet)
    levels = []
    original = inferer.scheduler.add_noise

    def spy(original_samples, noise, timesteps):
        levels.append(int(timesteps[0]))
        return original(original_samples, noise, timesteps)

    inferer.scheduler.add_noise = spy
    inferer.detect(x, model, generator=_gen())
    # reconstruction over reverse_schedule(10) = [10, 7, 4, 1, 0]; re-sampling 4 → 1 → 0, K = 2 passes each
    assert model.steps == [10, 7, 4, 1, 0] + [4, 4, 1, 1]
    assert tiny_unet.calls == inferer.num_network_calls == 5 + 2 * 2
    assert levels == [10, 4] + [1, 1, 0, 0]  # the known part is noised to the next visited level
    # the paper's defaults: (⌈200 / 10⌉ + 1) + ⌈50 / 10⌉ × 5 = 21 + 25 instead of 451
    assert AutoDDPMInferer(scheduler, step_stride=10).num_network_calls == 46
    assert AutoDDPMInferer(scheduler, step_stride=7).num_network_calls == 30 + 8 * 5


@pytest.mark.parametrize("index", ["t-1", "t"])
def test_strided_jump_back_is_the_forward_process(scheduler, index):
    inferer = _small(scheduler, jump_beta_index=index, step_stride=5)
    t, prev = 12, 7
    one, zero = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    shift = 1 if index == "t-1" else 0
    alpha = torch.prod(1 - scheduler.betas[prev + 1 - shift : t + 1 - shift])  # the s single steps composed
    assert torch.allclose(inferer.jump_back(one, t, zero, prev), alpha.sqrt() * one)
    assert torch.allclose(inferer.jump_back(zero, t, one, prev), (1 - alpha).sqrt() * one)
    # with t' = t - 1 it is the single step of the full schedule, bit for bit
    assert torch.equal(inferer.jump_back(one, t, one, t - 1), inferer.jump_back(one, t, one))
    if index == "t-1":  # from level 0 the shifted product starts at ᾱ_{-1} = 1
        assert torch.allclose(inferer.jump_back(one, 5, zero, 0), scheduler.alphas_cumprod[4].sqrt() * one)


def test_strided_result_restores_healthy_input_on_oracle(scheduler):
    x, lesion, healthy = phantom(48, batch=2)
    model = oracle_for(healthy, scheduler)
    inferer = _small(scheduler, noise_level=100, resample_level=20, step_stride=10)
    out = inferer.detect(x, model, generator=_gen(), return_intermediates=True)
    assert model.calls == inferer.num_network_calls == 11 + 2 * 2
    assert torch.allclose(out.intermediates["reconstruction"], healthy, atol=1e-3)
    for b in range(2):
        m, inside = out.anomaly_map[b], lesion[b] > 0
        assert m[inside].mean() > 5 * m[~inside].mean()
        assert out.intermediates["binary_mask"][b][inside].min() == 1.0
    assert torch.allclose(out.pseudo_healthy, healthy, atol=0.05)
