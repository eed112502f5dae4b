# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Build the healthy training set, the development and unseen-anatomy evaluation sets and the demo data offline.

This is a **synthetic benchmark built from real anatomy, not a clinical data set**: the training set is axial slices
of three public T1 anatomies (MNI152, ROBEX reference scan, deepmriprep template) multiplied by MONAI augmentation; the
development set paints synthetic stroke-like and tumour-like lesions, with exact masks, into the held-out Colin27 brain;
the unseen-anatomy set paints them the same way into deformed, re-rendered Colin27 pseudo-subjects
(:mod:`monai_diffad.data.subjects`). Its numbers are not comparable to BraTS/ATLAS results. Everything is deterministic
from a seed and built offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import (
    Compose,
    EnsureTyped,
    MaskIntensityd,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandGibbsNoised,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    Resize,
    ScaleIntensityRanged,
)
from monai.utils import look_up_option
from scipy.ndimage import distance_transform_edt

from monai_diffad.data.slices import (
    brain_centroid_xy,
    crop_or_pad_2d,
    extract_axial_slices,
    halve_resolution,
    select_axial_slices,
)
from monai_diffad.data.sources import TRAIN_SOURCES, load_source_volume
from monai_diffad.data.subjects import deformed_subject, stream_seeds, unseen_subject
from monai_diffad.transforms.lesions import (
    LESION_SIZE_CLASSES,
    LESION_TYPES,
    SIZE_CLASS_NAMES,
    RandSyntheticLesion,
    paint_tumour_like,
)

__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "VALIDATION_EVERY",
    "AUGMENTATION_RECIPES",
    "INTENSITY_STRENGTHS",
    "volume_slices",
    "slices_at_resolution",
    "build_training_set",
    "training_set_path",
    "ensure_training_set",
    "intensity_augmentation",
    "training_augmentation",
    "DEV_SOURCE",
    "UNSEEN_SUBJECTS",
    "SYNTHETIC_NOTE",
    "save_nifti_slice",
    "lesion_set_arrays",
    "dev_set_arrays",
    "unseen_set_arrays",
    "at_resolution",
    "NPZ_KEYS",
    "build_dev_set",
    "build_unseen_set",
    "build_demo_data",
]

SUPPORTED_RESOLUTIONS = (64, 128)
#: Every n-th selected slice of each training source is held out for the validation loss (not for evaluation).
VALIDATION_EVERY = 10


def _check_resolution(resolution: int) -> int:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}.")
    return int(resolution)


