# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE: schedule, synthetic corruption transforms, restoration (Algorithm 1), parent calls, training helpers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import BATCH_ATOL, phantom
from monai.bundle import ConfigParser
from monai.inferers import DiffusionInferer, SimpleInferer

from monai_diffad.disyre_schedule import (
    corruption_alphas,
    disyre_scheduler,
    reference_restoration_steps,
    reference_timestep,
    restoration_timesteps,
    restoration_update,
    timestep_for_alpha,
)
from monai_diffad.inferers.disyre import DISYREInferer, disyre_unet
from monai_diffad.networks import load_state_dict_safely
from monai_diffad.training.disyre import AutocastSimpleInferer, DISYREPrepareBatch, frozen_corruption_items
from monai_diffad.transforms.corruption import (
    RandForeignPatchCorruption,
    RandForeignPatchCorruptiond,
    RandSoftShapeMask,
    RandSoftShapeMaskd,
    interpolate_foreign_patch,
    match_intensity,
)

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "bundles", "disyre", "train.json")
WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "bundles", "disyre", "models", "model.pt")


class FixedX0(torch.nn.Module):
    """An analytic "trained" DISYRE network: predicts the same healthy image whatever the input; logs its calls."""

    def __init__(self, healthy: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("healthy", healthy)
        self.timesteps: list[list[int]] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.timesteps.append(timesteps.tolist())
        return self.healthy[: x.shape[0]].clone()


class PixelwiseX0(torch.nn.Module):
    """A local, translation-equivariant model (x0 = min(x, 0.6) with a t-dependent blend): sliding windows cannot
    change its result, so windowed and whole-image restorations must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        w = (timesteps.float() / 100).reshape(-1, 1, 1, 1)
        return w * x.clamp(max=0.6) + (1 - w) * x


def _brain(size: int = 64, value: float = 0.5, batch: int = 1) -> torch.Tensor:
    """A constant-intensity ellipse on a zero background, ``(batch, 1, size, size)``."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return (((xx / 0.85) ** 2 + (yy / 0.9) ** 2 < 1).float() * value).expand(batch, 1, size, size).clone()


# ---------------------------------------------------------------------------------------------------- schedule
def test_schedule_paper_convention():
    scheduler = disyre_scheduler()
    alphas = corruption_alphas(scheduler)
    assert alphas.shape == (101,) and alphas[0] == 0 and alphas[-1] == 1
    assert (alphas.diff() > 0).all()
    # α_t = 1 − √ᾱ_t up to the rescale making α_T exactly 1
    raw = 1 - scheduler.alphas_cumprod.sqrt()
    torch.testing.assert_close(alphas[1:], raw / raw[-1])
    assert 0.994 < float(raw[-1]) < 0.996
    assert restoration_timesteps(100, 25) == [100, 75, 50, 25]
    assert restoration_timesteps(100, 33) == [100, 67, 34, 1]
    assert timestep_for_alpha(torch.tensor([0.0, 1.0]), alphas).tolist() == [0, 100]
    # the reference's training t is reversed: strong corruption ↔ small t
    assert reference_timestep(torch.tensor([1.0, 0.005]), scheduler).tolist() == [0, 98]


def test_update_rules():
    x0, xt = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 0.8)
    torch.testing.assert_close(restoration_update(x0, xt, 0.9, 0.5, "paper"), torch.full_like(x0, 0.5))
    torch.testing.assert_close(restoration_update(x0, xt, 0.8, 0.4, "cold"), torch.full_like(x0, 0.5))
    with pytest.raises(ValueError, match="alpha_t > 0"):
        restoration_update(x0, xt, 0.0, 0.0, "cold")
    with pytest.raises(ValueError, match="nearest"):
        restoration_update(x0, xt, 0.5, 0.2, "nearest")


