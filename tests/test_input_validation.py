# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Every public entry point refuses bad input with a ValueError/TypeError that names the problem.

A clinical research tool must never turn a NaN, an empty image or a mismatched mask into a silently wrong map. Each
table below lists bad inputs for one entry point and a substring its error message must contain.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from monai_diffad.inferers import AnoDDPMInferer, AutoDDPMInferer, DDPMAnomalyInferer, THORInferer
from monai_diffad.maps import (
    PerceptualDistance,
    gaussian_smooth,
    grey_closing,
    grey_dilation,
    grey_erosion,
    harmonic_mean,
    minmax_normalize,
    normalize_by_max,
    per_image_quantile,
    percentile_normalize,
    residual_map,
    ssim_map,
    structural_dissimilarity_map,
)
from monai_diffad.maps.scoring import top_fraction_mean
from monai_diffad.metrics import auprc, auroc, best_dice, healthy_fpr_threshold, image_auroc
from monai_diffad.networks import ddpm_scheduler, diffusion_unet
from monai_diffad.transforms import AnomalyMapToLabel, ForegroundPercentileScale, InPlaneResize

try:
    from monai_diffad.inferers.disyre import DISYREInferer
except ImportError:  # pragma: no cover - DISYRE is optional for this file
    DISYREInferer = None

SCHEDULER = ddpm_scheduler()
TINY = {"channels": (8, 8), "attention_levels": (False, False), "num_head_channels": 8, "norm_num_groups": 4}


