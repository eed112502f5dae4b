# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The unseen-anatomy check set: seeded smooth deformations, its intensity model, its format (docs/data.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_diffad.data.build import NPZ_KEYS, build_unseen_set, slices_at_resolution
from monai_diffad.data.slices import masked_percentile_normalize
from monai_diffad.data.sources import source_available
from monai_diffad.data.subjects import (
    DISPLACEMENT_MM,
    RandTissueContrastd,
    deform_volume,
    deformed_subject,
    random_sampling_grid,
    smooth_displacement,
    stream_seeds,
    unseen_subject,
)
from monai_diffad.evaluate.dataset import load_evaluation_set
from monai_diffad.networks import diffusion_unet
from monai_diffad.training.check_reconstruction import main, reconstruction_report
from monai_diffad.transforms.lesions import size_class_of

torch.set_num_threads(1)


def ellipsoid_volume() -> dict[str, np.ndarray]:
    """A 40 x 44 x 30 ellipsoid "brain" with a dark core (a "ventricle"), normalised as the sources are."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(30), indexing="ij")
    r = ((x - 20) / 14) ** 2 + ((y - 22) / 16) ** 2 + ((z - 15) / 11) ** 2
    mask = r < 1
    image = np.where(mask, np.where(r < 0.15, 0.3, 0.6 + 0.3 * np.sin(x / 3.0) ** 2), 0.0)
    return {"image": masked_percentile_normalize(image, mask), "mask": mask}


# ------------------------------------------------------------------ deformation


def test_stream_seeds_are_named_and_stable():
    assert stream_seeds("unseen", 0, 3) == stream_seeds("unseen", 0, 3)
    assert stream_seeds("unseen", 0, 5)[:3] == stream_seeds("unseen", 0, 3)
    assert stream_seeds("unseen", 0, 3) != stream_seeds("training/mni152", 0, 3)
    assert stream_seeds("unseen", 0, 3) != stream_seeds("unseen", 1, 3)
    with pytest.raises(ValueError, match="seed"):
        stream_seeds("unseen", -1, 1)


def test_displacement_is_smooth_and_of_the_stated_size():
    field = smooth_displacement((181, 217, 181), np.random.RandomState(0))
    assert field.shape == (3, 181, 217, 181) and field.dtype == np.float32
    assert 0.4 * DISPLACEMENT_MM < field.std() < 1.6 * DISPLACEMENT_MM
    # low frequency: neighbouring voxels move almost alike (white noise of this size would differ by ~4 mm), and the
    # slope changes slowly (a piecewise-linear upsampling would kink at the control points)
    first = max(np.abs(np.diff(field, axis=a)).max() for a in (1, 2, 3))
    second = max(np.abs(np.diff(field, n=2, axis=a)).max() for a in (1, 2, 3))
    assert first < 0.9 and second < 0.15


def test_sampling_grid_is_seeded_and_does_not_fold():
    shape = (40, 44, 30)
    a, b, c = (random_sampling_grid(shape, s) for s in (3, 3, 4))
    assert a.shape == (4, *shape)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1.0
    # the Jacobian determinant of the mapping stays well above 0 (no folding: the anatomy stays in one piece) and
    # local volumes change by a factor of a few at most
    jac = np.stack([np.stack(np.gradient(a[i].numpy()), axis=-1) for i in range(3)], axis=-2)
    det = np.linalg.det(jac)
    assert det.min() > 0.2 and det.max() < 3.0


def test_brain_mask_follows_the_deformation():
    volume = ellipsoid_volume()
    flat = {"image": 0.8 * volume["mask"].astype(np.float32), "mask": volume["mask"]}
    out = deform_volume(flat["image"], flat["mask"], random_sampling_grid(flat["mask"].shape, 5))
    mask, image = out["mask"], out["image"]
    assert mask.dtype == bool and image.dtype == np.float32
    assert not np.array_equal(mask, volume["mask"])  # it moved
    # the image warped with the same grid: 0.8 inside the warped mask, >= 0.4 at its rim (the mask is the warped mask
    # at >= 0.5) except where hole filling closed a dent in an end slice, and 0 outside
    assert (image[~mask] == 0).all() and (image[mask] > 0).all()
    assert (image[mask] < 0.4 - 1e-6).mean() < 0.01
    assert np.median(image[mask]) == pytest.approx(0.8, abs=1e-6)


def test_deformed_subject_is_seeded_and_normalised():
    volume = ellipsoid_volume()
    a, b, c = (deformed_subject(volume, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["mask"], c["mask"])
    assert a["image"].min() == 0.0 and a["image"].max() == 1.0 and (a["image"][~a["mask"]] == 0).all()


# ------------------------------------------------------------------ intensity model


def test_tissue_contrast_is_monotone_and_changes_contrast():
    ramp = np.linspace(0, 1, 101, dtype=np.float32)[None]
    data = {"image": ramp, "mask": ramp > 0}
    a, b = RandTissueContrastd("image"), RandTissueContrastd("image")
    a.set_random_state(0)
    b.set_random_state(0)
    out = a(data)["image"][0]
    np.testing.assert_array_equal(out, b(data)["image"][0])
    assert out[0] == 0 and out[-1] == pytest.approx(1.0) and (np.diff(out) > 0).all()
    slopes = np.diff(out) / np.diff(ramp[0])
    assert slopes.max() / slopes.min() > 1.2  # not the identity nor a global scale: tissue contrasts change
    with pytest.raises(ValueError, match="slope_range"):
        RandTissueContrastd("image", slope_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="percentiles"):
        RandTissueContrastd("image", percentiles=(70, 40))


def test_unseen_subject_is_seeded_in_range_and_differs_from_a_deformed_copy():
    volume = ellipsoid_volume()
    a, b, c = (unseen_subject(volume, s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    image, mask = a["image"], a["mask"]
    assert image.dtype == np.float32 and image.min() == 0.0 and image.max() == 1.0
    assert (image[~mask] == 0).all()
    # p99.5 inside the brain maps to 1, as the development set
    assert np.percentile(image[mask], 99.5) == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------ the set


needs_colin27 = pytest.mark.skipif(
    not source_available("colin27"), reason="Colin27 needs: apt-get install mricron-data"
)


@needs_colin27
def test_unseen_set_has_the_dev_format(tmp_path):
    paths = build_unseen_set(str(tmp_path), seed=0, subjects=2, lesions_per_cell=1, lesion_free=2)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["unseen_128.npz", "unseen_64.npz"]
    d128, d64 = (dict(np.load(p)) for p in paths)
    assert set(d128) == set(NPZ_KEYS) | {"subject"} and set(d64) == set(d128)
    assert d128["images"].shape == (8, 128, 128) and d64["images"].shape == (8, 64, 64)
    assert list(d128["split"]) == ["test"] * 6 + ["validation"] * 2
    for cls in (1, 2, 3):
        for lesion_type in ("stroke", "tumour"):
            assert ((d128["size_class"] == cls) & (d128["lesion_type"] == lesion_type)).sum() == 1
    counts = d128["masks"].reshape(8, -1).sum(1)
    assert all(size_class_of(int(n)) == int(c) for n, c in zip(counts, d128["size_class"]))
    assert (d128["masks"] <= d128["brain_masks"]).all() and (d64["size_class"] == d128["size_class"]).all()
    assert d128["images"].min() >= 0 and d128["images"].max() <= 1
    assert (d128["images"][d128["brain_masks"] == 0] == 0).all()
    assert set(d128["subject"]) <= {0, 1}
    # pseudo-subjects, not Colin27's own slices
    colin = slices_at_resolution("colin27", 128)["images"]
    free = d128["images"][d128["split"] == "validation"]
    assert min(np.abs(colin - f).mean() for f in free) > 0.005
    evaluation = load_evaluation_set(paths[1])  # the evaluation command reads it unchanged
    assert evaluation.spatial_shape == (64, 64)


# ------------------------------------------------------------------ reconstruction check on any npz


@pytest.fixture
def unseen_like_npz(tmp_path):
    rng = np.random.default_rng(0)
    masks = np.zeros((7, 16, 16), dtype=np.uint8)
    masks[4:, 4:8, 4:8] = 1
    path = tmp_path / "unseen.npz"
    np.savez(
        path,
        images=rng.random((7, 16, 16)).astype(np.float32),
        masks=masks,
        brain_masks=np.ones((7, 16, 16), dtype=np.uint8),
        split=np.array(["validation"] * 4 + ["test"] * 3),
        subject=np.arange(7),
    )
    return str(path)


@pytest.fixture
def random_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(diffusion_unet().state_dict(), path)
    return str(path)


def test_reconstruction_check_on_all_healthy_slices(unseen_like_npz, random_weights):
    every = reconstruction_report(random_weights, unseen_like_npz, levels=(2,), num=None, num_lesion=0)["L=2"]
    assert set(every) == {"healthy_mse", "healthy_mse_brain", "healthy_ssim"}
    # all four lesion-free slices: the same as asking for four; two of them give other figures
    four = reconstruction_report(random_weights, unseen_like_npz, levels=(2,), num=4, num_lesion=0)["L=2"]
    two = reconstruction_report(random_weights, unseen_like_npz, levels=(2,), num=2, num_lesion=0)["L=2"]
    assert every == four and every["healthy_mse"] != two["healthy_mse"]
    with_lesions = reconstruction_report(random_weights, unseen_like_npz, levels=(2,), num=None, num_lesion=None)
    assert with_lesions["L=2"]["lesion_change_inside"] >= 0


def test_reconstruction_cli_num_all(unseen_like_npz, random_weights, capsys):
    argv = ["--weights", random_weights, "--dev-npz", unseen_like_npz, "--levels", "1", "--num", "all"]
    assert main([*argv, "--num-lesion", "0"]) == 0
    out = capsys.readouterr().out
    assert set(json.loads(out[out.index("{") :])["L=1"]) == {"healthy_mse", "healthy_mse_brain", "healthy_ssim"}
    with pytest.raises(SystemExit):
        main([*argv, "--num-lesion", "some"])