def volume_slices(volume: Mapping[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Axial slices of a normalised 1 mm RAS volume at 128 x 128, or 2 x 2 average-pooled to 64 x 64.

    Args:
        volume: ``{"image": (X, Y, Z) float [0, 1], "mask": (X, Y, Z) bool}`` (a loaded source or a pseudo-subject).
        resolution: 64 or 128.

    Returns:
        ``{"images": (N, R, R) float32 [0, 1], "masks": (N, R, R) bool, "z": (N,) int}``.
    """
    resolution = _check_resolution(resolution)
    out = extract_axial_slices(volume["image"], volume["mask"], size=128)
    if resolution == 64:
        out["images"], out["masks"] = halve_resolution(out["images"], out["masks"])
    return out


def slices_at_resolution(name: str, resolution: int) -> dict[str, np.ndarray]:
    """:func:`volume_slices` of the source ``name`` (see :mod:`monai_diffad.data.sources`)."""
    return volume_slices(load_source_volume(name), resolution)


def training_set_path(dataset_dir: str, resolution: int, synthetic_subjects: int = 0, seed: int = 0) -> str:
    """Path of the cached training slices: ``train_slices_R.npz``, or ``train_slices_R_kK[_sS].npz`` with
    ``K`` synthetic subjects per template (``_sS`` for a seed other than 0)."""
    name = f"train_slices_{_check_resolution(resolution)}"
    if synthetic_subjects:
        name += f"_k{synthetic_subjects}" + (f"_s{seed}" if seed else "")
    return os.path.join(dataset_dir, name + ".npz")


def _training_subjects(name: str, synthetic_subjects: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """The template ``name`` itself, then ``synthetic_subjects`` deformed copies (one volume in memory at a time)."""
    volume = load_source_volume(name)
    yield volume
    for subject_seed in stream_seeds(f"training/{name}", seed, synthetic_subjects):
        yield deformed_subject(volume, subject_seed)


def build_training_set(dataset_dir: str, resolution: int = 64, synthetic_subjects: int = 0, seed: int = 0) -> str:
    """Cache the healthy base slices of the training sources (never Colin27) as one npz.

    Args:
        dataset_dir: output folder (created).
        resolution: 64 or 128.
        synthetic_subjects: ``K`` deformed copies of each template added after it (docs/data.md "Diversity
            recipe"); 0 builds the set of the three templates alone.
        seed: seed of the copies' deformations (unused when ``synthetic_subjects`` is 0).

    Returns:
        The npz path (:func:`training_set_path`). Keys: ``images`` (N, R, R) float32 in [0, 1]; ``masks``
        (N, R, R) uint8; ``source`` (N,) str; ``z`` (N,) int; ``validation`` (N,) bool, every
        :data:`VALIDATION_EVERY`-th slice of each source and subject (held out from training for the validation
        loss); with synthetic subjects also ``subject`` (N,) int, 0 for the template and 1..K for its copies.
    """
    if synthetic_subjects < 0:
        raise ValueError(f"synthetic_subjects must be >= 0, got {synthetic_subjects}.")
    images, masks, sources, zs, validation, subjects = [], [], [], [], [], []
    for name in TRAIN_SOURCES:
        for k, volume in enumerate(_training_subjects(name, synthetic_subjects, seed)):
            s = volume_slices(volume, resolution)
            n = len(s["z"])
            images.append(s["images"])
            masks.append(s["masks"].astype(np.uint8))
            sources += [name] * n
            zs.append(s["z"])
            validation.append(np.arange(n) % VALIDATION_EVERY == VALIDATION_EVERY // 2)
            subjects.append(np.full(n, k))
    arrays = {
        "images": np.concatenate(images),
        "masks": np.concatenate(masks),
        "source": np.array(sources),
        "z": np.concatenate(zs),
        "validation": np.concatenate(validation),
    }
    if synthetic_subjects:  # the templates-only set keeps exactly its published keys
        arrays["subject"] = np.concatenate(subjects)
    os.makedirs(dataset_dir, exist_ok=True)
    path = training_set_path(dataset_dir, resolution, synthetic_subjects, seed)
    np.savez_compressed(path, **arrays)
    return path


def ensure_training_set(dataset_dir: str, resolution: int = 64, synthetic_subjects: int = 0, seed: int = 0) -> str:
    """Return the cached training set path, building it first when it is missing."""
    path = training_set_path(dataset_dir, resolution, synthetic_subjects, seed)
    return path if os.path.isfile(path) else build_training_set(dataset_dir, resolution, synthetic_subjects, seed)


#: ``recipe`` values of :func:`training_augmentation`.
AUGMENTATION_RECIPES = ("default", "mild", "diverse")

#: Strengths of :func:`intensity_augmentation`: bias-field coefficient bound, gamma range, contrast factor bound,
#: brightness offset bound (0: no brightness step) and noise sigma bound. "mild" keeps Recipe 1's bias field and
#: gamma and adds weak contrast, blur and noise; it has no brightness step.
INTENSITY_STRENGTHS: dict[str, dict[str, Any]] = {
    "diverse": {"bias": 0.3, "gamma": (0.5, 2.0), "contrast": 0.25, "brightness": 0.1, "noise": 0.03},
    "mild": {"bias": 0.15, "gamma": (0.7, 1.5), "contrast": 0.15, "brightness": 0.0, "noise": 0.015},
}


def intensity_augmentation(keys: tuple[str, str] = ("image", "mask"), strength: str = "diverse") -> Compose:
    """docs/data.md "Diversity recipe": intensity changes between scanners, for 2D training slices.

    Each with probability 0.5 (blur 0.3), in this order: a polynomial bias field (degree 3, coefficients
    ``U(0, bias)``), gamma ``U(*gamma)``, contrast (scaled by ``1 + U(-contrast, contrast)`` about the slice mean),
    brightness (shifted by ``U(-brightness, brightness)``; left out when 0), blur (sigma ``U(0.25, 0.6)`` pixels)
    and Gaussian noise (sigma ``U(0, noise)``); then the background is masked back to 0 and the image clipped to
    [0, 1]. The values of each ``strength`` are in :data:`INTENSITY_STRENGTHS`: "diverse" is bias 0.3, gamma
    (0.5, 2), contrast 0.25, brightness 0.1, noise 0.03; "mild" is bias 0.15, gamma (0.7, 1.5), contrast 0.15, no
    brightness, noise 0.015. The unseen-anatomy set renders its subjects with another family
    (:func:`monai_diffad.data.subjects.unseen_intensity_model`).

    Args:
        keys: ``(image_key, mask_key)``; items are channel-first ``(1, H, W)``, image in [0, 1].
        strength: a key of :data:`INTENSITY_STRENGTHS`.

    Returns:
        A ``Compose`` whose output image is in [0, 1], 0 where the mask is 0.
    """
    image_key, mask_key = keys
    values = INTENSITY_STRENGTHS[look_up_option(strength, tuple(INTENSITY_STRENGTHS))]
    shift = values["brightness"]
    brightness = [RandShiftIntensityd(image_key, prob=0.5, offsets=shift)] if shift else []
    return Compose(
        [
            RandBiasFieldd(image_key, degree=3, coeff_range=(0.0, values["bias"]), prob=0.5),
            RandAdjustContrastd(image_key, prob=0.5, gamma=values["gamma"]),
            RandScaleIntensityFixedMeand(image_key, prob=0.5, factors=values["contrast"]),
            *brightness,
            RandGaussianSmoothd(image_key, sigma_x=(0.25, 0.6), sigma_y=(0.25, 0.6), prob=0.3),
            RandGaussianNoised(image_key, prob=0.5, std=values["noise"]),
            # every step above also changes the background: re-mask, then clip to [0, 1]
            MaskIntensityd(image_key, mask_key=mask_key),
            ScaleIntensityRanged(image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


def training_augmentation(
    resolution: int = 64, keys: tuple[str, str] = ("image", "mask"), recipe: str = "default"
) -> Compose:
    """docs/data.md Recipe 1: MONAI augmentation that turns three anatomies into many plausible "subjects".

    Values are set for 128 x 128; at 64 x 64 the translation and the elastic grid spacing (both in pixels) are halved.
    ``recipe="mild"`` or ``"diverse"`` keeps the spatial steps and Gibbs ringing and replaces the bias field and
    contrast steps by :func:`intensity_augmentation` of that strength (docs/data.md "Diversity recipe").

    Args:
        resolution: 64 or 128.
        keys: ``(image_key, mask_key)``; items are channel-first ``(1, R, R)`` arrays, image in [0, 1].
        recipe: one of :data:`AUGMENTATION_RECIPES`.

    Returns:
        A ``Compose`` whose output image is in [0, 1], 0 outside the (augmented) brain mask.
    """
    factor = 128 // _check_resolution(resolution)
    recipe = look_up_option(recipe, AUGMENTATION_RECIPES)
    image_key, mask_key = keys
    both = [image_key, mask_key]
    spatial = [
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
    ]
    gibbs = RandGibbsNoised(image_key, prob=0.3, alpha=(0.0, 0.4))
    if recipe in INTENSITY_STRENGTHS:
        return Compose([*spatial, gibbs, intensity_augmentation(keys, strength=recipe)])
    return Compose(
        [
            *spatial,
            RandBiasFieldd(image_key, degree=3, coeff_range=(0.0, 0.15), prob=0.5),
            gibbs,
            RandAdjustContrastd(image_key, prob=0.5, gamma=(0.7, 1.5)),
            # Gibbs ringing and the bias field leak into the background: re-mask, then clip to [0, 1]
            MaskIntensityd(image_key, mask_key=mask_key),
            ScaleIntensityRanged(image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# Development evaluation set (docs/data.md Recipe 2) and demo data
# ---------------------------------------------------------------------------------------------------------------

#: Lesion slices per (lesion type, size class) and lesion-free slices of the development set.
DEV_LESIONS_PER_CELL = 25
DEV_LESION_FREE = 50
DEV_SOURCE = "colin27"
#: Colin27 pseudo-subjects of the unseen-anatomy check set (about 100 base slices each).
UNSEEN_SUBJECTS = 8
SYNTHETIC_NOTE = (
    "Synthetic benchmark built from real anatomy (Colin27, held out from training) with painted stroke-like and "
    "tumour-like lesions and exact masks; not a clinical data set, not comparable to BraTS/ATLAS results."
)


def _pixel_spacing(resolution: int) -> float:
    """mm per pixel: a 192 mm field of view over ``resolution`` pixels."""
    return 192.0 / resolution


def save_nifti_slice(array: np.ndarray, path: str, spacing: float | Sequence[float], dtype: type = np.float32) -> None:
    """Save a 2D ``[x, y]`` (or 3D ``[x, y, z]``) RAS array as NIfTI with the given voxel spacing in mm."""
    # one value per axis from a sequence or array, else one value for all three (np.isscalar does not narrow types)
    spacing_xyz = [float(s) for s in spacing] if isinstance(spacing, (Sequence, np.ndarray)) else [float(spacing)] * 3
    affine = np.diag([*spacing_xyz[:3], 1.0])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), path)


def lesion_set_arrays(
    base: Mapping[str, np.ndarray],
    layout_seed: int,
    lesion_seeds: Sequence[int],
    lesions_per_cell: int = DEV_LESIONS_PER_CELL,
    lesion_free: int = DEV_LESION_FREE,
) -> dict[str, np.ndarray]:
    """Paint docs/data.md Recipe 2's lesions into healthy 128 x 128 base slices: one lesion per lesion slice.

    Per size class, ``lesions_per_cell`` stroke-like and as many tumour-like lesions, in an order shuffled by
    ``layout_seed``; the lesion slices' bases cycle through random permutations of all base slices; the
    ``lesion_free`` lesion-free slices are distinct base slices. Lesion ``i`` is drawn with ``lesion_seeds[i]``,
    so items do not depend on each other.

    Args:
        base: ``images`` (N, 128, 128) float [0, 1], ``masks`` (N, 128, 128) brain masks, ``z`` (N,) and any
            other per-slice arrays (N,), which are carried to the items (e.g. ``subject``).
        layout_seed: seeds the order of the cells and the choice of base slices.
        lesion_seeds: one seed per lesion slice (``6 * lesions_per_cell``), each in ``[0, 2**32)``.
        lesions_per_cell: lesion slices per (lesion type, size class).
        lesion_free: lesion-free slices, at most N.

    Returns:
        ``images`` (M, 128, 128) float32 [0, 1]; ``masks`` (M, 128, 128) uint8 lesion masks; ``brain_masks``
        uint8; ``size_class`` (M,) int (0 none, 1 small, 2 medium, 3 large); ``lesion_type`` (M,) str
        (``stroke``/``tumour``/``none``); ``split`` (M,) str (``test`` for the lesion slices first, then
        ``validation`` for the lesion-free ones); and ``z`` and the other per-slice arrays of each item's base.
    """
    n_base = len(base["z"])
    rng = np.random.RandomState(layout_seed)
    cells = [(t, c) for c in LESION_SIZE_CLASSES for t in LESION_TYPES for _ in range(lesions_per_cell)]
    if len(lesion_seeds) != len(cells):
        raise ValueError(f"Expected one lesion seed per lesion slice ({len(cells)}), got {len(lesion_seeds)}.")
    cells = [cells[i] for i in rng.permutation(len(cells))]
    lesion_bases = np.concatenate([rng.permutation(n_base) for _ in range(-(-len(cells) // n_base))])[: len(cells)]
    free_bases = np.sort(rng.choice(n_base, lesion_free, replace=False))
    images, masks, classes, types, bases = [], [], [], [], []
    for (lesion_type, size_class), b, lesion_seed in zip(cells, lesion_bases, lesion_seeds):
        painter = RandSyntheticLesion(lesion_type, size_class)
        painter.set_random_state(lesion_seed)
        image, label = painter(base["images"][b][None], base["masks"][b][None])
        images.append(image[0])
        masks.append(label[0])
        classes.append(size_class)
        types.append(lesion_type)
        bases.append(b)
    for b in free_bases:
        images.append(base["images"][b])
        masks.append(np.zeros_like(base["masks"][b], dtype=np.uint8))
        classes.append(0)
        types.append("none")
        bases.append(b)
    bases_arr = np.asarray(bases)
    per_slice = {k: v[bases_arr] for k, v in base.items() if k not in ("images", "masks")}
    return {
        "images": np.stack(images).astype(np.float32),
        "masks": np.stack(masks).astype(np.uint8),
        "brain_masks": base["masks"][bases_arr].astype(np.uint8),
        "size_class": np.asarray(classes, dtype=np.int64),
        "lesion_type": np.asarray(types),
        **per_slice,
        "split": np.asarray(["test"] * len(cells) + ["validation"] * lesion_free),
    }


def dev_set_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Generate the development set at 128 x 128: 150 lesion slices and 50 lesion-free slices of Colin27.

    :func:`lesion_set_arrays` on the 103 Colin27 slices (so the lesion slices' bases cycle through two
    permutations), with the layout seed ``seed`` and lesion ``i`` drawn with the seed ``seed * 100003 + i``.

    Args:
        seed: the set's seed (the published set uses 0).

    Returns:
        :func:`lesion_set_arrays`'s arrays for 200 items; ``z`` is the Colin27 slice index.
    """
    n_lesions = len(LESION_TYPES) * len(LESION_SIZE_CLASSES) * DEV_LESIONS_PER_CELL
    lesion_seeds = [seed * 100003 + i for i in range(n_lesions)]
    return lesion_set_arrays(slices_at_resolution(DEV_SOURCE, 128), seed, lesion_seeds)


def unseen_set_arrays(
    seed: int = 0,
    subjects: int = UNSEEN_SUBJECTS,
    lesions_per_cell: int = DEV_LESIONS_PER_CELL,
    lesion_free: int = DEV_LESION_FREE,
) -> dict[str, np.ndarray]:
    """Generate the unseen-anatomy check set at 128 x 128 (docs/data.md "Unseen-anatomy check set").

    ``subjects`` Colin27 pseudo-subjects (:func:`monai_diffad.data.subjects.unseen_subject`: a smooth random 3D
    deformation and another intensity model than the development set's), sliced by the slice conventions and
    pooled, then :func:`lesion_set_arrays`. Subjects, layout and lesions draw from the ``"unseen"`` seed streams,
    never from the development set's seeds.

    Args:
        seed: the set's seed.
        subjects: number of pseudo-subjects.
        lesions_per_cell: lesion slices per (lesion type, size class); the published set uses 25.
        lesion_free: lesion-free slices; the published set uses 50.

    Returns:
        :func:`lesion_set_arrays`'s arrays, plus ``subject`` (M,) int, the item's pseudo-subject; ``z`` is the slice
        index in that subject's volume.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}.")
    volume = load_source_volume(DEV_SOURCE)
    pools = []
    for k, subject_seed in enumerate(stream_seeds("unseen", seed, subjects)):
        pool = volume_slices(unseen_subject(volume, subject_seed), 128)
        pools.append({**pool, "subject": np.full(len(pool["z"]), k)})
    base = {key: np.concatenate([p[key] for p in pools]) for key in pools[0]}
    n_lesions = len(LESION_TYPES) * len(LESION_SIZE_CLASSES) * lesions_per_cell
    (layout_seed,) = stream_seeds("unseen-layout", seed, 1)
    lesion_seeds = stream_seeds("unseen-lesions", seed, n_lesions)
    return lesion_set_arrays(base, layout_seed, lesion_seeds, lesions_per_cell, lesion_free)


def at_resolution(arrays: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """The 64 x 64 variant of a 128 x 128 set (2 x 2 pooling; masks kept at >= 0.5; size classes from 128)."""
    if _check_resolution(resolution) == 128:
        return dict(arrays)
    out = dict(arrays)
    out["images"], lesion = halve_resolution(arrays["images"], arrays["masks"])
    _, brain = halve_resolution(arrays["images"], arrays["brain_masks"])
    out["masks"], out["brain_masks"] = lesion.astype(np.uint8), brain.astype(np.uint8)
    return out


def _write_items(arrays: dict[str, np.ndarray], root: str, folder: str, resolution: int) -> list[dict[str, Any]]:
    """Write each slice's image/label/brain mask as NIfTI under ``root/folder`` and return datalist items (relative)."""
    spacing = _pixel_spacing(resolution)
    items = []
    for i in range(len(arrays["images"])):
        index = int(arrays["index"][i]) if "index" in arrays else i  # the item's index in the development set
        name = f"colin27_z{int(arrays['z'][i]):03d}_{index:03d}_{arrays['lesion_type'][i]}"
        item: dict[str, Any] = {}
        for key, array_key, dtype in (
            ("image", "images", np.float32),
            ("label", "masks", np.uint8),
            ("brain_mask", "brain_masks", np.uint8),
        ):
            rel = os.path.join(folder, key + "s" if key != "brain_mask" else "brain_masks", f"{name}.nii.gz")
            save_nifti_slice(arrays[array_key][i], os.path.join(root, rel), spacing, dtype)
            item[key] = rel
        item["size_class"] = int(arrays["size_class"][i])
        item["lesion_type"] = str(arrays["lesion_type"][i])
        items.append(item)
    return items


def _write_training_items(dataset_dir: str, resolution: int) -> list[dict[str, Any]]:
    """NIfTI copies of the healthy training slices, for the datalist's ``training`` list."""
    with np.load(ensure_training_set(dataset_dir, resolution)) as npz:
        data = dict(npz)  # one read per array, not one per slice
    spacing = _pixel_spacing(resolution)
    items = []
    for i in range(len(data["images"])):
        name = f"{data['source'][i]}_z{int(data['z'][i]):03d}"
        item: dict[str, Any] = {}
        for key, array_key, dtype in (("image", "images", np.float32), ("brain_mask", "masks", np.uint8)):
            rel = os.path.join(f"train_{resolution}", key + "s" if key == "image" else "brain_masks", f"{name}.nii.gz")
            save_nifti_slice(data[array_key][i], os.path.join(dataset_dir, rel), spacing, dtype)
            item[key] = rel
        item["source"] = str(data["source"][i])
        item["holdout"] = bool(data["validation"][i])  # held out from training for the validation loss
        items.append(item)
    return items


#: Arrays of the evaluation sets' npz exports (``python -m monai_diffad.evaluate --data``).
NPZ_KEYS = ("images", "masks", "brain_masks", "size_class", "lesion_type", "split", "z")


def _save_npz_exports(arrays128: Mapping[str, np.ndarray], out_dir: str, prefix: str, keys: Sequence[str]) -> list[str]:
    """Write ``prefix_128.npz`` and its pooled ``prefix_64.npz`` (:func:`at_resolution`) with ``keys``; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for r in SUPPORTED_RESOLUTIONS:
        arrays = at_resolution(dict(arrays128), r)
        paths.append(os.path.join(out_dir, f"{prefix}_{r}.npz"))
        np.savez_compressed(paths[-1], **{k: arrays[k] for k in keys})
    return paths


def build_dev_set(out_dir: str, resolution: int = 128, seed: int = 0) -> str:
    """Write the development set as NIfTI slices, a decathlon-style datalist and npz exports at 128 and 64.

    Files (``R`` = ``resolution``): ``dev_R/{images,labels,brain_masks}/*.nii.gz``, ``train_R/...`` (the healthy
    training slices), ``datalist_R.json`` with ``training`` (healthy training slices), ``validation`` (the 50
    lesion-free Colin27 slices, for threshold calibration and the false-positive rate) and ``test`` (the 150 lesion
    slices); each dev item has ``image``, ``label``, ``brain_mask``, ``size_class`` and ``lesion_type``. Also
    ``dev_128.npz`` and ``dev_64.npz`` with ``images``, ``masks``, ``brain_masks``, ``size_class``, ``lesion_type``
    and ``split``.

    Args:
        out_dir: output folder.
        resolution: 64 or 128 for the NIfTI files.
        seed: generation seed.

    Returns:
        The datalist path.
    """
    resolution = _check_resolution(resolution)
    arrays128 = dev_set_arrays(seed)
    _save_npz_exports(arrays128, out_dir, "dev", NPZ_KEYS)
    arrays = at_resolution(arrays128, resolution)
    items = _write_items(arrays, out_dir, f"dev_{resolution}", resolution)
    split = arrays["split"]
    datalist = {
        "name": "monai-diffad synthetic development set",
        "description": SYNTHETIC_NOTE,
        "reference": "Colin27 (Holmes et al. 1998) from Debian mricron-data; lesions per docs/data.md Recipe 2",
        "tensorImageSize": "2D",
        "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "lesion"},
        "size_classes": {str(k): v for k, v in SIZE_CLASS_NAMES.items()},
        "resolution": resolution,
        "pixel_spacing_mm": _pixel_spacing(resolution),
        "seed": seed,
        "training": _write_training_items(out_dir, resolution),
        "validation": [it for it, s in zip(items, split) if s == "validation"],
        "test": [it for it, s in zip(items, split) if s == "test"],
    }
    path = os.path.join(out_dir, f"datalist_{resolution}.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=1)
    return path


def build_unseen_set(
    out_dir: str,
    seed: int = 0,
    subjects: int = UNSEEN_SUBJECTS,
    lesions_per_cell: int = DEV_LESIONS_PER_CELL,
    lesion_free: int = DEV_LESION_FREE,
) -> list[str]:
    """Write the unseen-anatomy check set as ``unseen_64.npz`` and ``unseen_128.npz`` (:func:`unseen_set_arrays`).

    The files have the development set's npz arrays (:data:`NPZ_KEYS`) and ``subject``, so every tool that reads
    ``dev_R.npz`` reads them unchanged.

    Args:
        out_dir: output folder (created).
        seed, subjects, lesions_per_cell, lesion_free: see :func:`unseen_set_arrays`.

    Returns:
        The paths of ``unseen_64.npz`` and ``unseen_128.npz``.
    """
    arrays128 = unseen_set_arrays(seed, subjects, lesions_per_cell, lesion_free)
    return sorted(_save_npz_exports(arrays128, out_dir, "unseen", (*NPZ_KEYS, "subject")))


def build_demo_data(out_dir: str, seed: int = 0) -> str:
    """Small demo assets at 128 x 128 (well under 10 MB): four lesion slices and one 3D stack with a lesion.

    The slices are development-set items (seed ``seed``) of four (type, size) kinds: small stroke, large stroke,
    medium tumour, large tumour; of each kind, the one on the slice with the largest brain area. The volume stacks 8 Colin27 slices 3 mm apart (voxels 1.5 x 1.5 x 3 mm)
    around the slice of largest brain area, with a tumour-like ellipsoid painted across its middle 6 slices.

    Args:
        out_dir: output folder (e.g. ``demo_data``).
        seed: generation seed.

    Returns:
        The path of ``datalist.json`` (keys ``test``: the 2D items, ``volumes``: the 3D item; paths relative).
    """
    arrays = dev_set_arrays(seed)
    wanted = [("stroke", 1), ("stroke", 3), ("tumour", 2), ("tumour", 3)]
    brain_area = arrays["brain_masks"].reshape(len(arrays["brain_masks"]), -1).sum(1)
    picks = []
    for lesion_type, size_class in wanted:  # the kind's item on the largest brain slice: a typical mid-brain view
        candidates = np.nonzero((arrays["lesion_type"] == lesion_type) & (arrays["size_class"] == size_class))[0]
        picks.append(int(candidates[np.argmax(brain_area[candidates])]))
    chosen = {k: v[picks] for k, v in arrays.items()}
    chosen["index"] = np.asarray(picks)
    items = _write_items(chosen, out_dir, "slices", 128)
    volume = _demo_volume(seed)
    spacing = (_pixel_spacing(128), _pixel_spacing(128), 3.0)
    volume_item: dict[str, Any] = {}
    for key, dtype in (("image", np.float32), ("label", np.uint8), ("brain_mask", np.uint8)):
        rel = os.path.join("volumes", f"colin27_stack_{key}.nii.gz")
        save_nifti_slice(volume[key], os.path.join(out_dir, rel), spacing, dtype)
        volume_item[key] = rel
    volume_item["lesion_type"] = "tumour"
    datalist = {
        "name": "monai-diffad demo data",
        "description": SYNTHETIC_NOTE,
        "resolution": 128,
        "pixel_spacing_mm": _pixel_spacing(128),
        "test": items,
        "volumes": [volume_item],
    }
    path = os.path.join(out_dir, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=1)
    return path


def _demo_volume(seed: int, n_slices: int = 8, stride_mm: int = 3) -> dict[str, np.ndarray]:
    """A ``(128, 128, n_slices)`` Colin27 stack with one tumour-like ellipsoid (radius tapering across slices)."""
    volume = load_source_volume(DEV_SOURCE)
    z_all = select_axial_slices(volume["mask"])
    areas = volume["mask"][..., z_all].sum(axis=(0, 1))
    z_mid = int(z_all[int(np.argmax(areas))])
    z = z_mid + stride_mm * (np.arange(n_slices) - n_slices // 2)
    center = brain_centroid_xy(volume["mask"])
    img = crop_or_pad_2d(volume["image"][..., z], center)
    msk = crop_or_pad_2d(volume["mask"][..., z].astype(np.float32), center)
    # MONAI annotates Resize's input as a tensor, but it documents and converts a channel-first numpy array too
    img_resized = Resize((128, 128), mode="area")(np.moveaxis(img, -1, 0))  # type: ignore[arg-type]
    msk_resized = Resize((128, 128), mode="bilinear")(np.moveaxis(msk, -1, 0))  # type: ignore[arg-type]
    img = np.moveaxis(np.asarray(img_resized), 0, -1)
    brain = np.moveaxis(np.asarray(msk_resized), 0, -1) >= 0.5
    img = np.clip(img, 0, 1) * brain
    rng = np.random.RandomState(seed)
    mid = brain[..., n_slices // 2]
    inside = np.argwhere(distance_transform_edt(mid) >= 20)
    lesion_center = inside[rng.randint(len(inside))]
    label = np.zeros(img.shape, dtype=np.uint8)
    half_height = (n_slices - 2) / 2  # lesion spans the middle n_slices - 2 slices
    for k in range(n_slices):
        offset = k - (n_slices - 1) / 2
        if abs(offset) >= half_height:
            continue
        radius = 12.0 * np.sqrt(1 - (offset / half_height) ** 2)
        painted, mask = paint_tumour_like(
            img[..., k], brain[..., k], lesion_center, radius, 1.3, 0.6, 1.12, 2 if radius >= 3 else 0
        )
        img[..., k], label[..., k] = painted, mask
    return {"image": img.astype(np.float32), "label": label, "brain_mask": brain.astype(np.uint8)}