def _image(shape=(1, 1, 16, 16), seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _with(value: float, shape=(1, 1, 16, 16)) -> torch.Tensor:
    x = _image(shape)
    x.view(-1)[3] = value
    return x


NAN, INF = float("nan"), float("inf")
X = _image()


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusion_unet(**TINY).eval()


# ---------------------------------------------------------------- inferers

INFERERS = {
    "ddpm": lambda **k: DDPMAnomalyInferer(SCHEDULER, noise_level=2, perceptual="ssim", **k),
    "anoddpm": lambda **k: AnoDDPMInferer(SCHEDULER, noise_level=2, perceptual="ssim", **k),
    "thor": lambda **k: THORInferer(
        SCHEDULER, noise_level=2, harmonization_steps=(1,), record_interval=1, perceptual="ssim", **k
    ),
    "autoddpm": lambda **k: AutoDDPMInferer(
        SCHEDULER, noise_level=2, resample_level=1, resample_passes=1, perceptual="ssim", **k
    ),
}
if DISYREInferer is not None:
    INFERERS["disyre"] = lambda **k: DISYREInferer(**k)

BAD_DETECT_INPUTS = [
    ("rank 3", torch.rand(1, 16, 16), {}, ValueError, "got 3 dimensions"),
    ("rank 6", torch.rand(1, 1, 4, 4, 4, 4), {}, ValueError, "got 6 dimensions"),
    ("NaN", _with(NAN), {}, ValueError, "NaN"),
    ("inf", _with(INF), {}, ValueError, "infinite"),
    ("-inf", _with(-INF), {}, ValueError, "infinite"),
    ("constant", torch.full((1, 1, 16, 16), 0.5), {}, ValueError, "constant"),
    ("all zero", torch.zeros(2, 1, 16, 16), {}, ValueError, "constant"),
    ("one constant item", torch.cat([X, torch.zeros_like(X)]), {}, ValueError, "image(s) [1]"),
    ("empty batch", torch.empty(0, 1, 16, 16), {}, ValueError, "empty"),
    ("empty plane", torch.empty(1, 1, 0, 16), {}, ValueError, "empty"),
    ("far above range", X * 300, {}, ValueError, "outside value_range"),
    ("below range", X - 5, {}, ValueError, "outside value_range"),
    ("uint8 image", (X * 255).to(torch.uint8), {}, ValueError, "outside value_range"),
    ("numpy image", X.numpy(), {}, TypeError, "torch.Tensor"),
    ("wrong channels", torch.rand(1, 2, 16, 16), {}, ValueError, "network expects 1"),
    ("size not divisible", torch.rand(1, 1, 15, 15), {}, ValueError, "divisible by 2"),
    ("mask too small", X, {"mask": torch.ones(1, 1, 8, 8)}, ValueError, "mask must have shape"),
    ("mask two channels", X, {"mask": torch.ones(1, 2, 16, 16)}, ValueError, "mask must have shape"),
    ("mask no channel", X, {"mask": torch.ones(1, 16, 16)}, ValueError, "mask must have shape"),
    ("mask other batch", X, {"mask": torch.ones(2, 1, 16, 16)}, ValueError, "mask must have shape"),
    ("mask NaN", X, {"mask": torch.full((1, 1, 16, 16), NAN)}, ValueError, "mask contains NaN"),
    ("mask numpy", X, {"mask": np.ones((1, 1, 16, 16))}, TypeError, "mask must be a torch.Tensor"),
    ("generator int", X, {"generator": 0}, TypeError, "torch.Generator"),
    ("intermediates 3D", torch.rand(1, 1, 16, 16, 2), {"return_intermediates": True}, ValueError, "2D inputs"),
]


@pytest.mark.parametrize("method", sorted(INFERERS))
@pytest.mark.parametrize("case", BAD_DETECT_INPUTS, ids=[c[0] for c in BAD_DETECT_INPUTS])
def test_detect_refuses_bad_inputs(net, method, case):
    _, inputs, kwargs, error, match = case
    with pytest.raises(error) as info:
        INFERERS[method]().detect(inputs, net, **kwargs)
    assert match in str(info.value)


@pytest.mark.parametrize("method", sorted(INFERERS))
def test_out_of_range_clip_policy_warns_and_unknown_policy(net, method):
    with pytest.warns(RuntimeWarning, match="outside value_range.*clipped"):
        out = INFERERS[method](out_of_range="clip").detect(X * 1.5, net, generator=torch.Generator().manual_seed(0))
    assert out.anomaly_map.min() >= 0 and out.anomaly_map.max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # slightly out of range (within 5 %) is rounding, not worth a warning
        INFERERS[method](out_of_range="clip").detect(X * 1.02, net, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="ignore"):
        INFERERS[method](out_of_range="ignore")


FRAME_OPTIONS = [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"evaluator_outputs": ("label",)}, "label"),
    ({"score_top_fraction": 0}, "score_top_fraction"),
    ({"score_top_fraction": 1.5}, "score_top_fraction"),
    ({"value_range": (0, NAN)}, "value_range"),
    ({"value_range": (1, 1)}, "value_range"),
    ({"model_range": (1, -1)}, "model_range"),
]
#: options of the partial-diffusion layer: refused with a ValueError when out of range, and by DISYRE (which has no
#: noise) with a TypeError whatever their value
DIFFUSION_OPTIONS = [
    ({"noise_type": "perlin"}, "perlin"),
    ({"step_stride": 0}, "step_stride"),
    ({"noise_level": 0}, "noise_level=0 is outside [1, T - 1]"),
    ({"noise_level": -3}, "noise_level=-3 is outside [1, T - 1]"),
    ({"noise_level": 2.5}, "integer"),
    ({"noise_level": True}, "integer"),
]


CONSTRUCTORS = {
    "ddpm": lambda **k: DDPMAnomalyInferer(SCHEDULER, **k),
    "anoddpm": lambda **k: AnoDDPMInferer(SCHEDULER, **k),
    "thor": lambda **k: THORInferer(SCHEDULER, **k),
    "autoddpm": lambda **k: AutoDDPMInferer(SCHEDULER, **k),
    "disyre": lambda **k: DISYREInferer(**k),
}


@pytest.mark.parametrize("method", sorted(INFERERS))
@pytest.mark.parametrize("kwargs, match", FRAME_OPTIONS + DIFFUSION_OPTIONS)
def test_inferer_options_refused(method, kwargs, match):
    if method == "disyre" and (kwargs, match) in DIFFUSION_OPTIONS:
        error, match = TypeError, next(iter(kwargs))  # DISYRE has no noise: the keyword itself is refused
    else:
        error = ValueError
    with pytest.raises(error) as info:
        CONSTRUCTORS[method](**kwargs)
    assert match in str(info.value)


