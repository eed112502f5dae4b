# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Data conventions, synthetic lesions and set building (docs/data.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from monai_diffad.data.build import (
    at_resolution,
    build_demo_data,
    dev_set_arrays,
    save_nifti_slice,
    training_augmentation,
)
from monai_diffad.data.slices import (
    MaskedPercentileNormalized,
    crop_or_pad_2d,
    extract_axial_slices,
    fill_holes_per_axial_slice,
    halve_resolution,
    masked_percentile_normalize,
    select_axial_slices,
)
from monai_diffad.data.sources import load_source_volume, source_available
from monai_diffad.transforms.lesions import (
    LESION_SIZE_CLASSES,
    RandSyntheticLesion,
    RandSyntheticLesiond,
    ellipse_mask,
    paint_tumour_like,
    size_class_of,
    star_shape_mask,
)

torch.set_num_threads(1)

needs_colin27 = pytest.mark.skipif(
    not source_available("colin27"), reason="Colin27 needs: apt-get install mricron-data"
)


def brain_slice(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A textured elliptic "brain" slice in [0, 1] (about 8000 brain pixels at 128) and its mask, ``(1, H, W)``."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    brain = (xx / 0.75) ** 2 + (yy / 0.85) ** 2 < 1
    image = np.where(brain, 0.6 + 0.25 * np.sin(7 * xx) * np.cos(5 * yy), 0.0).astype(np.float32)
    return image[None], brain[None]


def tiny_volume() -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 44 x 30 ellipsoid "brain" with a hole (ventricle) and a bright outlier, off-centre in x."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(30), indexing="ij")
    mask = ((x - 22) / 12) ** 2 + ((y - 20) / 15) ** 2 + ((z - 15) / 12) ** 2 < 1
    image = np.where(mask, 50.0 + 0.5 * x, 0.0).astype(np.float32)
    image[22, 20, 15] = 1000.0  # outlier above p99.5: clipped to 1
    return image, mask


# ------------------------------------------------------------------ slice conventions


def test_masked_percentile_normalize_uses_brain_only():
    image, mask = tiny_volume()
    out = masked_percentile_normalize(image, mask, 99.5)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert (out[~mask] == 0).all()
    expected = np.clip(image / np.percentile(image[mask], 99.5), 0, 1)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-6)
    assert out[22, 20, 15] == 1.0


@pytest.mark.parametrize(
    "image, mask, match",
    [
        (np.ones((4, 4)), np.zeros((4, 4)), "empty"),
        (np.ones((4, 4)), np.ones((4, 5)), "same shape"),
        (np.full((4, 4), np.nan), np.ones((4, 4)), "NaN"),
    ],
)
def test_masked_percentile_normalize_errors(image, mask, match):
    with pytest.raises(ValueError, match=match):
        masked_percentile_normalize(image, mask)


def test_masked_percentile_normalized_dict_keeps_type():
    image, mask = tiny_volume()
    transform = MaskedPercentileNormalized("image", mask_key="mask")
    out_np = transform({"image": image[None], "mask": mask[None]})["image"]
    out_t = transform({"image": torch.from_numpy(image[None]), "mask": torch.from_numpy(mask[None])})["image"]
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out_np)
    with pytest.raises(ValueError, match="percentile"):
        MaskedPercentileNormalized("image", percentile=0)


def test_fill_holes_and_slice_selection():
    _, mask = tiny_volume()
    holed = mask.copy()
    holed[20:24, 18:22, 10:20] = False
    np.testing.assert_array_equal(fill_holes_per_axial_slice(holed), mask)
    areas = mask.sum(axis=(0, 1))
    z = select_axial_slices(mask, 0.4)
    np.testing.assert_array_equal(z, np.nonzero(areas >= 0.4 * areas.max())[0])
    with pytest.raises(ValueError):
        select_axial_slices(mask[..., 0])


def test_crop_or_pad_centres_on_point():
    array = np.zeros((10, 12), dtype=np.float32)
    array[3, 9] = 1.0
    out = crop_or_pad_2d(array, (3, 9), size=8)
    assert out.shape == (8, 8) and out[4, 4] == 1.0 and out.sum() == 1.0


