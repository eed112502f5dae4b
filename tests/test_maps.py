# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Anomaly-map maths against scipy / skimage / numpy oracles, and both LPIPS paths (present, offline)."""

from __future__ import annotations

import os
import warnings

import lpips
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torchvision
from skimage.metrics import structural_similarity

import monai_diffad.maps.perceptual as perceptual_module
from monai_diffad.maps import (
    BACKBONE_FILES,
    PerceptualDistance,
    PerceptualFallbackWarning,
    gaussian_smooth,
    grey_closing,
    grey_dilation,
    grey_erosion,
    harmonic_mean,
    minmax_normalize,
    normalize_by_max,
    per_image_quantile,
    percentile_normalize,
    perceptual_anomaly_map,
    residual_map,
    ssim_map,
    structural_dissimilarity_map,
    structuring_element,
    symmetric_pad_indices,
)

torch.set_num_threads(1)

SHAPES = [(2, 3, 19, 23), (2, 2, 9, 11, 7)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rand(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- residual


@pytest.mark.parametrize("shape", SHAPES)
def test_residual_map_matches_numpy(shape):
    x, y = _rand(shape, 0), _rand(shape, 1)
    diff = x.numpy() - y.numpy()
    l1, l2 = residual_map(x, y, "l1"), residual_map(x, y, kind="l2")
    assert l1.shape == (shape[0], 1, *shape[2:])
    np.testing.assert_allclose(l1.numpy(), np.abs(diff).mean(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(l2.numpy(), (diff**2).mean(1, keepdims=True), rtol=1e-12)


def test_residual_map_rejects_bad_input():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        residual_map(x, torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="Available options"):
        residual_map(x, x, kind="l3")
    with pytest.raises(ValueError, match="dimensions"):
        residual_map(x[0], x[0])
    with pytest.raises(ValueError, match="NaN"):
        residual_map(x, torch.full_like(x, float("nan")))
    with pytest.raises(TypeError, match="floating"):
        residual_map(x.long(), x.long())


# ---------------------------------------------------------------- smoothing


@pytest.mark.parametrize("length,pad", [(5, 3), (4, 4), (3, 8), (1, 2)])
def test_symmetric_pad_indices_is_scipy_reflect(length, pad):
    values = np.arange(length)
    expected = np.pad(values, pad, mode="symmetric")  # numpy 'symmetric' == scipy.ndimage 'reflect'
    np.testing.assert_array_equal(values[symmetric_pad_indices(length, pad).numpy()], expected)


@pytest.mark.parametrize("shape", SHAPES + [(1, 1, 3, 40)])
@pytest.mark.parametrize("sigma", [0.5, 2.0, 7.0])
def test_gaussian_smooth_matches_scipy(shape, sigma):
    m = _rand(shape)
    expected = ndi.gaussian_filter(m.numpy(), sigma=(0, 0) + (sigma,) * (len(shape) - 2), mode="reflect")
    np.testing.assert_allclose(gaussian_smooth(m, sigma).numpy(), expected, atol=1e-12)


def test_gaussian_smooth_per_axis_sigma_truncate_and_dtype():
    m = _rand((2, 1, 16, 12, 6))
    sigmas = (1.5, 0.0, 3.0)
    expected = ndi.gaussian_filter(m.numpy(), sigma=(0, 0) + sigmas, truncate=2.5, mode="reflect")
    np.testing.assert_allclose(gaussian_smooth(m, sigmas, truncate=2.5).numpy(), expected, atol=1e-12)
    m32 = m.float()
    out32 = gaussian_smooth(m32, sigmas, truncate=2.5)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), expected, atol=1e-6)


def test_gaussian_smooth_rejects_bad_sigma():
    m = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_smooth(m, -1.0)
    with pytest.raises(ValueError, match="2 entries"):
        gaussian_smooth(m, (1.0, 1.0, 1.0))


# ---------------------------------------------------------------- morphology


def test_structuring_element_disc():
    expected = np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], bool)
    np.testing.assert_array_equal(structuring_element(5, 2, "disc").numpy(), expected)
    ball = structuring_element(5, 3, "disc")
    assert ball.shape == (5, 5, 5) and int(ball.sum()) == 33
    assert bool(structuring_element(3, 3, "square").all())