#: settings that need the scheduler's T or kind: any scheduler constructs (as for the parent), detection refuses them
DDIM = DDIMScheduler(num_train_timesteps=1000)
SCHEDULER_SETTINGS = {
    "ddpm noise_level": (
        lambda: DDPMAnomalyInferer(SCHEDULER, noise_level=1000), ValueError,
        "noise_level=1000 is outside [1, 999] for a scheduler with T=1000 training steps",
    ),
    "thor noise_level": (
        lambda: THORInferer(SCHEDULER, noise_level=1000, harmonization_steps=(1,)), ValueError,
        "noise_level=1000 is outside [1, 999]",
    ),
    "anoddpm noise_level": (lambda: AnoDDPMInferer(SCHEDULER, noise_level=5000), ValueError, "noise_level=5000"),
    "autoddpm resample_level": (
        lambda: AutoDDPMInferer(SCHEDULER, noise_level=2, resample_level=1000), ValueError,
        "resample_level=1000 is outside [1, 999]",
    ),
    "disyre step_size": (lambda: DISYREInferer(step_size=101), ValueError, "step_size must be an integer in [1, T=100]"),
    "disyre timesteps": (
        lambda: DISYREInferer(timesteps=(500,)), ValueError, "timestep 500 must be an integer in [0, T=100]"
    ),
    "disyre not a scheduler": (
        lambda: DISYREInferer(scheduler="ddpm"), TypeError,
        "DISYREInferer needs a monai.networks.schedulers.DDPMScheduler, got str",
    ),
    **{
        f"{cls.__name__} DDIM": (
            lambda cls=cls: cls(DDIM), TypeError,
            f"{cls.__name__} needs a monai.networks.schedulers.DDPMScheduler, got DDIMScheduler",
        )
        for cls in (DDPMAnomalyInferer, AnoDDPMInferer, THORInferer, AutoDDPMInferer, DISYREInferer)
    },
}


@pytest.mark.parametrize("case", sorted(SCHEDULER_SETTINGS))
def test_settings_that_need_the_scheduler_are_refused_when_detection_runs(net, case):
    """The constructor accepts them; validate_settings() and detect() refuse them before the network runs."""
    make, error, match = SCHEDULER_SETTINGS[case]
    inferer = make()
    with pytest.raises(error) as info:
        inferer.validate_settings()
    assert match in str(info.value)
    calls: list[int] = []
    hook = net.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error) as info:
            inferer.detect(X, net)
    finally:
        hook.remove()
    assert match in str(info.value) and not calls


METHOD_OPTIONS = [
    (THORInferer, {"harmonization_steps": (400,)}, "harmonization step 400"),
    (THORInferer, {"harmonization_steps": (-1,)}, "harmonization step -1"),
    (THORInferer, {"harmonization_steps": (1.5,)}, "harmonization step 1.5"),
    (THORInferer, {"record_interval": 0}, "record_interval"),
    (THORInferer, {"closing_size": 4}, "closing_size"),
    (THORInferer, {"dilation_size": 0}, "dilation_size"),
    (THORInferer, {"kernel_shape": "hexagon"}, "hexagon"),
    (THORInferer, {"perceptual": "vgg"}, "vgg"),
    (THORInferer, {"lpips_net": "resnet"}, "resnet"),
    (THORInferer, {"sigma": -1.0}, "sigma"),
    (THORInferer, {"sigma": NAN}, "sigma"),
    (THORInferer, {"final_maps": "last"}, "last"),
    (THORInferer, {"harmonization_steps": (), "final_maps": "harmonization"}, "at least one"),
    (THORInferer, {"map_clip": 0}, "map_clip"),
    (THORInferer, {"renoise_level": "t+1"}, "t+1"),
    (THORInferer, {"noise_type": "perlin"}, "perlin"),
    (DDPMAnomalyInferer, {"residual": "l3"}, "l3"),
    (DDPMAnomalyInferer, {"perceptual_sigma": NAN}, "sigma"),
    (DDPMAnomalyInferer, {"lpips_net": "resnet"}, "resnet"),
    (AutoDDPMInferer, {"resample_level": 0}, "resample_level"),
    (AutoDDPMInferer, {"resample_passes": 0}, "resample_passes"),
    (AutoDDPMInferer, {"mask_threshold": NAN}, "mask_threshold"),
    (AutoDDPMInferer, {"residual_percentile": 101}, "residual_percentile"),
    (AutoDDPMInferer, {"threshold_percentile": -1}, "threshold_percentile"),
    (AutoDDPMInferer, {"dilation_size": 2}, "dilation_size"),
    (AutoDDPMInferer, {"mask_order": "random"}, "random"),
    (AutoDDPMInferer, {"resample_start": "noise"}, "noise"),
    (AutoDDPMInferer, {"jump_beta_index": "t+1"}, "t+1"),
]