# ---------------------------------------------------------------------------------------------------- corruption
def test_interpolation_endpoints():
    g = torch.Generator().manual_seed(0)
    x0, fp = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    assert torch.equal(interpolate_foreign_patch(x0, fp, mask, 0.0), x0)
    out = interpolate_foreign_patch(x0, fp, mask, torch.tensor([1.0, 1.0]))
    assert torch.equal(out[mask.bool()], fp[mask.bool()]) and torch.equal(out[~mask.bool()], x0[~mask.bool()])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_transform_alpha_endpoints(alpha):
    x = phantom(64)[0][0]
    t = RandForeignPatchCorruption(alpha_range=(alpha, alpha), intensity_matching="none", mask_kwargs={"blur_prob": 0})
    t.set_random_state(3)
    out = t(x, foreign=torch.full((1, 64, 64), 0.9))
    if alpha == 0.0:
        assert torch.equal(out, x) and t.timestep == 0
    else:
        assert t.timestep == 100
        full = t.mask == 1
        assert full.any() and torch.equal(out[full], t.foreign[full])
        assert torch.allclose(out[full], torch.tensor(0.9))  # the foreign patch came from the other image
        assert torch.equal(out[t.mask == 0], x[t.mask == 0])


def test_mask_coverage_distribution():
    """Over 300 draws at 64² (window P = 32): the three kinds about equally often; masks in [0, 1], inside the
    P x P window and the foreground; mean coverage 1.5–6 % of the image, median 1–5 %, max <= (P/64)² = 25 %."""
    x = _brain(64)[0]
    gen = RandSoftShapeMask().set_random_state(0)
    kinds, cover = {}, []
    for _ in range(300):
        m = gen(x)
        assert m.shape == (1, 64, 64) and m.min() >= 0 and m.max() <= 1
        outside = torch.ones_like(m, dtype=torch.bool)
        outside[(0, *gen.window)] = False
        assert gen.window[0].stop - gen.window[0].start == 32
        assert m[outside].abs().max() == 0 and m[x == 0].abs().max() == 0
        assert x[(0, *gen.center)] > 0  # the window is centred on the foreground
        kinds[gen.kind] = kinds.get(gen.kind, 0) + 1
        cover.append(float(m.sum()) / 64**2)
    assert set(kinds) == {"rectangle", "disc", "blob"} and all(70 <= n <= 130 for n in kinds.values())
    cover = np.asarray(cover)
    assert 0.015 <= cover.mean() <= 0.06 and 0.01 <= np.median(cover) <= 0.05 and cover.max() <= 0.25


def test_shape_options_and_blur():
    x = _brain(64)[0]
    discs = RandSoftShapeMask(shape_probs=(0, 1, 0), blur_prob=0.0, zero_background=False).set_random_state(1)
    m = discs(x)
    assert discs.kind == "disc" and set(m.unique().tolist()) <= {0.0, 1.0}
    blurred = RandSoftShapeMask(shape_probs=(1, 0, 0), blur_prob=1.0, blur_sigma=(4, 4)).set_random_state(1)(x)
    assert ((blurred > 0) & (blurred < 1)).sum() > 50  # soft edges
    gen = RandSoftShapeMask().set_random_state(2)
    first = gen(x)
    assert torch.equal(gen(x, randomize=False), first) and not torch.equal(gen(x), first)
    with pytest.raises(ValueError, match="earlier draw"):
        RandSoftShapeMask()(x, randomize=False)
    d = RandSoftShapeMaskd("image", mask_key="m").set_random_state(1)({"image": x.numpy()})
    assert isinstance(d["m"], np.ndarray) and d["m"].shape == (1, 64, 64)


def test_determinism_with_seed():
    x = phantom(64, batch=3, seed=1)[0]
    x[1] = x[1].flip(-1) * 0.7

    def run(seed: int) -> dict[str, torch.Tensor]:
        return RandForeignPatchCorruption(bias_prob=0.5).set_random_state(seed).corrupt_batch(x)

    a, b, c = run(5), run(5), run(6)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])
    d1 = RandForeignPatchCorruptiond("image").set_random_state(2)({"image": x[0]})
    d2 = RandForeignPatchCorruptiond("image").set_random_state(2)({"image": x[0]})
    assert all(torch.equal(torch.as_tensor(d1[k]), torch.as_tensor(d2[k])) for k in d1)


