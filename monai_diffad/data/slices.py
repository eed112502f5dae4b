# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Slice conventions shared by every 2D set (docs/data.md "Conventions for every 2D set").

RAS at 1 mm, skull-stripped, normalised per 3D volume by the brain-masked 99.5th percentile, axial slices whose
brain area is at least 40 % of the volume's largest, cropped/padded to 192 x 192 around the brain centroid and
resized to 128 x 128 (``area``, 1.5 mm pixels); the 64 x 64 variant is a 2 x 2 average pool of the 128 set.
Arrays are ``[x, y]`` in RAS voxel order (axis 0 left to right, axis 1 posterior to anterior).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
from monai.transforms import Resize
from scipy.ndimage import binary_fill_holes

from monai_diffad.transforms.geometry import frame_around
from monai_diffad.transforms.intensity import MaskedPercentileNormalized, masked_percentile_normalize

__all__ = [
    "CROP_SIZE",
    "MIN_AREA_FRACTION",
    "fill_holes_per_axial_slice",
    "masked_percentile_normalize",
    "MaskedPercentileNormalized",
    "select_axial_slices",
    "brain_centroid_xy",
    "crop_or_pad_2d",
    "extract_axial_slices",
    "halve_resolution",
]

#: Field of view in mm (= voxels at 1 mm) that holds every brain (largest extent 181 mm).
CROP_SIZE = 192
#: Keep axial slices whose brain area is at least this fraction of the largest axial brain area.
MIN_AREA_FRACTION = 0.4


def fill_holes_per_axial_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a 3D brain mask slice by slice along z, so the ventricles count as brain.

    Args:
        mask: ``(X, Y, Z)`` boolean-like array.

    Returns:
        ``(X, Y, Z)`` bool array.

    Raises:
        ValueError: when ``mask`` is not 3D.
    """
    if mask.ndim != 3:
        raise ValueError(f"Expected a 3D (X, Y, Z) mask, got shape {mask.shape}.")
    filled = np.empty(mask.shape, dtype=bool)
    for z in range(mask.shape[2]):
        filled[..., z] = binary_fill_holes(mask[..., z] > 0)
    return filled


def select_axial_slices(mask: np.ndarray, min_area_fraction: float = MIN_AREA_FRACTION) -> np.ndarray:
    """Indices z of the axial slices whose brain area is at least ``min_area_fraction`` of the largest one.

    Args:
        mask: ``(X, Y, Z)`` boolean-like brain mask.
        min_area_fraction: in ``[0, 1]``.

    Returns:
        Sorted int array of z indices.

    Raises:
        ValueError: not 3D, empty mask, or fraction out of range.
    """
    if mask.ndim != 3:
        raise ValueError(f"Expected a 3D (X, Y, Z) mask, got shape {mask.shape}.")
    if not 0 <= min_area_fraction <= 1:
        raise ValueError(f"min_area_fraction must be in [0, 1], got {min_area_fraction}.")
    areas = (np.asarray(mask) > 0).sum(axis=(0, 1))
    if areas.max() == 0:
        raise ValueError("The brain mask is empty.")
    return np.nonzero(areas >= min_area_fraction * areas.max())[0]


def brain_centroid_xy(mask: np.ndarray) -> tuple[int, int]:
    """Rounded (x, y) centroid of a 3D brain mask, the centre of every slice's crop."""
    xs, ys, _ = np.nonzero(np.asarray(mask) > 0)
    if xs.size == 0:
        raise ValueError("The brain mask is empty.")
    return int(round(xs.mean())), int(round(ys.mean()))


def crop_or_pad_2d(array: np.ndarray, center: Sequence[int], size: int = CROP_SIZE) -> np.ndarray:
    """Crop or zero-pad the first two axes of ``array`` to ``size x size`` centred on ``center``.

    The frame is the geometry contract's (:func:`monai_diffad.transforms.geometry.frame_around`), so the built-in
    slices and a user's scans are framed alike; MONAI's ``ResizeWithPadOrCrop`` centres on the image's centre, not
    on a given point.

    Args:
        array: ``(X, Y, ...)`` array.
        center: ``(cx, cy)`` voxel indices that land at ``(size // 2, size // 2)``.
        size: output side length.

    Returns:
        ``(size, size, ...)`` array of ``array``'s dtype.
    """
    pads, crops = frame_around(center, (size, size), array.shape[:2])
    padded = np.pad(array, pads + [(0, 0)] * (array.ndim - 2))
    return padded[crops[0], crops[1]]


def extract_axial_slices(
    image: np.ndarray,
    mask: np.ndarray,
    size: int = 128,
    crop_size: int = CROP_SIZE,
    min_area_fraction: float = MIN_AREA_FRACTION,
) -> dict[str, np.ndarray]:
    """Turn a normalised 1 mm RAS volume into the 2D slice set.

    Args:
        image: ``(X, Y, Z)`` float volume in ``[0, 1]``, 0 outside the brain.
        mask: ``(X, Y, Z)`` brain mask.
        size: output side (128: 1.5 mm pixels from a 192 mm field of view).
        crop_size: field of view in voxels around the brain centroid.
        min_area_fraction: slice selection threshold.

    Returns:
        ``{"images": (N, size, size) float32 in [0, 1] (0 outside the mask), "masks": (N, size, size) bool,
        "z": (N,) int slice indices}``.

    Raises:
        ValueError: shapes differ or are not 3D.
    """
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be the same 3D shape.")
    z = select_axial_slices(mask, min_area_fraction)
    center = brain_centroid_xy(mask)
    img = crop_or_pad_2d(np.asarray(image, dtype=np.float32)[..., z], center, crop_size)
    msk = crop_or_pad_2d((np.asarray(mask) > 0)[..., z].astype(np.float32), center, crop_size)
    # the slices act as channels so one Resize call handles the whole stack; MONAI annotates Resize's input as a
    # tensor, but it documents and converts a channel-first numpy array too
    img_resized = Resize((size, size), mode="area")(np.moveaxis(img, -1, 0))  # type: ignore[arg-type]
    msk_resized = Resize((size, size), mode="bilinear")(np.moveaxis(msk, -1, 0))  # type: ignore[arg-type]
    img, msk = np.asarray(img_resized, dtype=np.float32), np.asarray(msk_resized) >= 0.5
    return {"images": np.clip(img, 0.0, 1.0) * msk, "masks": msk, "z": z}


# masks come back pooled exactly when they are given
@overload
def halve_resolution(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def halve_resolution(images: np.ndarray, masks: None = None) -> tuple[np.ndarray, None]: ...
def halve_resolution(images: np.ndarray, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """2 x 2 average pooling of ``(..., H, W)`` stacks: the 64 x 64 variant of the 128 x 128 set.

    Args:
        images: ``(..., H, W)`` with even ``H`` and ``W``.
        masks: optional ``(..., H, W)`` boolean-like masks, average-pooled and kept at ``>= 0.5``.

    Returns:
        ``(images_half float32, masks_half bool or None)``.

    Raises:
        ValueError: odd spatial size.
    """
    h, w = images.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"Spatial size must be even to halve, got {(h, w)}.")
    def pool(a: np.ndarray) -> np.ndarray:
        # MONAI's Resize(mode="area") gives these values up to float rounding (6e-8), which would change the bytes
        # of the cached sets that the committed reports' checksums name
        a = np.asarray(a, dtype=np.float32)
        return a.reshape(*a.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))

    return pool(images), None if masks is None else pool(masks) >= 0.5