def test_extract_axial_slices_conventions():
    image, mask = tiny_volume()
    image = masked_percentile_normalize(image, mask)
    out = extract_axial_slices(image, mask, size=32, crop_size=48)
    n = len(select_axial_slices(mask))
    assert out["images"].shape == (n, 32, 32) and out["masks"].shape == (n, 32, 32)
    assert out["images"].dtype == np.float32 and out["masks"].dtype == bool
    assert 0.0 <= out["images"].min() and out["images"].max() <= 1.0
    assert (out["images"][~out["masks"]] == 0).all()
    # centred on the brain centroid: the mask's own centroid lands in the middle of every slice
    xs, ys = np.nonzero(out["masks"][n // 2])
    assert abs(xs.mean() - 15.5) < 1.5 and abs(ys.mean() - 15.5) < 1.5
    # RAS [x, y] order is kept (no rotation): intensity rises with x like the source (50 + 0.5 x)
    mid = out["images"][n // 2]
    assert mid[20, 16] > mid[12, 16]


def test_halve_resolution_pools():
    images = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :2] = [[True, True], [False, False]]  # exactly half: kept
    masks[0, 2:, 2:] = [[True, False], [False, False]]  # a quarter: dropped
    half, half_mask = halve_resolution(images, masks)
    np.testing.assert_allclose(half[0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(half_mask[0], [[True, False], [False, False]])
    with pytest.raises(ValueError, match="even"):
        halve_resolution(np.zeros((3, 3)))


# ------------------------------------------------------------------ lesions


def test_shapes():
    disk = star_shape_mask((41, 41), (20, 20), 10.0, [0, 0, 0, 0], [0, 0, 0, 0])
    assert abs(disk.sum() - np.pi * 100) < 15
    ellipse = ellipse_mask((61, 61), (30, 30), (15, 6), 0.3)
    assert abs(ellipse.sum() - np.pi * 90) < 15
    axis_aligned = ellipse_mask((61, 61), (30, 30), (15, 6), 0.0)  # first semi-axis along array axis 0 (x)
    assert axis_aligned[44, 30] and not axis_aligned[30, 44]
    with pytest.raises(ValueError):
        ellipse_mask((8, 8), (4, 4), (0, 2), 0.0)


@pytest.mark.parametrize("lesion_type", ["stroke", "tumour"])
@pytest.mark.parametrize("size_class", [1, 2, 3])
def test_lesion_exact_mask_and_size_class(lesion_type, size_class):
    image, brain = brain_slice()
    painter = RandSyntheticLesion(lesion_type, size_class)
    painter.set_random_state(3)
    out, label = painter(image, brain)
    assert out.shape == image.shape and label.shape == image.shape and label.dtype == np.uint8
    mask = label[0] > 0
    low, high = LESION_SIZE_CLASSES[size_class]
    assert low < mask.sum() <= high and size_class_of(int(mask.sum())) == size_class
    assert (mask <= brain[0]).all()
    # exact: nothing outside the mask changes (no blur after painting)
    np.testing.assert_array_equal(out[0][~mask], image[0][~mask])
    assert painter.last_lesion_type == lesion_type and painter.last_size_class == size_class
    if lesion_type == "stroke":
        ratio = out[0][mask] / image[0][mask]
        assert np.allclose(ratio, ratio[0], atol=1e-5) and 0.3 <= ratio[0] <= 0.6
    else:
        wm = np.percentile(image[0][brain[0]], 90)
        values = np.unique(out[0][mask])
        assert len(values) <= 2 and values.max() <= 1.0  # the core value and (for larger lesions) the ring at 1.0
        assert values.min() >= min(1.0, wm * 1.05) - 1e-5


def test_tumour_ring_and_no_ring():
    image, brain = brain_slice()
    out, mask = paint_tumour_like(image[0], brain[0], (64, 64), 8.0, 1.0, 0.0, 1.1, ring_width=2)
    core = ellipse_mask(image.shape[1:], (64, 64), (8, 8), 0.0)
    ring = mask & ~core
    assert ring.any() and (out[ring] == 1.0).all()
    wm = np.percentile(image[0][brain[0]], 90)
    np.testing.assert_allclose(out[core], min(1.0, wm * 1.1), rtol=1e-6)
    _, no_ring = paint_tumour_like(image[0], brain[0], (64, 64), 2.5, 1.0, 0.0, 1.1, ring_width=0)
    np.testing.assert_array_equal(no_ring, ellipse_mask(image.shape[1:], (64, 64), (2.5, 2.5), 0.0) & brain[0])


def test_lesion_determinism_and_types():
    image, brain = brain_slice()
    a = RandSyntheticLesion("random", 0)
    b = RandSyntheticLesion("random", 0)
    a.set_random_state(7)
    b.set_random_state(7)
    for _ in range(3):
        (ia, la), (ib, lb) = a(image, brain), b(image, brain)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    b.set_random_state(8)
    assert not np.array_equal(a(image, brain)[1], b(image, brain)[1])
    out_t, label_t = a(torch.from_numpy(image), torch.from_numpy(brain))
    assert isinstance(out_t, torch.Tensor) and isinstance(label_t, torch.Tensor)


def test_lesion_dict_and_errors():
    image, brain = brain_slice()
    d = RandSyntheticLesiond("image", lesion_type="tumour", size_class=2).set_random_state(0)(
        {"image": image, "brain_mask": brain}
    )
    assert d["lesion_type"] == "tumour" and d["size_class"] == 2 and d["label"].sum() > 71
    d0 = RandSyntheticLesiond("image", prob=0.0)({"image": image, "brain_mask": brain})
    assert d0["size_class"] == 0 and d0["lesion_type"] == "none" and d0["label"].sum() == 0
    np.testing.assert_array_equal(d0["image"], image)
    with pytest.raises(ValueError):
        RandSyntheticLesion("cyst")
    with pytest.raises(ValueError):
        RandSyntheticLesion(size_class=4)
    with pytest.raises(ValueError):
        RandSyntheticLesion()(image[0], brain[0])
    tiny = np.zeros((1, 128, 128), dtype=bool)
    tiny[0, 60:66, 60:66] = True
    with pytest.raises(RuntimeError):
        RandSyntheticLesion("tumour", 3, max_tries=3)(image, tiny)


def test_lesion_pixel_scale_64():
    image, brain = brain_slice(64)
    painter = RandSyntheticLesion("stroke", 2, pixel_scale=0.5)
    painter.set_random_state(0)
    _, label = painter(image, brain)
    assert size_class_of(int(round(label.sum() * 4))) == 2


# ------------------------------------------------------------------ augmentation and set building


def test_training_augmentation_range_mask_and_seed():
    image, brain = brain_slice(64)
    item = {"image": image, "mask": brain.astype(np.float32)}
    a, b = training_augmentation(64), training_augmentation(64)
    a.set_random_state(1)
    b.set_random_state(1)
    outs = [a(dict(item)) for _ in range(4)]
    for out in outs:
        img, mask = np.asarray(out["image"]), np.asarray(out["mask"])
        assert img.shape == (1, 64, 64) and img.min() >= 0.0 and img.max() <= 1.0
        assert (img[mask == 0] == 0).all()
    np.testing.assert_array_equal(np.asarray(b(dict(item))["image"]), np.asarray(outs[0]["image"]))
    with pytest.raises(ValueError, match="resolution"):
        training_augmentation(96)


def test_save_nifti_slice_roundtrip(tmp_path):
    from monai.transforms import LoadImage

    array = np.random.RandomState(0).rand(8, 6).astype(np.float32)
    path = str(tmp_path / "a.nii.gz")
    save_nifti_slice(array, path, 1.5)
    loaded = LoadImage(image_only=True)(path)
    np.testing.assert_allclose(np.asarray(loaded), array)
    assert np.allclose(np.asarray(loaded.affine)[:2, :2], np.diag([1.5, 1.5]))


@pytest.mark.parametrize("name, n_slices", [("mni152", 106), ("robex", 86), ("deepmriprep", 106), ("colin27", 103)])
def test_source_volumes(name, n_slices):
    if not source_available(name):
        pytest.skip(f"source '{name}' is not installed (see docs/data.md)")
    volume = load_source_volume(name)
    assert volume["image"].ndim == 3 and volume["mask"].shape == volume["image"].shape
    assert volume["image"].min() == 0.0 and volume["image"].max() == 1.0
    assert (volume["image"][~volume["mask"]] == 0).all()
    assert len(select_axial_slices(volume["mask"])) == n_slices


@pytest.fixture(scope="module")
def dev_arrays():
    if not source_available("colin27"):
        pytest.skip("Colin27 needs: apt-get install mricron-data")
    return dev_set_arrays(0)


def test_dev_set_composition(dev_arrays):
    d = dev_arrays
    assert d["images"].shape == (200, 128, 128)
    assert (d["split"] == "test").sum() == 150 and (d["split"] == "validation").sum() == 50
    for cls in (1, 2, 3):
        for lesion_type in ("stroke", "tumour"):
            assert ((d["size_class"] == cls) & (d["lesion_type"] == lesion_type)).sum() == 25
    counts = d["masks"].reshape(200, -1).sum(1)
    assert all(size_class_of(int(c)) == int(s) for c, s in zip(counts, d["size_class"]))
    assert (d["masks"] <= d["brain_masks"]).all()
    free = d["split"] == "validation"
    assert len(set(d["z"][free])) == 50 and d["masks"][free].sum() == 0
    low = at_resolution(d, 64)
    assert low["images"].shape == (200, 64, 64) and (low["size_class"] == d["size_class"]).all()


@needs_colin27
def test_demo_datalist(tmp_path):
    from monai.transforms import LoadImaged

    path = build_demo_data(str(tmp_path), seed=0)
    with open(path) as f:
        datalist = json.load(f)
    assert "not a clinical data set" in datalist["description"]
    assert {it["lesion_type"] for it in datalist["test"]} == {"stroke", "tumour"}
    assert sorted(it["size_class"] for it in datalist["test"]) == [1, 2, 3, 3]
    for item in datalist["test"] + datalist["volumes"]:
        keys = ("image", "label", "brain_mask")
        loaded = LoadImaged(keys)({k: os.path.join(tmp_path, item[k]) for k in keys})
        assert loaded["image"].shape[:2] == (128, 128) and float(loaded["label"].sum()) > 0
        assert float((loaded["label"] * (1 - loaded["brain_mask"])).sum()) == 0
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp_path) for f in fs)
    assert size < 10 * 2**20