@pytest.mark.parametrize("shape", [(2, 2, 21, 17), (1, 2, 9, 11, 8)])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 13])
@pytest.mark.parametrize("footprint_shape", ["square", "disc"])
def test_grey_morphology_matches_scipy(shape, kernel_size, footprint_shape):
    m = _rand(shape, seed=kernel_size)
    footprint = structuring_element(kernel_size, len(shape) - 2, footprint_shape).numpy()
    footprint = footprint.reshape((1, 1) + footprint.shape)  # never mixes batch or channel
    for ours, reference in [
        (grey_dilation, ndi.grey_dilation),
        (grey_erosion, ndi.grey_erosion),
        (grey_closing, ndi.grey_closing),
    ]:
        expected = reference(m.numpy(), footprint=footprint, mode="nearest")
        np.testing.assert_array_equal(ours(m, kernel_size, footprint_shape).numpy(), expected)


def test_morphology_rejects_bad_options():
    m = torch.zeros(1, 1, 8, 8)
    for bad in (0, 4, 3.0, True):
        with pytest.raises(ValueError, match="odd"):
            grey_dilation(m, bad)
    with pytest.raises(ValueError, match="Available options"):
        grey_closing(m, 3, shape="diamond")
    with pytest.raises(ValueError, match="dimensions"):
        grey_erosion(torch.zeros(1, 8, 8), 3)


# ---------------------------------------------------------------- harmonic mean


