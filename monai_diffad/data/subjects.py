# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Pseudo-subjects made from one anatomy: smooth random 3D deformations and a scanner intensity model.

A 1 mm RAS volume (:func:`monai_diffad.data.sources.load_source_volume`) becomes a new "subject" by a seeded smooth
random deformation (a random affine composed with a low-frequency displacement field, applied to the image and its
brain mask with one sampling grid). Two uses (docs/data.md):

- the unseen-anatomy check set: Colin27 pseudo-subjects, each rendered by :func:`unseen_intensity_model` (a random
  piecewise-linear tissue-contrast remap, a 3D bias field, blur and Rician noise), a different intensity family from
  the training augmentation;
- the diversity recipe of the training set: deformed copies of each training template (:func:`deformed_subject`).

Every random draw comes from a named seed stream (:func:`stream_seeds`), so a subject depends on its stream, the
set's seed and its index only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AffineGrid,
    Compose,
    MapTransform,
    MaskIntensityd,
    RandBiasFieldd,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandRicianNoised,
    Resample,
)
from monai.utils import convert_to_dst_type
from scipy.ndimage import zoom

from monai_diffad.data.slices import (
    MaskedPercentileNormalized,
    fill_holes_per_axial_slice,
    masked_percentile_normalize,
)

__all__ = [
    "MAX_ROTATION_DEG",
    "MAX_SCALE",
    "DISPLACEMENT_MM",
    "CONTROL_SPACING_MM",
    "stream_seeds",
    "smooth_displacement",
    "random_sampling_grid",
    "deform_volume",
    "deformed_subject",
    "RandTissueContrastd",
    "unseen_intensity_model",
    "unseen_subject",
]

#: Deformation ranges of a pseudo-subject: rotation about each axis up to this many degrees,
MAX_ROTATION_DEG = 10.0
#: per-axis scale in ``1 +- MAX_SCALE``,
MAX_SCALE = 0.1
#: and a displacement field whose control points move by this standard deviation (mm) in each direction,
DISPLACEMENT_MM = 3.0
#: the control points about this many mm apart. On a brain-sized volume the field's local volume change (the
#: Jacobian determinant of ``x + u(x)``) stays within about 0.55-1.6 for 98 % of the voxels and above 0.3 everywhere:
#: shapes change between subjects, but nothing folds.
CONTROL_SPACING_MM = 32.0


