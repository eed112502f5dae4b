# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Offline brain-MRI data: sources, slice conventions, the healthy training set, the dev and unseen-anatomy sets
and demo data.

The development set is a **synthetic benchmark built from real anatomy, not a clinical data set**: synthetic
stroke-like and tumour-like lesions with exact masks painted into the held-out Colin27 brain; the unseen-anatomy set
paints them into deformed, re-rendered Colin27 pseudo-subjects. Their numbers are not comparable to BraTS/ATLAS
results. Build everything with ``python -m monai_diffad.data build --out DIR``.
"""

from __future__ import annotations

from monai_diffad.data.build import (
    SYNTHETIC_NOTE,
    build_demo_data,
    build_dev_set,
    build_training_set,
    build_unseen_set,
    dev_set_arrays,
    ensure_training_set,
    intensity_augmentation,
    training_augmentation,
    unseen_set_arrays,
)
from monai_diffad.data.slices import (
    MaskedPercentileNormalized,
    extract_axial_slices,
    halve_resolution,
    masked_percentile_normalize,
)
from monai_diffad.data.sources import DEV_SOURCES, SOURCES, TRAIN_SOURCES, load_source_volume, source_available

__all__ = [
    "DEV_SOURCES",
    "SOURCES",
    "SYNTHETIC_NOTE",
    "TRAIN_SOURCES",
    "MaskedPercentileNormalized",
    "build_demo_data",
    "build_dev_set",
    "build_training_set",
    "build_unseen_set",
    "dev_set_arrays",
    "ensure_training_set",
    "extract_axial_slices",
    "halve_resolution",
    "intensity_augmentation",
    "load_source_volume",
    "masked_percentile_normalize",
    "source_available",
    "training_augmentation",
    "unseen_set_arrays",
]
