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

from monai_diffad.data.slices import brain_centroid_xy, select_axial_slices
from monai_diffad.data.sources import TRAIN_SOURCES, load_source_volume

#: how each packaged anatomy is stored by :func:`build_scan_folders`: (spacing, orientation, field of view, offset of
#: the grid's centre from the brain's in mm); the head is never centred and the orientations differ, as in a cohort
SCANNER_GEOMETRIES: dict[str, tuple[tuple[float, float, float], str, float, tuple[float, float, float]]] = {
    "mni152": ((1.0, 1.0, 1.2), "LPS", 256.0, (18.0, -12.0, 0.0)),
    "robex": ((0.9, 0.9, 3.0), "LAS", 240.0, (-10.0, 15.0, 0.0)),
    "deepmriprep": ((1.2, 1.2, 1.2), "RAS", 230.0, (8.0, 20.0, 0.0)),
    "colin27": ((0.9, 0.9, 1.0), "LPS", 256.0, (25.0, -18.0, 0.0)),
    "colin27_healthy": ((1.0, 1.0, 1.0), "RAS", 220.0, (-6.0, 10.0, 0.0)),
}
#: lesions painted by :func:`lesion_volume`: (centre offset from the brain centroid in mm, radii in mm, kind); sizes
#: span the benchmark's strata
LESIONS = [
    ((-35, 20, 0), (12, 10, 8), "tumour"),
    ((30, -25, 4), (9, 7, 6), "stroke"),
    ((-20, -45, -6), (6, 6, 5), "stroke"),
    ((40, 30, -4), (5, 4, 4), "tumour"),
    ((5, 50, 6), (4, 4, 3), "stroke"),
]

__all__ = [
    "LESIONS",
    "SCANNER_GEOMETRIES",
    "build_scan_folders",
    "brain_centre_world",
    "centred_affine",
    "lesion_volume",
    "paint_ellipsoid_lesion",
    "scanner_grid",
    "store_as_scanned",
]


def centred_affine(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """RAS affine of a ``shape`` grid with ``spacing`` whose centre is the world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def scanner_grid(
    extent_mm: Sequence[float] | np.ndarray,
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


def lesion_volume(name: str = "colin27", z_slices: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A packaged anatomy at 1 mm RAS with the :data:`LESIONS` painted around the middle of its axial range.

    Args:
        name: a source of :mod:`monai_diffad.data.sources` (Colin27, never trained on, by default).
        z_slices: keep only this many 1 mm axial slices around the lesions (``None``: the whole volume).

    Returns:
        ``({"image", "brain_mask", "label"}, affine)``: ``(X, Y, Z)`` arrays and their centred RAS affine.
    """
    source = load_source_volume(name)
    image, brain = source["image"], source["mask"]
    selected = select_axial_slices(brain)
    mid = int(selected[len(selected) // 2])
    if z_slices is not None:
        z0 = mid - z_slices // 2
        image, brain, mid = image[..., z0 : z0 + z_slices], brain[..., z0 : z0 + z_slices], z_slices // 2
    cx, cy = brain_centroid_xy(brain)
    label = np.zeros(brain.shape, dtype=bool)
    for (dx, dy, dz), radii, kind in LESIONS:
        image, lesion = paint_ellipsoid_lesion(image, brain, (cx + dx, cy + dy, mid + dz), radii, kind)
        label |= lesion
    return {"image": image, "brain_mask": brain, "label": label}, centred_affine(image.shape)


def brain_centre_world(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position of the brain mask's in-plane centroid, at the volume's middle slice."""
    cx, cy = brain_centroid_xy(brain)
    return affine[:3, :3] @ np.array([cx, cy, (brain.shape[2] - 1) / 2]) + affine[:3, 3]


def build_scan_folders(out: str, healthy: tuple[str, ...] = TRAIN_SOURCES) -> dict[str, str]:
    """A small cohort to rehearse the "your own data" workflow on, stored as scanners store scans.

    Writes ``<out>/healthy/<name>.nii.gz`` for the healthy anatomies (the training ones: a model trained on them is
    not tested on them), with a ``<name>_brain_mask.nii.gz`` beside the last one only (the others get the contract's
    foreground mask); ``<out>/healthy_val/colin27.nii.gz``, Colin27 without lesions, to calibrate on; and
    ``<out>/patients/colin27.nii.gz`` (with its brain mask beside it) with lesions, whose masks go to
    ``<out>/labels/colin27.nii.gz``. Geometries: :data:`SCANNER_GEOMETRIES`. With four anatomies in all, the healthy
    calibration scan is the patient's own brain: an optimistic rehearsal, where a real cohort would use other
    subjects.

    Returns:
        ``{"healthy": folder, "healthy_val": folder, "patients": folder, "labels": folder}``.
    """
    folders = {k: os.path.join(out, k) for k in ("healthy", "healthy_val", "patients", "labels")}
    for i, name in enumerate(healthy):
        source = load_source_volume(name)
        affine = centred_affine(source["image"].shape)
        volumes = {"image": source["image"]}
        paths = {"image": os.path.join(folders["healthy"], f"{name}.nii.gz")}
        if i == len(healthy) - 1:
            volumes["brain_mask"] = source["mask"]
            paths["brain_mask"] = os.path.join(folders["healthy"], f"{name}_brain_mask.nii.gz")
        _store_in_scanner_geometry(name, volumes, affine, paths)
    source = load_source_volume("colin27")
    _store_in_scanner_geometry(
        "colin27_healthy", {"image": source["image"]}, centred_affine(source["image"].shape),
        {"image": os.path.join(folders["healthy_val"], "colin27.nii.gz")},
    )
    volumes, affine = lesion_volume("colin27")
    paths = {
        "image": os.path.join(folders["patients"], "colin27.nii.gz"),
        "brain_mask": os.path.join(folders["patients"], "colin27_brain_mask.nii.gz"),
        "label": os.path.join(folders["labels"], "colin27.nii.gz"),
    }
    _store_in_scanner_geometry("colin27", volumes, affine, paths)
    return folders


def _store_in_scanner_geometry(
    name: str, volumes: dict[str, np.ndarray], affine: np.ndarray, paths: dict[str, str]
) -> None:
    spacing, axcodes, fov, offset = SCANNER_GEOMETRIES[name]
    centre = brain_centre_world(volumes.get("brain_mask", volumes["image"] > 0), affine)
    extent = np.asarray(volumes["image"].shape, dtype=float)
    grid = scanner_grid(extent, spacing, axcodes, fov, (centre[0] + offset[0], centre[1] + offset[1], 0.0))
    store_as_scanned(volumes, affine, paths, *grid)