def stream_seeds(stream: str, seed: int, count: int) -> list[int]:
    """``count`` 32-bit seeds of the named stream ``stream`` for the set seed ``seed``.

    Different stream names give unrelated seeds (``"unseen"`` never repeats a ``"training/mni152"`` draw), and
    seed ``i`` of a stream does not depend on ``count``.

    Args:
        stream: the stream's name.
        seed: the set's seed, ``>= 0``.
        count: how many seeds.

    Returns:
        ``count`` ints in ``[0, 2**32)``.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    entropy = [int.from_bytes(stream.encode(), "little"), int(seed)]
    return [int(s) for s in np.random.SeedSequence(entropy).generate_state(count)]


def smooth_displacement(
    shape: Sequence[int],
    rng: np.random.RandomState,
    displacement_mm: float = DISPLACEMENT_MM,
    control_spacing_mm: float = CONTROL_SPACING_MM,
) -> np.ndarray:
    """A low-frequency random 3D displacement field: Gaussian control points, cubic-spline upsampled.

    Args:
        shape: ``(X, Y, Z)`` volume shape at 1 mm.
        rng: draws the control points.
        displacement_mm: standard deviation of each control point's offset per axis, in mm (= voxels).
        control_spacing_mm: approximate distance between control points; the grid spans the volume's corners.

    Returns:
        ``(3, X, Y, Z)`` float32 displacement in voxels.
    """
    coarse_shape = [max(2, int(np.ceil(s / control_spacing_mm)) + 1) for s in shape]
    coarse = rng.normal(0.0, displacement_mm, (3, *coarse_shape))
    # the cubic spline is a tensor product: one small matrix per axis (scipy's zoom of the identity) gives the same
    # field as zoom of the whole grid, in milliseconds instead of seconds
    mx, my, mz = (zoom(np.eye(c), (s / c, 1.0), order=3) for s, c in zip(shape, coarse_shape))
    return np.einsum("xi,yj,zk,cijk->cxyz", mx, my, mz, coarse, optimize=True).astype(np.float32)


def random_sampling_grid(
    shape: Sequence[int],
    seed: int,
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_scale: float = MAX_SCALE,
    displacement_mm: float = DISPLACEMENT_MM,
    control_spacing_mm: float = CONTROL_SPACING_MM,
) -> torch.Tensor:
    """The sampling grid of one pseudo-subject: a random affine plus :func:`smooth_displacement`.

    Rotation angles are ``U(-max_rotation_deg, max_rotation_deg)`` about each axis and scales
    ``U(1 - max_scale, 1 + max_scale)`` per axis, about the volume's centre; the displacement is added to the affine
    grid so the volume is interpolated once.

    Args:
        shape: ``(X, Y, Z)`` volume shape at 1 mm.
        seed: the subject's seed; the same seed gives the same grid.
        max_rotation_deg, max_scale, displacement_mm, control_spacing_mm: the ranges (module constants).

    Returns:
        ``(4, X, Y, Z)`` float32 homogeneous grid in voxels relative to the centre, MONAI ``Resample``'s convention.
    """
    rng = np.random.RandomState(seed)
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    scales = rng.uniform(1.0 - max_scale, 1.0 + max_scale, 3)
    grid, _ = AffineGrid(rotate_params=angles.tolist(), scale_params=scales.tolist())(spatial_size=list(shape))
    if grid is None:  # only a lazy AffineGrid returns no grid
        raise RuntimeError("AffineGrid returned no grid.")
    displacement = smooth_displacement(shape, rng, displacement_mm, control_spacing_mm)
    grid = torch.as_tensor(grid, dtype=torch.float32).clone()
    grid[:3] += torch.from_numpy(displacement)
    return grid


def deform_volume(image: np.ndarray, mask: np.ndarray, grid: torch.Tensor) -> dict[str, np.ndarray]:
    """Resample a volume and its brain mask with one sampling grid, so the mask follows the anatomy.

    Args:
        image: ``(X, Y, Z)`` float in ``[0, 1]``, 0 outside the brain.
        mask: ``(X, Y, Z)`` boolean-like brain mask.
        grid: ``(4, X, Y, Z)`` from :func:`random_sampling_grid`.

    Returns:
        ``{"image": (X, Y, Z) float32 in [0, 1], 0 outside the mask, "mask": (X, Y, Z) bool}``; the mask is the
        bilinearly resampled mask at ``>= 0.5`` with its holes filled per axial slice (the slice convention).
    """
    resample = Resample(mode="bilinear", padding_mode="zeros", dtype=np.float32)
    stack = torch.from_numpy(np.stack([image, mask]).astype(np.float32))
    warped = np.asarray(resample(stack, grid=grid))
    brain = fill_holes_per_axial_slice(warped[1] >= 0.5)
    return {"image": (np.clip(warped[0], 0.0, 1.0) * brain).astype(np.float32), "mask": brain}


def deformed_subject(volume: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A training pseudo-subject: the template deformed by :func:`random_sampling_grid` and re-normalised.

    Interpolation lowers the brightest voxels a little, so the deformed volume is normalised again by its brain
    99.5th percentile (the slice convention); its intensity model is the template's.

    Args:
        volume: ``{"image": (X, Y, Z) float [0, 1], "mask": (X, Y, Z) bool}`` as the sources load.
        seed: the subject's seed.

    Returns:
        ``{"image": (X, Y, Z) float32 in [0, 1], "mask": (X, Y, Z) bool}``.
    """
    deformed = deform_volume(volume["image"], volume["mask"], random_sampling_grid(volume["image"].shape, seed))
    return {"image": masked_percentile_normalize(deformed["image"], deformed["mask"]), "mask": deformed["mask"]}


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """Random monotone piecewise-linear intensity remap with knots at brain-intensity percentiles.

    The knots sit at 0, the brain's ``percentiles`` and 1, so each segment covers a band of tissue (CSF and grey
    matter low, white matter high in T1); each segment's slope is multiplied by ``U(*slope_range)``, which changes
    the tissues' relative contrast while keeping their order. The curve maps 0 to 0 and 1 to 1.

    Args:
        keys: image keys; images are channel-first, in ``[0, 1]``.
        mask_key: key of the brain mask the percentiles are taken in.
        percentiles: inner knots as brain-intensity percentiles, increasing.
        slope_range: ``(low, high)`` slope multipliers, ``0 < low <= high``.
        prob: probability of remapping.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        percentiles: Sequence[float] = (10.0, 40.0, 70.0),
        slope_range: tuple[float, float] = (0.5, 2.0),
        prob: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if not 0 < slope_range[0] <= slope_range[1]:
            raise ValueError(f"slope_range must satisfy 0 < low <= high, got {slope_range}.")
        if list(percentiles) != sorted(percentiles) or not all(0 < p < 100 for p in percentiles):
            raise ValueError(f"percentiles must be increasing, in (0, 100), got {percentiles}.")
        self.mask_key = mask_key
        self.percentiles = tuple(float(p) for p in percentiles)
        self.slope_range = slope_range
        self._slopes = np.ones(len(self.percentiles) + 1)

    def randomize(self, data: None = None) -> None:
        super().randomize(None)
        self._slopes = self.R.uniform(*self.slope_range, len(self.percentiles) + 1)

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict[Hashable, np.ndarray | torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        mask = np.asarray(d[self.mask_key]) > 0
        for key in self.key_iterator(d):
            img = d[key]
            img_np = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            brain = img_np[np.broadcast_to(mask, img_np.shape)]
            knots = np.concatenate([[0.0], np.percentile(brain, self.percentiles), [1.0]])
            knots = np.maximum.accumulate(knots)  # a flat brain would repeat a percentile; np.interp needs order
            values = np.concatenate([[0.0], np.cumsum(self._slopes * np.diff(knots))])
            out = np.interp(img_np, knots, values / values[-1]).astype(np.float32)
            d[key] = convert_to_dst_type(out, img, dtype=img.dtype)[0]
        return d


def unseen_intensity_model(image_key: str = "image", mask_key: str = "mask") -> Compose:
    """The unseen-anatomy set's scanner model for a 3D volume (docs/data.md), deliberately unlike the training one.

    Per subject: :class:`RandTissueContrastd` (piecewise-linear tissue remap, slopes x ``U(0.5, 2)``), a 3D
    polynomial bias field (degree 3, coefficients ``U(0.05, 0.2)``), blur (sigma ``U(0.4, 1.0)`` mm per axis),
    Rician noise (sigma ``U(0, 0.04)``), then the background masked to 0 and the brain 99.5th percentile mapped
    to 1. Seed it with ``set_random_state``.

    Args:
        image_key, mask_key: keys of channel-first ``(1, X, Y, Z)`` arrays; image in ``[0, 1]``.

    Returns:
        A ``Compose`` whose output image is float32 in ``[0, 1]``, 0 outside the mask.
    """
    return Compose(
        [
            RandTissueContrastd(image_key, mask_key=mask_key),
            RandBiasFieldd(image_key, degree=3, coeff_range=(0.05, 0.2), prob=1.0),
            RandGaussianSmoothd(image_key, sigma_x=(0.4, 1.0), sigma_y=(0.4, 1.0), sigma_z=(0.4, 1.0), prob=1.0),
            RandRicianNoised(image_key, std=0.04, prob=1.0),
            MaskIntensityd(image_key, mask_key=mask_key),
            MaskedPercentileNormalized(image_key, mask_key=mask_key),
        ]
    )


def unseen_subject(volume: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """An unseen-anatomy pseudo-subject: :func:`random_sampling_grid` deformation, then :func:`unseen_intensity_model`.

    Args:
        volume: ``{"image": (X, Y, Z) float [0, 1], "mask": (X, Y, Z) bool}`` as the sources load.
        seed: the subject's seed (deformation and intensity model both follow from it).

    Returns:
        ``{"image": (X, Y, Z) float32 in [0, 1], 0 outside the mask, "mask": (X, Y, Z) bool}``.
    """
    geometry_seed, intensity_seed = stream_seeds("unseen-subject", seed, 2)
    grid = random_sampling_grid(volume["image"].shape, geometry_seed)
    deformed = deform_volume(volume["image"], volume["mask"], grid)
    render = unseen_intensity_model()
    render.set_random_state(intensity_seed)
    out = render({"image": deformed["image"][None], "mask": deformed["mask"][None]})
    return {"image": np.asarray(out["image"][0], dtype=np.float32), "mask": deformed["mask"]}
