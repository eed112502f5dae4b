# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Build the healthy training set, the development evaluation set and the demo data from the offline sources.

This is a **synthetic benchmark built from real anatomy, not a clinical data set**: the training set is axial slices
of three public T1 anatomies (MNI152, ROBEX reference scan, deepmriprep template) multiplied by MONAI augmentation; the
development set paints synthetic stroke-like and tumour-like lesions, with exact masks, into the held-out Colin27 brain.
Its numbers are not comparable to BraTS/ATLAS results. Everything is deterministic from a seed and built offline.
"""

from __future__ import annotations

import os

import numpy as np
from monai.transforms import (
    Compose,
    EnsureTyped,
    MaskIntensityd,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGibbsNoised,
    ScaleIntensityRanged,
)

from monai_diffad.data.slices import extract_axial_slices, halve_resolution
from monai_diffad.data.sources import TRAIN_SOURCES, load_source_volume

__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "VALIDATION_EVERY",
    "slices_at_resolution",
    "build_training_set",
    "training_set_path",
    "ensure_training_set",
    "training_augmentation",
]

SUPPORTED_RESOLUTIONS = (64, 128)
#: Every n-th selected slice of each training source is held out for the validation loss (not for evaluation).
VALIDATION_EVERY = 10


def _check_resolution(resolution: int) -> int:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}.")
    return int(resolution)


def slices_at_resolution(name: str, resolution: int) -> dict[str, np.ndarray]:
    """Axial slices of one source at 128 x 128, or 2 x 2 average-pooled to 64 x 64.

    Args:
        name: source name (see :mod:`monai_diffad.data.sources`).
        resolution: 64 or 128.

    Returns:
        ``{"images": (N, R, R) float32 [0, 1], "masks": (N, R, R) bool, "z": (N,) int}``.
    """
    resolution = _check_resolution(resolution)
    volume = load_source_volume(name)
    out = extract_axial_slices(volume["image"], volume["mask"], size=128)
    if resolution == 64:
        out["images"], out["masks"] = halve_resolution(out["images"], out["masks"])
    return out


def training_set_path(dataset_dir: str, resolution: int) -> str:
    """Path of the cached training slices for ``resolution``."""
    return os.path.join(dataset_dir, f"train_slices_{_check_resolution(resolution)}.npz")


def build_training_set(dataset_dir: str, resolution: int = 64) -> str:
    """Cache the healthy base slices of the training sources (never Colin27) as one npz.

    Args:
        dataset_dir: output folder (created).
        resolution: 64 or 128.

    Returns:
        The npz path. Keys: ``images`` (N, R, R) float32 in [0, 1]; ``masks`` (N, R, R) uint8; ``source`` (N,) str;
        ``z`` (N,) int; ``validation`` (N,) bool, every :data:`VALIDATION_EVERY`-th slice of each source (held out
        from training for the validation loss).
    """
    images, masks, sources, zs, validation = [], [], [], [], []
    for name in TRAIN_SOURCES:
        s = slices_at_resolution(name, resolution)
        n = len(s["z"])
        images.append(s["images"])
        masks.append(s["masks"].astype(np.uint8))
        sources += [name] * n
        zs.append(s["z"])
        validation.append(np.arange(n) % VALIDATION_EVERY == VALIDATION_EVERY // 2)
    os.makedirs(dataset_dir, exist_ok=True)
    path = training_set_path(dataset_dir, resolution)
    np.savez_compressed(
        path,
        images=np.concatenate(images),
        masks=np.concatenate(masks),
        source=np.array(sources),
        z=np.concatenate(zs),
        validation=np.concatenate(validation),
    )
    return path


def ensure_training_set(dataset_dir: str, resolution: int = 64) -> str:
    """Return the cached training set path, building it first when it is missing."""
    path = training_set_path(dataset_dir, resolution)
    return path if os.path.isfile(path) else build_training_set(dataset_dir, resolution)


def training_augmentation(resolution: int = 64, keys: tuple[str, str] = ("image", "mask")) -> Compose:
    """data.md Recipe 1: MONAI augmentation that turns three anatomies into many plausible "subjects".

    Values are set for 128 x 128; at 64 x 64 the translation and the elastic grid spacing (both in pixels) are halved.

    Args:
        resolution: 64 or 128.
        keys: ``(image_key, mask_key)``; items are channel-first ``(1, R, R)`` arrays, image in [0, 1].

    Returns:
        A ``Compose`` whose output image is in [0, 1], 0 outside the (augmented) brain mask.
    """
    factor = 128 // _check_resolution(resolution)
    image_key, mask_key = keys
    both = [image_key, mask_key]
    return Compose(
        [
            EnsureTyped(both, track_meta=False),
            RandAffined(
                both,
                prob=0.8,
                rotate_range=0.21,
                scale_range=(0.1, 0.1),
                translate_range=(6 / factor, 6 / factor),
                shear_range=(0.05, 0.05),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            Rand2DElasticd(
                both,
                spacing=(24 // factor, 24 // factor),
                magnitude_range=(0.5, 2.0),
                prob=0.5,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd(image_key, degree=3, coeff_range=(0.0, 0.15), prob=0.5),
            RandGibbsNoised(image_key, prob=0.3, alpha=(0.0, 0.4)),
            RandAdjustContrastd(image_key, prob=0.5, gamma=(0.7, 1.5)),
            # Gibbs ringing and the bias field leak into the background: re-mask, then clip to [0, 1]
            MaskIntensityd(image_key, mask_key=mask_key),
            ScaleIntensityRanged(image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