def test_cache_supplies_patches_from_previous_images():
    bright, dull = torch.full((1, 64, 64), 0.9), _brain(64, 0.3)[0]
    t = RandForeignPatchCorruption(alpha_range=(1, 1), intensity_matching="none", mask_kwargs={"blur_prob": 0.0})
    t.set_random_state(0)
    t(bright)  # empty cache: another location of the same image; then ``bright`` feeds the cache
    assert len(t.cache) == 1
    out = t(dull)
    assert torch.allclose(out[t.mask == 1], torch.tensor(0.9))
    assert len(t.cache) == 2


def test_batch_uses_other_images_and_minmax_matching():
    x = torch.cat([torch.full((1, 1, 64, 64), 0.3), torch.full((1, 1, 64, 64), 0.9)])
    out = RandForeignPatchCorruption(alpha_range=(1, 1), intensity_matching="none").set_random_state(0).corrupt_batch(x)
    full = out["mask"] == 1
    assert torch.allclose(out["image"][0][full[0]], torch.tensor(0.9))
    assert torch.allclose(out["image"][1][full[1]], torch.tensor(0.3))
    assert out["timesteps"].tolist() == [100, 100] and out["alpha"].tolist() == [1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    fp, img = torch.rand(1, 16, 16, generator=g), 0.4 + 0.2 * torch.rand(1, 16, 16, generator=g)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[4:12, 4:12] = True
    matched = match_intensity(fp, img, region, "minmax")[:, region]
    assert matched.min() >= img[:, region].min() - 1e-6 and matched.max() <= img[:, region].max() + 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({"timestep_sampling": "gaussian"}, "gaussian"),
    ({"alpha_range": (0.5, 0.2)}, "alpha_range"),
    ({"intensity_matching": "hist"}, "hist"),
    ({"prob": 1.5}, "prob"),
    ({"alphas": [0.1, 0.5, 1.0]}, "alphas"),
    ({"mask_kwargs": {"shape_probs": (0, 0, 0)}}, "shape_probs"),
])
def test_transform_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandForeignPatchCorruption(**kwargs)