@pytest.mark.parametrize("cls, kwargs, match", METHOD_OPTIONS)
def test_method_options_refused(cls, kwargs, match):
    with pytest.raises(ValueError) as info:
        cls(SCHEDULER, **kwargs)
    assert match in str(info.value)


@pytest.mark.skipif(DISYREInferer is None, reason="DISYRE not importable")
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"step_size": 0}, ValueError, "step_size"),
        ({"scoring": "best"}, ValueError, "best"),
        ({"update": "linear"}, ValueError, "linear"),
        ({"timesteps": (5, 10)}, ValueError, "descending"),
        ({"timesteps": (-5,)}, ValueError, "-5"),
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"sw_overlap": 1.0}, ValueError, "sw_overlap"),
        ({"sw_sigma_scale": 0}, ValueError, "sw_sigma_scale"),
        ({"sw_batch_size": 0}, ValueError, "sw_batch_size"),
    ],
)
def test_disyre_options_refused(kwargs, error, match):
    with pytest.raises(error) as info:
        DISYREInferer(**kwargs)
    assert match in str(info.value)


@pytest.mark.skipif(DISYREInferer is None, reason="DISYRE not importable")
def test_disyre_checks_the_window_size_not_the_image_size(net):
    image = torch.rand(1, 1, 24, 24)  # 24 is even: fine as a whole image
    DISYREInferer(step_size=100).detect(image, net)
    with pytest.raises(ValueError, match=r"in-plane size \(15, 15\)"):
        DISYREInferer(step_size=100, patch_size=15).detect(image, net)


# ---------------------------------------------------------------- perceptual distance and maps


@pytest.fixture(scope="module")
def perceptual() -> PerceptualDistance:
    with warnings.catch_warnings():  # the offline fallback warns once per process (or not at all if already warned)
        warnings.simplefilter("ignore")
        return PerceptualDistance(fallback="ssim")


BAD_PAIRS = [
    ("rank 3", torch.rand(1, 16, 16), None, ValueError, "(B, C, H, W)"),
    ("NaN", _with(NAN), None, ValueError, "NaN"),
    ("inf", _with(INF), None, ValueError, "infinite"),
    ("shapes differ", X, torch.rand(1, 1, 8, 8), ValueError, "same shape"),
    ("integer", (X * 255).long(), None, TypeError, "floating-point"),
    ("numpy", X.numpy(), None, TypeError, "torch.Tensor"),
    ("list", [[0.5]], None, TypeError, "torch.Tensor"),
    ("empty batch", torch.empty(0, 1, 16, 16), None, ValueError, "empty"),
    ("empty plane", torch.empty(1, 1, 0, 16), None, ValueError, "empty"),
]


@pytest.mark.parametrize("case", BAD_PAIRS, ids=[c[0] for c in BAD_PAIRS])
def test_perceptual_distance_refuses_bad_inputs(perceptual, case):
    _, x, y, error, match = case
    with pytest.raises(error) as info:
        perceptual(x, x if y is None else y)
    assert match in str(info.value)