def test_harmonic_mean_matches_numpy_and_accepts_stacked():
    maps = [_rand((2, 1, 8, 6), seed=s) + 0.01 for s in range(4)]
    stacked = np.stack([m.numpy() for m in maps])
    expected = len(maps) / (1.0 / stacked).sum(0)
    np.testing.assert_allclose(harmonic_mean(maps).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(harmonic_mean(torch.stack(maps)).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(harmonic_mean(maps[:1]), maps[0])


def test_harmonic_mean_zero_gives_exact_zero():
    a, b = _rand((1, 1, 5, 5, 3), 0), _rand((1, 1, 5, 5, 3), 1)
    a[0, 0, 1, 2, 0] = 0.0
    b[0, 0, 3, 3, 2] = 0.0
    b[0, 0, 0, 0, 0] = 1e-12
    out = harmonic_mean([a, b])
    assert torch.isfinite(out).all()
    assert out[0, 0, 1, 2, 0] == 0.0 and out[0, 0, 3, 3, 2] == 0.0
    assert (out > 0).sum() == out.numel() - 2
    # eps: values up to eps count as zero
    assert harmonic_mean([a, b], eps=1e-10)[0, 0, 0, 0, 0] == 0.0


def test_harmonic_mean_rejects_bad_input():
    m = torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        harmonic_mean([m, torch.ones(1, 1, 4, 5)])
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean([m, -m])
    with pytest.raises(ValueError, match="at least one"):
        harmonic_mean([])
    with pytest.raises(ValueError, match="NaN"):
        harmonic_mean([m, m * float("inf")])
    with pytest.raises(ValueError, match="stacked"):
        harmonic_mean(m)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("shape", SHAPES)
def test_max_and_minmax_normalisation_per_image(shape):
    m = _rand(shape) * torch.arange(1, shape[0] + 1, dtype=torch.float64).reshape(-1, *[1] * (len(shape) - 1))
    m[0] = 0.0  # an all-zero map stays zero
    flat = m.numpy().reshape(shape[0], -1)
    by_max = normalize_by_max(m).numpy().reshape(shape[0], -1)
    np.testing.assert_array_equal(by_max[0], 0.0)
    np.testing.assert_allclose(by_max[1:], flat[1:] / flat[1:].max(1, keepdims=True), rtol=1e-12)
    mm = minmax_normalize(m).numpy().reshape(shape[0], -1)
    np.testing.assert_array_equal(mm[0], 0.0)
    low, high = flat[1:].min(1, keepdims=True), flat[1:].max(1, keepdims=True)
    np.testing.assert_allclose(mm[1:], (flat[1:] - low) / (high - low), rtol=1e-12)


@pytest.mark.parametrize("q", [0.0, 37.5, 95.0, 100.0])
def test_percentile_normalize_matches_numpy(q):
    m = _rand((3, 1, 13, 11))
    flat = m.numpy().reshape(3, -1)
    percentile = np.percentile(flat, q, axis=1)
    np.testing.assert_allclose(per_image_quantile(m, q).numpy(), percentile, rtol=1e-12)
    expected = np.clip(flat / percentile[:, None], 0, 1).reshape(m.shape)
    np.testing.assert_allclose(percentile_normalize(m, q).numpy(), expected, rtol=1e-12)


def test_percentile_normalize_zero_percentile_has_no_nan():
    m = torch.zeros(2, 1, 10, 10)
    m[0, 0, 0, :3] = torch.tensor([0.5, 2.0, 0.0])  # 95th percentile of item 0 is 0
    out = percentile_normalize(m, 95)
    assert torch.isfinite(out).all()
    assert out[0, 0, 0, :3].tolist() == [1.0, 1.0, 0.0]
    assert out[1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile_normalize(m, 101)


# ---------------------------------------------------------------- SSIM


def test_ssim_map_matches_skimage_2d_and_3d():
    for shape in [(32, 40), (12, 14, 11)]:
        x = _rand(shape, 0)
        y = (x + 0.3 * _rand(shape, 1)).clamp(0, 1)
        _, expected = structural_similarity(
            x.numpy(), y.numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            full=True,
        )
        np.testing.assert_allclose(ssim_map(x[None, None], y[None, None])[0, 0].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("scales", [1, 3])
def test_structural_dissimilarity_map_range(scales):
    x, y = _rand((2, 3, 32, 32), 0), _rand((2, 3, 32, 32), 1)
    same, different = structural_dissimilarity_map(x, x, scales), structural_dissimilarity_map(x, y, scales)
    assert same.shape == different.shape == (2, 1, 32, 32)
    assert same.abs().max() < 1e-7
    assert different.min() >= 0 and different.max() <= 1 and different.mean() > 0.2
    with pytest.raises(ValueError, match="too small"):
        structural_dissimilarity_map(x[..., :3], y[..., :3], scales=3)


# ---------------------------------------------------------------- perceptual: shared fixtures


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a fresh warn-once registry: the real cache never matters."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert torch.hub.get_dir().startswith(str(tmp_path))
    monkeypatch.setattr(perceptual_module, "_WARNED_NETS", set())
    return tmp_path / "torch_home"


@pytest.fixture(scope="module")
def fake_squeezenet_file(tmp_path_factory):
    """A randomly initialised torchvision squeezenet1_1 state dict (plumbing only: NOT real LPIPS)."""
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    path = tmp_path_factory.mktemp("backbone") / "squeeze_random.pth"
    torch.save(state, path)
    return path, state


def _images(shape, seed):
    return _rand(shape, seed, dtype=torch.float32)


# ---------------------------------------------------------------- perceptual: offline fallback


def test_fallback_warns_once_and_is_ssim(empty_torch_home):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = PerceptualDistance(), PerceptualDistance()
    messages = [str(w.message) for w in caught if issubclass(w.category, PerceptualFallbackWarning)]
    assert len(messages) == 1
    assert BACKBONE_FILES["squeeze"] in messages[0]
    assert str(empty_torch_home / "hub" / "checkpoints") in messages[0]
    for module in (first, second):
        assert not module.is_lpips and module.kind == "ssim" and module.backbone_file is None
    assert not first.training and not any(p.requires_grad for p in first.parameters())

    x, y = _images((2, 1, 32, 32), 0), _images((2, 1, 32, 32), 1)
    same, different = first(x, x), first(x, y)
    assert same.shape == different.shape == (2, 1, 32, 32)
    assert same.abs().max() < 1e-6
    assert different.min() >= 0 and different.max() <= 1 and different.mean() > 0.1
    torch.testing.assert_close(different, structural_dissimilarity_map(x, y))


def test_fallback_input_range_3d_and_options(empty_torch_home):
    with pytest.warns(PerceptualFallbackWarning):
        module = PerceptualDistance(input_range=(-1.0, 1.0), fallback="multiscale_ssim", slice_batch_size=3)
    assert module.kind == "multiscale_ssim"
    x, y = _images((2, 1, 32, 32, 5), 0) * 2 - 1, _images((2, 1, 32, 32, 5), 1) * 2 - 1
    volume = module(x, y)
    assert volume.shape == (2, 1, 32, 32, 5)
    expected_slice = structural_dissimilarity_map((x[..., 3] + 1) / 2, (y[..., 3] + 1) / 2, scales=3)
    torch.testing.assert_close(volume[..., 3], expected_slice)
    assert PerceptualDistance(spatial=False)(x[..., 0], y[..., 0]).shape == (2, 1, 1, 1)
    with pytest.raises(FileNotFoundError, match=BACKBONE_FILES["alex"]):
        PerceptualDistance(net="alex", fallback="error")
    with pytest.raises(ValueError, match="channels"):
        module(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="input_range"):
        PerceptualDistance(input_range=(1.0, 1.0))


def test_perceptual_anomaly_map(empty_torch_home):
    with pytest.warns(PerceptualFallbackWarning):
        module = PerceptualDistance()
    x, y = _images((1, 1, 32, 32), 0), _images((1, 1, 32, 32), 1)
    raw = module(x, y)
    torch.testing.assert_close(perceptual_anomaly_map(x, y, module), gaussian_smooth(raw, 2.0).clamp(0, 1))
    torch.testing.assert_close(perceptual_anomaly_map(x, y, module, sigma=None, clip=False), raw)
    with pytest.raises(ValueError, match="spatial=True"):
        perceptual_anomaly_map(x, y, PerceptualDistance(spatial=False))


# ---------------------------------------------------------------- perceptual: backbone present


def test_backbone_path_loads_weights_into_lpips(empty_torch_home, fake_squeezenet_file):
    path, state = fake_squeezenet_file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = PerceptualDistance(net="squeeze", backbone_path=path)
    assert not caught, [str(w.message) for w in caught]
    assert module.is_lpips and module.kind == "lpips-squeeze" and module.backbone_file == str(path)
    backbone = module.lpips_model.net.state_dict()
    assert len(backbone) == len([k for k in state if k.startswith("features.")])
    for key, value in backbone.items():
        torch.testing.assert_close(value, state["features." + key.split(".", 1)[1]], rtol=0, atol=0)
    # the calibrated linear layers come from the lpips wheel, not from random init
    shipped_file = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "squeeze.pth")
    shipped = torch.load(shipped_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(module.lpips_model.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    module.train()
    assert not module.training and not module.lpips_model.training


def test_hub_cache_file_is_found(empty_torch_home, fake_squeezenet_file):
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    target = checkpoints / BACKBONE_FILES["squeeze"]
    target.write_bytes(fake_squeezenet_file[0].read_bytes())
    module = PerceptualDistance()
    assert module.is_lpips and module.backbone_file == str(target)


def test_lpips_input_mapping_slices_and_channels(empty_torch_home, fake_squeezenet_file):
    parity = PerceptualDistance(backbone_path=fake_squeezenet_file[0])
    plain = PerceptualDistance(backbone_path=fake_squeezenet_file[0], reference_double_mapping=False)
    x, y = _images((2, 1, 32, 32), 0), _images((2, 1, 32, 32), 1)
    x3, y3 = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    with torch.no_grad():
        # the references call lpips(2x - 1, 2y - 1, normalize=True): the net sees 4x - 3
        reference = parity.lpips_model(2 * x3 - 1, 2 * y3 - 1, normalize=True)
        calibrated = plain.lpips_model(x3, y3, normalize=True)
    out = parity(x, y)
    assert out.shape == (2, 1, 32, 32)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(plain(x, y), calibrated)
    assert not torch.allclose(out, plain(x, y))
    torch.testing.assert_close(parity(x3, y3), out)  # grey is repeated to 3 channels
    assert parity(x, x).abs().max() == 0 and out.min() >= 0 and out.mean() > 0

    vx, vy = _images((2, 1, 32, 32, 3), 2), _images((2, 1, 32, 32, 3), 3)
    volume = parity(vx, vy)
    assert volume.shape == (2, 1, 32, 32, 3)
    for k in range(3):
        torch.testing.assert_close(volume[..., k], parity(vx[..., k], vy[..., k]))
    image_level = PerceptualDistance(backbone_path=fake_squeezenet_file[0], spatial=False)
    assert image_level(x, y).shape == (2, 1, 1, 1) and image_level(vx, vy).shape == (2, 1, 1, 1, 1)


def test_bad_backbone_files(empty_torch_home, tmp_path, fake_squeezenet_file):
    with pytest.raises(FileNotFoundError):
        PerceptualDistance(backbone_path=tmp_path / "missing.pth")
    wrong_shapes = tmp_path / "wrong_shapes.pth"
    torch.save({**fake_squeezenet_file[1], "features.0.weight": torch.zeros(8, 3, 3, 3)}, wrong_shapes)
    with pytest.raises(ValueError, match="does not match"):
        PerceptualDistance(backbone_path=wrong_shapes)
    not_a_backbone = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, not_a_backbone)
    with pytest.raises(ValueError, match="lacks"):
        PerceptualDistance(backbone_path=not_a_backbone)


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", DEVICES)
def test_maps_follow_input_device(device, empty_torch_home, fake_squeezenet_file):
    x, y = _images((2, 1, 32, 32), 0).to(device), _images((2, 1, 32, 32), 1).to(device)
    module = PerceptualDistance(backbone_path=fake_squeezenet_file[0])
    term = perceptual_anomaly_map(x, y, module)
    residual = percentile_normalize(residual_map(x, y), 95)
    closed = grey_dilation(grey_closing(normalize_by_max(term * residual), 13), 13)
    combined = harmonic_mean([term, residual, closed])
    for out in (term, residual, closed, combined):
        assert out.device == x.device and torch.isfinite(out).all()
    cpu_module = PerceptualDistance(backbone_path=fake_squeezenet_file[0])
    torch.testing.assert_close(term.cpu(), perceptual_anomaly_map(x.cpu(), y.cpu(), cpu_module), atol=1e-5, rtol=1e-4)