def test_transform_bad_inputs():
    t = RandForeignPatchCorruption()
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        t(torch.rand(64, 64))
    bad = _brain(64)[0]
    bad[0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        t(bad)
    with pytest.raises(ValueError, match="fit"):
        RandSoftShapeMask(window_size=80)(_brain(64)[0])
    with pytest.raises(ValueError, match="exactly one"):
        RandForeignPatchCorruptiond(["image", "label"])


# ---------------------------------------------------------------------------------------------------- inferer
def test_parent_calls_unchanged(tiny_unet):
    scheduler = disyre_scheduler()
    scheduler.set_timesteps(10)
    ours, parent = DISYREInferer(scheduler), DiffusionInferer(scheduler)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.rand(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    t = torch.tensor([3, 70])
    assert torch.equal(ours(x, tiny_unet, noise, t), parent(x, tiny_unet, noise, t))
    for method, args in (("sample", (noise,)), ("get_likelihood", (x,))):
        torch.manual_seed(1)
        a = getattr(ours, method)(*args, tiny_unet, verbose=False)
        torch.manual_seed(1)
        b = getattr(parent, method)(*args, tiny_unet, verbose=False)
        assert torch.equal(a, b), method


@pytest.mark.parametrize("kwargs, calls, steps", [
    ({"step_schedule": "reference"}, 4, [3, 10, 25, 50]),
    ({}, 4, [100, 75, 50, 25]),
    ({"step_schedule": "paper", "step_size": 10}, 10, list(range(100, 0, -10))),
    ({"scoring": "mean_single_step", "step_schedule": "paper"}, 4, [100, 75, 50, 25]),
    ({"timesteps": (99, 74, 49, 24)}, 4, [99, 74, 49, 24]),
])
def test_network_calls(kwargs, calls, steps):
    x, _, healthy = phantom(32, batch=2)
    model = FixedX0(healthy)
    out = DISYREInferer(**kwargs).detect(x, model, return_intermediates=True)
    assert len(model.timesteps) == calls and [t[0] for t in model.timesteps] == steps
    assert all(len(set(t)) == 1 and len(t) == 2 for t in model.timesteps)
    assert out.intermediates["timesteps"].tolist() == steps
    assert out.intermediates["maps"].shape == (2, calls, 1, 32, 32)
    assert out.intermediates["x0"].shape == (2, calls, 1, 32, 32)


@pytest.mark.parametrize("update", ["paper", "cold"])
def test_algorithm_1_recurrence(update):
    """restore() equals a hand-written Algorithm 1 with a model x̂0 = 0.5·x_t + 0.1·t/100."""

    class Affine(torch.nn.Module):
        def forward(self, x, timesteps, context=None):
            return 0.5 * x + 0.1 * timesteps.float().reshape(-1, 1, 1, 1) / 100

    inferer = DISYREInferer(update=update, step_schedule="paper", clamp_x0="before", foreground_weighting="none")
    x = phantom(32)[0]
    out = inferer.restore(x, Affine())
    alphas = corruption_alphas(disyre_scheduler())
    x_t, acc, steps = x.clone(), torch.zeros_like(x), [100, 75, 50, 25]
    for i, t in enumerate(steps):
        x0_hat = (0.5 * x_t + 0.1 * t / 100).clamp(0, 1)
        acc += (x0_hat - x_t).abs()
        if i + 1 < len(steps):
            a_t, a_n = alphas[t], alphas[steps[i + 1]]
            nxt = (1 - a_n) * x0_hat + a_n * x_t if update == "paper" else x0_hat + a_n / a_t * (x_t - x0_hat)
            x_t = nxt.clamp(0, 1)
    torch.testing.assert_close(out["anomaly_map"], acc / 4)
    torch.testing.assert_close(out["pseudo_healthy"], x0_hat)


@pytest.mark.parametrize("scoring", ["multi_step", "mean_single_step"])
def test_anomaly_is_highlighted(scoring):
    x, lesion, healthy = phantom(32, batch=2)
    out = DISYREInferer(scoring=scoring).detect(x, FixedX0(healthy))
    inside, outside = out.anomaly_map[lesion > 0], out.anomaly_map[lesion == 0]
    assert outside.abs().max() < 1e-6 and inside.mean() > 0.1
    torch.testing.assert_close(out.pseudo_healthy, healthy)
    assert out.score.shape == (2,) and (out.score > 0.1).all()


def test_reference_steps_tell_the_network_the_reference_alphas():
    """The reference calls t_ref = 99, 74, 49, 24, tied by its training map to α = √ᾱ_{t_ref}; ours are called where
    the paper table's α_t is nearest, and a multi-step update uses the reference sampler's flipped α."""
    scheduler = disyre_scheduler()
    steps, update_alphas = reference_restoration_steps(scheduler, 25)
    root = scheduler.alphas_cumprod.sqrt()
    table = corruption_alphas(scheduler)
    assert steps == [3, 10, 25, 50]
    for t, t_ref in zip(steps, (99, 74, 49, 24)):
        assert (table - root[t_ref]).abs().argmin() == t and abs(table[t] - root[t_ref]) < 0.01
    torch.testing.assert_close(torch.tensor(update_alphas).float(), root[[0, 25, 50, 75]], atol=1e-6, rtol=0)
    assert DISYREInferer(step_schedule="reference").restoration_steps() == steps


def test_reference_multi_step_scores_the_raw_prediction():
    """Default restore() (reference steps, clamp after) equals a hand-written loop with an overshooting model."""

    class Affine(torch.nn.Module):
        def forward(self, x, timesteps, context=None):
            return 1.5 * x - 0.2 + 0.01 * timesteps.float().reshape(-1, 1, 1, 1)

    x = phantom(32)[0]
    out = DISYREInferer(update="cold", step_schedule="reference", clamp_x0="after").restore(x, Affine())
    steps, alphas = reference_restoration_steps(disyre_scheduler(), 25)
    x_t, acc = x.clone(), torch.zeros_like(x)
    for i, t in enumerate(steps):
        raw = 1.5 * x_t - 0.2 + 0.01 * t
        acc += (raw - x_t).abs()
        if i + 1 < len(steps):
            x_t = (raw + alphas[i + 1] / alphas[i] * (x_t - raw)).clamp(0, 1)
    torch.testing.assert_close(out["anomaly_map"], acc / 4)
    torch.testing.assert_close(out["pseudo_healthy"], raw.clamp(0, 1))
    assert (raw > 1).any() or (raw < 0).any()  # the clamp matters for this model
    before = DISYREInferer(update="cold", foreground_weighting="none", clamp_x0="before").restore(x, Affine())
    assert not torch.allclose(before["anomaly_map"], out["anomaly_map"])


def test_reference_evaluation_with_a_network():
    """mean_single_step with the defaults is the reference evaluation: mean over calls of |P(x, t) − x| on the raw
    output, times (x > 0) and the image's (= window's) foreground fraction."""
    from conftest import tiny_diffusion_unet

    model = tiny_diffusion_unet(0)
    x = phantom(32, batch=2)[0]
    inferer = DISYREInferer(
        scoring="mean_single_step", step_schedule="reference", clamp_x0="after", foreground_weighting="window"
    )
    out = inferer.detect(x, model)
    expected = torch.stack([(inferer.predict_x0(model, x, t) - x).abs() for t in (3, 10, 25, 50)]).mean(0)
    fraction = (x > 0).flatten(1).float().mean(1).reshape(-1, 1, 1, 1)
    # the detection frame's contract keeps maps in [0, 1]; this untrained network overshoots by more than 1
    expected = (expected * (x > 0) * fraction).clamp(max=1.0)
    torch.testing.assert_close(out.anomaly_map, expected, atol=BATCH_ATOL, rtol=0)


def test_foreground_weighting_per_window():
    """'window' weights each sliding window by its own foreground fraction before blending; 'image' weights once."""
    x = torch.zeros(1, 1, 32, 64)
    x[..., :, :32] = 0.5  # left half brain, right half background
    x[..., 10:14, 40:44] = 0.7  # a bright spot in a mostly-empty region
    kwargs = {"patch_size": 32, "sw_batch_size": 64, "foreground_mask": False}
    none = DISYREInferer(foreground_weighting="none", **kwargs).detect(x, PixelwiseX0()).anomaly_map
    image = DISYREInferer(foreground_weighting="image", **kwargs).detect(x, PixelwiseX0()).anomaly_map
    window = DISYREInferer(foreground_weighting="window", **kwargs).detect(x, PixelwiseX0()).anomaly_map
    torch.testing.assert_close(image, none * (x > 0).float().mean())
    spot = (..., slice(10, 14), slice(40, 44))
    # the spot's windows are mostly background: weighted less than by the image's fraction
    assert window[spot].max() < image[spot].max()
    assert DISYREInferer(foreground_weighting=True).foreground_weighting == "window"
    assert DISYREInferer(foreground_weighting=False).foreground_weighting == "none"


def test_foreground_masking_and_weighting():
    healthy = _brain(32, 0.5)
    x = healthy.clone()
    x[..., 14:17, 14:17] = 0.0  # a dark hole: background by the (x > 0) rule
    model = FixedX0(healthy)
    masked = DISYREInferer().detect(x, model).anomaly_map
    unmasked = DISYREInferer(foreground_mask=False, foreground_weighting="none").detect(x, model).anomaly_map
    assert unmasked[..., 14:17, 14:17].min() > 0 and masked[..., 14:17, 14:17].max() == 0
    weighted = DISYREInferer(foreground_mask=False, foreground_weighting=True).detect(x, model).anomaly_map
    torch.testing.assert_close(weighted, unmasked * (x > 0).float().mean())


def test_sliding_window_matches_whole_image():
    x = phantom(64, seed=2)[0][..., :48]  # 64 x 48, larger than the 32 x 32 patch
    whole_model, window_model = PixelwiseX0(), PixelwiseX0()
    whole = DISYREInferer(foreground_weighting="none").detect(x, whole_model)
    windowed = DISYREInferer(patch_size=32, sw_batch_size=64, foreground_weighting="none").detect(
        x, window_model, return_intermediates=True
    )
    assert windowed.anomaly_map.shape == (1, 1, 64, 48)
    torch.testing.assert_close(windowed.anomaly_map, whole.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(windowed.pseudo_healthy, whole.pseudo_healthy, atol=1e-5, rtol=0)
    assert windowed.intermediates["x0"].shape == (1, 4, 1, 64, 48)
    # stride 8 (overlap 0.75): 5 x 3 windows in one batch, 4 calls each
    assert window_model.calls == 4 and whole_model.calls == 4
    assert windowed.anomaly_map[x > 0.6].min() > 0  # the bright lesion is found


def test_determinism_batch_independence_and_3d(tiny_unet):
    inferer = DISYREInferer(max_batch_size=1)
    x = phantom(32, batch=2, seed=3)[0]
    a, b = inferer.detect(x, tiny_unet), DISYREInferer().detect(x, tiny_unet)
    assert float((a.pseudo_healthy - x).abs().mean()) > 1e-3  # the network does something
    # unclamped residuals of this untrained net reach ~1, so batching's float noise is twice the shared tolerance
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, atol=2 * BATCH_ATOL, rtol=0)
    assert torch.equal(a.anomaly_map, inferer.detect(x, tiny_unet).anomaly_map)
    volume = torch.stack([x[0], x[1], x[0]], dim=-1)[None]  # (1, 1, 32, 32, 3)
    out = inferer.detect(volume, tiny_unet)
    assert out.anomaly_map.shape == (1, 1, 32, 32, 3)
    torch.testing.assert_close(out.anomaly_map[..., 1], a.anomaly_map[1:], atol=BATCH_ATOL, rtol=0)
    stacked = inferer(x, tiny_unet)  # evaluator protocol: detect() without noise/timesteps
    assert stacked.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"step_size": 0}, ValueError, "step_size"),
    ({"scoring": "sum"}, ValueError, "sum"),
    ({"update": "ddim"}, ValueError, "ddim"),
    ({"step_schedule": "leading"}, ValueError, "leading"),
    ({"clamp_x0": "never"}, ValueError, "never"),
    ({"foreground_weighting": "volume"}, ValueError, "volume"),
    ({"timesteps": (25, 50)}, ValueError, "descending"),
    ({"timesteps": (-1,)}, ValueError, "-1"),
    ({"sw_overlap": 1.0}, ValueError, "sw_overlap"),
    ({"step_stride": 10}, TypeError, "step_stride"),
    ({"noise_type": "simplex"}, TypeError, "noise_type"),
    ({"simplex_normalize": True}, TypeError, "simplex_normalize"),
    ({"noise_level": 99}, TypeError, "noise_level"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        DISYREInferer(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"step_size": 101}, ValueError, r"step_size must be an integer in \[1, T=100\]"),
    ({"timesteps": (120, 50)}, ValueError, r"timestep 120 must be an integer in \[0, T=100\]"),
    ({"scheduler": "ddpm"}, TypeError, "DDPMScheduler"),
    ({"corruption": RandForeignPatchCorruption(alphas=torch.linspace(0, 1, 11))}, ValueError, "T="),
])
def test_settings_that_need_the_scheduler_are_checked_when_used(tiny_unet, kwargs, error, match):
    inferer = DISYREInferer(**kwargs)  # constructs, as the parent does with any scheduler
    with pytest.raises(error, match=match):
        inferer.detect(phantom(32)[0], tiny_unet)
    with pytest.raises(error, match=match):
        inferer.training_loss(phantom(32)[0], tiny_unet)
    assert tiny_unet.calls == 0


