# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Store a 1 mm RAS brain volume the way a scanner would: another orientation, spacing, field of view and position.

The built-in sets are in the training geometry already; real scans are not (LPS on disk, 0.9 mm pixels, a 256 mm
field of view, the head off-centre). These functions build such scans from the packaged anatomies, with the exact
world geometry known, so tests and benchmarks can check that the geometry contract brings them back to what the
network was trained on and every output back onto the scan's grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

__all__ = ["centred_affine", "scanner_grid", "store_as_scanned", "paint_ellipsoid_lesion"]


def centred_affine(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """RAS affine of a ``shape`` grid with ``spacing`` whose centre is the world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def scanner_grid(
    extent_mm: Sequence[float],
    spacing: Sequence[float] = (0.9, 0.9, 1.0),
    axcodes: str = "LPS",
    field_of_view_mm: float = 256.0,
    offset_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of a scanner-like grid around a volume centred at the world origin.

    Args:
        extent_mm: the volume's extent; the grid covers ``field_of_view_mm`` in-plane and this extent along z.
        spacing: voxel spacing (x, y, z) in mm, along the grid's own axes.
        axcodes: orientation of the grid's voxel axes (nibabel codes, e.g. ``"LPS"``, ``"RAS"``, ``"LAS"``).
        field_of_view_mm: in-plane side of the grid.
        offset_mm: world position of the grid's centre: the anatomy appears shifted by ``-offset_mm`` in it.

    Returns:
        ``(affine (4, 4), shape (X, Y, Z))``.
    """
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    direction = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(ornt):
        direction[int(world), axis] = sign
    shape = (
        int(round(field_of_view_mm / spacing[0])),
        int(round(field_of_view_mm / spacing[1])),
        int(round(float(extent_mm[2]) / spacing[2])),
    )
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=float)
    affine[:3, 3] = np.asarray(offset_mm, dtype=float) - affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine, shape


def store_as_scanned(
    volumes: Mapping[str, np.ndarray],
    source_affine: np.ndarray,
    paths: Mapping[str, str],
    affine: np.ndarray,
    shape: Sequence[int],
) -> dict[str, str]:
    """Resample volumes onto another grid and save them as NIfTI (float32 images, uint8 masks and labels).

    Args:
        volumes: ``{name: (X, Y, Z) array}`` on the source grid; bool or integer arrays are resampled with nearest
            neighbours, float arrays bilinearly.
        source_affine: the source grid's affine.
        paths: ``{name: output path}`` for each volume.
        affine, shape: the target grid (see :func:`scanner_grid`).

    Returns:
        ``paths`` for the written volumes.
    """
    written = {}
    for name, array in volumes.items():
        discrete = array.dtype == bool or np.issubdtype(array.dtype, np.integer)
        src = MetaTensor(torch.as_tensor(array.astype(np.float32))[None], affine=torch.as_tensor(source_affine))
        out = SpatialResample(mode="nearest" if discrete else "bilinear", padding_mode="zeros")(
            src, dst_affine=torch.as_tensor(affine), spatial_size=tuple(int(s) for s in shape)
        )
        data = out[0].numpy()
        data = (data > 0.5).astype(np.uint8) if discrete else data.astype(np.float32)
        os.makedirs(os.path.dirname(os.path.abspath(paths[name])), exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), paths[name])
        written[name] = paths[name]
    return written


def paint_ellipsoid_lesion(
    image: np.ndarray,
    brain: np.ndarray,
    centre: Sequence[float],
    radii: Sequence[float],
    kind: str = "stroke",
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one ellipsoidal lesion into a normalised volume, inside the brain.

    Args:
        image: ``(X, Y, Z)`` float volume in [0, 1].
        brain: ``(X, Y, Z)`` brain mask.
        centre: voxel centre of the lesion.
        radii: semi-axes in voxels.
        kind: ``"stroke"`` (hypo-intense: 0.45 of the tissue) or ``"tumour"`` (hyper-intense: 1.15 times the brain's
            90th percentile, at most 1), as the development set's 2D lesions.

    Returns:
        ``(image with the lesion, lesion mask (X, Y, Z) bool)``.

    Raises:
        ValueError: an unknown ``kind``, or a lesion that falls outside the brain.
    """
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in image.shape], indexing="ij")
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    lesion = inside & (np.asarray(brain) > 0)
    if not lesion.any():
        raise ValueError(f"The lesion at {tuple(centre)} with radii {tuple(radii)} misses the brain.")
    out = np.array(image, dtype=np.float32, copy=True)
    if kind == "stroke":
        out[lesion] *= 0.45
    elif kind == "tumour":
        out[lesion] = min(1.0, float(np.percentile(image[brain > 0], 90)) * 1.15)
    else:
        raise ValueError(f"kind must be 'stroke' or 'tumour', got {kind!r}.")
    return out, lesion