def test_perceptual_distance_channels_and_options():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PerceptualDistance(fallback="ssim")(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
    for kwargs, match in [
        ({"net": "resnet"}, "resnet"),
        ({"fallback": "zero"}, "zero"),
        ({"input_range": (1, 0)}, "input_range"),
        ({"slice_batch_size": 0}, "slice_batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            PerceptualDistance(**kwargs)
    with pytest.raises(FileNotFoundError, match="no_backbone.pth"):
        PerceptualDistance(backbone_path="/nonexistent/no_backbone.pth")


def test_lpips_refuses_images_too_small_for_its_trunk(tmp_path):
    import torchvision

    backbone = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), backbone)
    lpips_distance = PerceptualDistance(backbone_path=backbone)  # random trunk: plumbing only
    with pytest.raises(ValueError, match=r"\(16, 16\) are too small for lpips-squeeze \(at least 17"):
        lpips_distance(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert lpips_distance(torch.rand(1, 1, 17, 17), torch.rand(1, 1, 17, 17)).shape == (1, 1, 17, 17)


MAP_FUNCTIONS = {
    "residual_map": lambda m: residual_map(m, m),
    "gaussian_smooth": lambda m: gaussian_smooth(m, 1.0),
    "grey_dilation": lambda m: grey_dilation(m, 3),
    "grey_erosion": lambda m: grey_erosion(m, 3),
    "grey_closing": lambda m: grey_closing(m, 3),
    "normalize_by_max": normalize_by_max,
    "minmax_normalize": minmax_normalize,
    "per_image_quantile": lambda m: per_image_quantile(m, 50.0),
    "percentile_normalize": percentile_normalize,
    "harmonic_mean": lambda m: harmonic_mean([m, m]),
    "ssim_map": lambda m: ssim_map(m, m),
    "structural_dissimilarity_map": lambda m: structural_dissimilarity_map(m, m),
}
BAD_MAPS = [
    ("rank 3", torch.rand(1, 16, 16), ValueError, "dimensions"),
    ("rank 6", torch.rand(1, 1, 2, 2, 2, 2), ValueError, "dimensions"),
    ("NaN", _with(NAN), ValueError, "NaN"),
    ("inf", _with(INF), ValueError, "infinite"),
    ("integer", (X * 255).long(), TypeError, "floating-point"),
    ("numpy", X.numpy(), TypeError, "torch.Tensor"),
    ("empty batch", torch.empty(0, 1, 16, 16), ValueError, "empty"),
    ("empty plane", torch.empty(1, 1, 0, 16), ValueError, "empty"),
]


@pytest.mark.parametrize("name", sorted(MAP_FUNCTIONS))
@pytest.mark.parametrize("case", BAD_MAPS, ids=[c[0] for c in BAD_MAPS])
def test_map_functions_refuse_bad_maps(name, case):
    _, m, error, match = case
    with pytest.raises(error) as info:
        MAP_FUNCTIONS[name](m)
    assert match in str(info.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: residual_map(X, X, kind="l3"), "l3"),
        (lambda: residual_map(X, torch.rand(1, 1, 8, 8)), "same shape"),
        (lambda: gaussian_smooth(X, -1.0), "sigma"),
        (lambda: gaussian_smooth(X, NAN), "sigma"),
        (lambda: gaussian_smooth(X, (1.0, 1.0, 1.0)), "2 entries"),
        (lambda: gaussian_smooth(X, 1.0, truncate=-1.0), "truncate"),
        (lambda: grey_dilation(X, 2), "kernel_size"),
        (lambda: grey_erosion(X, 0), "kernel_size"),
        (lambda: grey_closing(X, 3.0), "kernel_size"),
        (lambda: grey_dilation(X, 3, shape="hexagon"), "hexagon"),
        (lambda: normalize_by_max(X - 0.5), "non-negative"),
        (lambda: per_image_quantile(X, 101.0), "q must be in [0, 100]"),
        (lambda: per_image_quantile(X, NAN), "q must be in [0, 100]"),
        (lambda: percentile_normalize(X, -1.0), "q must be in [0, 100]"),
        (lambda: harmonic_mean([]), "at least one"),
        (lambda: harmonic_mean([X, torch.rand(1, 1, 8, 8)]), "same shape"),
        (lambda: harmonic_mean([X, -X]), "non-negative"),
        (lambda: harmonic_mean([X, X], eps=NAN), "eps"),
        (lambda: harmonic_mean(X), "stacked"),
        (lambda: ssim_map(X, X, data_range=0), "data_range"),
        (lambda: ssim_map(X, X, win_size=4), "win_size"),
        (lambda: structural_dissimilarity_map(X, X, scales=10), "too small"),
        (lambda: structural_dissimilarity_map(X, X, scales=0), "scales"),
    ],
)
def test_map_options_refused(call, match):
    with pytest.raises(ValueError) as info:
        call()
    assert match in str(info.value)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((_with(NAN),), ValueError, "NaN"),
        ((_with(INF),), ValueError, "infinite"),
        ((torch.empty(0, 1, 4, 4),), ValueError, "non-empty"),
        ((torch.rand(16),), ValueError, "non-empty (B, ...)"),
        (([[0.5]],), TypeError, "torch.Tensor"),
        ((X, 0.0), ValueError, "fraction"),
        ((X, NAN), ValueError, "fraction"),
        ((X, 0.1, torch.ones(1, 1, 8, 8)), ValueError, "does not match"),
        ((X, 0.1, torch.ones(2, 1, 16, 8)), ValueError, "does not match"),
        ((X, 0.1, np.ones((1, 1, 16, 16))), TypeError, "torch.Tensor"),
    ],
)
def test_top_fraction_mean_refuses_bad_inputs(args, error, match):
    with pytest.raises(error) as info:
        top_fraction_mean(*args)
    assert match in str(info.value)