def test_bad_inputs(tiny_unet):
    inferer = DISYREInferer()
    with pytest.raises(ValueError, match="dimensions"):
        inferer.detect(torch.rand(1, 32, 32), tiny_unet)
    bad = torch.rand(1, 1, 32, 32)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        inferer.detect(bad, tiny_unet)
    with pytest.raises(ValueError, match="value_range"):
        inferer.detect(torch.rand(1, 1, 32, 32) * 5, tiny_unet)
    with pytest.raises(ValueError, match="timesteps"):
        inferer.corrupt(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8), torch.tensor([101]))


# ---------------------------------------------------------------------------------------------------- training
def test_corrupt_and_training_loss(tiny_unet):
    inferer = DISYREInferer()
    x0, fp, m = _brain(16, 0.5, 2), _brain(16, 0.9, 2), torch.ones(2, 1, 16, 16)
    out = inferer.corrupt(x0, fp, m, torch.tensor([0, 100]))
    assert torch.equal(out[0], x0[0]) and torch.equal(out[1], fp[1])

    class Identity(torch.nn.Module):
        def forward(self, x, timesteps, context=None):
            return x

    clean = DISYREInferer(corruption=RandForeignPatchCorruption(alpha_range=(0, 0)))
    assert clean.training_loss(phantom(32, batch=2)[0], Identity()) == 0
    loss = inferer.training_loss(phantom(32, batch=2)[0], tiny_unet)
    loss.backward()
    assert torch.isfinite(loss) and next(tiny_unet.parameters()).grad is not None


def test_prepare_batch_and_frozen_items():
    items = [{"image": _brain(32, v)[0].numpy(), "mask": (_brain(32)[0] > 0).float().numpy()} for v in (0.4, 0.8)]
    transform = RandForeignPatchCorruptiond("image", foreground_key="mask")
    a = frozen_corruption_items(items, transform, copies=2, seed=4)
    b = frozen_corruption_items(items, transform, copies=2, seed=4)
    assert len(a) == 4 and all(torch.equal(p[k], q[k]) for p, q in zip(a, b) for k in p)
    batch = {k: torch.stack([item[k] for item in a]) for k in a[0]}
    x_t, x0, args, kwargs = DISYREPrepareBatch()(batch)
    assert x_t.shape == x0.shape == (4, 1, 32, 32) and args == () and kwargs["timesteps"].shape == (4,)
    with pytest.raises(KeyError, match="x0"):
        DISYREPrepareBatch()({"image": x_t, "timesteps": kwargs["timesteps"]})


def test_networks_and_bundle_config():
    demo = disyre_unet()
    assert demo(torch.rand(1, 1, 32, 32), timesteps=torch.tensor([50])).shape == (1, 1, 32, 32)
    paper = disyre_unet("paper")
    assert len(paper.down_blocks) == 6 and 20e6 < sum(p.numel() for p in paper.parameters()) < 30e6
    with pytest.raises(ValueError, match="huge"):
        disyre_unet("huge")
    with open(BUNDLE) as f:
        config = json.load(f)
    parser = ConfigParser(config)
    corruption = parser.get_parsed_content("corruption")
    assert isinstance(corruption, RandForeignPatchCorruptiond) and corruption.corruption.num_steps == 100
    item = {"image": phantom(64)[0][0].numpy(), "mask": (phantom(64)[2][0] > 0).float().numpy()}
    out = parser.get_parsed_content("train_transforms")(item)
    assert {"image", "x0", "timesteps", "mask"} <= set(out) and out["image"].shape == (1, 64, 64)
    assert isinstance(parser.get_parsed_content("prepare_batch"), DISYREPrepareBatch)
    assert isinstance(parser.get_parsed_content("train_inferer"), AutocastSimpleInferer)


def test_autocast_simple_inferer(tiny_unet):
    x, t = phantom(32, batch=2)[0], torch.tensor([10, 90])
    reference = SimpleInferer()(x, tiny_unet, timesteps=t)
    assert torch.equal(AutocastSimpleInferer("none")(x, tiny_unet, timesteps=t), reference)
    low = AutocastSimpleInferer("bfloat16")(x, tiny_unet, timesteps=t)
    assert low.dtype == torch.float32 and reference.abs().mean() > 0.1
    assert (low - reference).abs().mean() < 0.05 * reference.abs().mean()
    with pytest.raises(ValueError, match="float8"):
        AutocastSimpleInferer("float8")


@pytest.mark.skipif(not os.path.isfile(WEIGHTS), reason="demo weights not trained yet")
def test_demo_weights_match_the_demo_network():
    network = disyre_unet()
    network.load_state_dict(load_state_dict_safely(WEIGHTS))  # strict: every key and shape must match
    x = phantom(64)[0]
    out = DISYREInferer(patch_size=64).detect(x, network.eval())
    assert out.anomaly_map.shape == (1, 1, 64, 64) and torch.isfinite(out.anomaly_map).all()