# ---------------------------------------------------------------- metrics and calibration

LABELS = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
BAD_METRIC_INPUTS = [
    ("NaN map", _with(NAN), LABELS, None, ValueError, "NaN"),
    ("map above 1", X * 2, LABELS, None, ValueError, "[0, 1]"),
    ("negative map", -X, LABELS, None, ValueError, "[0, 1]"),
    ("labels not binary", X, LABELS * 2, None, ValueError, "binary"),
    ("labels NaN", X, torch.full_like(X, NAN), None, ValueError, "binary"),
    ("labels other shape", X, torch.ones(1, 1, 8, 8), None, ValueError, "shape"),
    ("mask other shape", X, LABELS, torch.ones(1, 1, 8, 8), ValueError, "broadcast"),
    ("mask not binary", X, LABELS, torch.full_like(X, 0.5), ValueError, "binary"),
    ("list maps", [0.5], [1], None, TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("metric", [best_dice, auroc, auprc], ids=["best_dice", "auroc", "auprc"])
@pytest.mark.parametrize("case", BAD_METRIC_INPUTS, ids=[c[0] for c in BAD_METRIC_INPUTS])
def test_metric_functions_refuse_bad_inputs(metric, case):
    _, maps, labels, mask, error, match = case
    with pytest.raises(error) as info:
        metric(maps, labels, mask)
    assert match in str(info.value)


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        (torch.tensor([0.1, NAN]), torch.tensor([0, 1]), "NaN"),
        (torch.rand(3), torch.tensor([0, 1]), "one value per score"),
        (torch.rand(2), torch.tensor([0, 2]), "binary"),
        (torch.rand(2, 2), torch.tensor([0, 1]), "shape (B,)"),
    ],
)
def test_image_auroc_refuses_bad_inputs(scores, labels, match):
    with pytest.raises(ValueError) as info:
        image_auroc(scores, labels)
    assert match in str(info.value)


@pytest.mark.parametrize(
    "maps, masks, kwargs, error, match",
    [
        (_with(NAN), None, {}, ValueError, "NaN"),
        (X * 3, None, {}, ValueError, "[0, 1]"),
        (-X, None, {}, ValueError, "[0, 1]"),
        (torch.rand(16), None, {}, ValueError, "(N, 1, *spatial)"),
        (torch.empty(0, 1, 4, 4), None, {}, ValueError, "non-empty"),
        ("maps", None, {}, TypeError, "torch.Tensor"),
        (X, torch.ones(1, 1, 8, 8), {}, ValueError, "must match"),
        (X, torch.ones(1, 16, 16, 1), {}, ValueError, "must match"),
        (X, torch.zeros(1, 1, 16, 16), {}, ValueError, "mask is empty"),
        (X, torch.full((1, 1, 16, 16), NAN), {}, ValueError, "masks contain NaN"),
        (X, None, {"fpr": 0.0}, ValueError, "fpr"),
        (X, None, {"fpr": NAN}, ValueError, "fpr"),
        (X, None, {"num_thresholds": 0}, ValueError, "num_thresholds"),
        (X, None, {"num_thresholds": -5}, ValueError, "num_thresholds"),
        (X, None, {"num_thresholds": 10.5}, ValueError, "num_thresholds"),
    ],
)
def test_healthy_fpr_threshold_refuses_bad_inputs(maps, masks, kwargs, error, match):
    with pytest.raises(error) as info:
        healthy_fpr_threshold(maps, masks, **kwargs)
    assert match in str(info.value)


def test_healthy_fpr_threshold_accepts_numpy():
    maps = np.linspace(0, 1, 100, dtype=np.float32).reshape(1, 1, 10, 10)
    assert healthy_fpr_threshold(maps, fpr=0.5) == pytest.approx(0.5, abs=0.011)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "img, error, match",
    [
        (_with(NAN)[0], ValueError, "NaN"),
        (_with(INF)[0], ValueError, "infinite"),
        (torch.zeros(1, 16, 16), ValueError, "constant"),
        (torch.full((1, 16, 16), 3.0), ValueError, "constant"),
        (-X[0], ValueError, "no foreground"),
        (torch.empty(1, 0, 16), ValueError, "no foreground"),
        ([[1.0, 2.0]], TypeError, "torch.Tensor or numpy.ndarray"),
        (np.array([["a", "b"]]), TypeError, "numbers"),
    ],
)
def test_foreground_percentile_scale_refuses_bad_images(img, error, match):
    with pytest.raises(error) as info:
        ForegroundPercentileScale()(img)
    assert match in str(info.value)


def test_foreground_percentile_scale_options_and_far_out_of_range_input():
    for kwargs, match in [({"percentile": 0}, "percentile"), ({"percentile": NAN}, "percentile"),
                          ({"threshold": NAN}, "threshold")]:
        with pytest.raises(ValueError, match=match):
            ForegroundPercentileScale(**kwargs)
    # intensities far outside [0, 1] (raw scanner units) are normalised, not refused
    out = ForegroundPercentileScale()(X[0] * 4000.0)
    assert 0 <= out.min() and out.max() == 1


@pytest.mark.parametrize(
    "img, error, match",
    [
        (torch.rand(16, 16), ValueError, "channel-first 2D or 3D"),
        (torch.rand(1, 1, 4, 4, 4), ValueError, "channel-first 2D or 3D"),
        (_with(NAN)[0], ValueError, "NaN"),
        (_with(INF)[0], ValueError, "infinite"),
        (torch.empty(1, 0, 16), ValueError, "empty"),
        (torch.empty(0, 16, 16), ValueError, "empty"),
        ([[1.0]], TypeError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_in_plane_resize_refuses_bad_images(img, error, match):
    with pytest.raises(error) as info:
        InPlaneResize((8, 8))(img)
    assert match in str(info.value)


def test_in_plane_resize_options():
    for kwargs, match in [({"spatial_size": (0, 8)}, "spatial_size"), ({"spatial_size": (8,)}, "spatial_size"),
                          ({"spatial_size": (8, 8), "mode": "cubic-ish"}, "cubic-ish")]:
        with pytest.raises(ValueError, match=match):
            InPlaneResize(**kwargs)
    with pytest.raises(ValueError, match="MetaTensor"):
        InPlaneResize((8, 8)).inverse(X[0])


@pytest.mark.parametrize(
    "amap, match",
    [(_with(NAN), "NaN"), (X * 3, "[0, 1]"), (-X, "[0, 1]"), (_with(INF), "NaN/inf")],
)
def test_anomaly_map_to_label_refuses_bad_maps(amap, match):
    with pytest.raises(ValueError) as info:
        AnomalyMapToLabel(0.5)(amap)
    assert match in str(info.value)


@pytest.mark.parametrize(
    "threshold, high, match",
    [(NAN, None, "threshold"), (2.0, None, "threshold"), (-0.1, None, "threshold"), (0.5, 0.2, "high_threshold"),
     (0.5, NAN, "high_threshold"), (0.5, 1.5, "high_threshold")],
)
def test_anomaly_map_to_label_thresholds(threshold, high, match):
    with pytest.raises(ValueError, match=match):
        AnomalyMapToLabel(threshold, high)


def test_valid_inputs_still_work(net):
    """The checks do not refuse what is valid: a mask of bools, a CPU generator, values at the range's edge."""
    x = _image((2, 1, 16, 16))
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    out = INFERERS["ddpm"]().detect(x, net, mask=mask, generator=torch.Generator().manual_seed(0))
    assert out.anomaly_map.shape == (2, 1, 16, 16)
    label = AnomalyMapToLabel(0.5, 0.9)(out.anomaly_map)
    assert label.dtype == torch.uint8 and int(label.max()) <= 2
