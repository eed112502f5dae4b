# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""MONAI array and dictionary transform pairs."""

from __future__ import annotations

from monai_diffad.transforms.corruption import (
    DISYRE_CORRUPTIONS,
    RandForeignPatchCorruption,
    RandForeignPatchCorruptiond,
    RandSoftShapeMask,
    RandSoftShapeMaskd,
    intensity_class_bias,
    interpolate_foreign_patch,
    match_intensity,
)
from monai_diffad.transforms.geometry import BrainCentredCropOrPadd, BrainMaskd, foreground_brain_mask
from monai_diffad.transforms.intensity import (
    ForegroundPercentileScale,
    ForegroundPercentileScaled,
    MaskedPercentileNormalized,
    masked_percentile_normalize,
)
from monai_diffad.transforms.io import AtomicNibabelWriter, CheckedLoadImaged, atomic_path
from monai_diffad.transforms.labels import ANOMALY_LABELS, AnomalyMapToLabel, AnomalyMapToLabeld
from monai_diffad.transforms.lesions import RandSyntheticLesion, RandSyntheticLesiond
from monai_diffad.transforms.spatial import InPlaneResize, InPlaneResized

__all__ = [
    "RandSyntheticLesion",
    "RandSyntheticLesiond",
    "ANOMALY_LABELS",
    "AnomalyMapToLabel",
    "AnomalyMapToLabeld",
    "AtomicNibabelWriter",
    "BrainCentredCropOrPadd",
    "BrainMaskd",
    "CheckedLoadImaged",
    "DISYRE_CORRUPTIONS",
    "ForegroundPercentileScale",
    "ForegroundPercentileScaled",
    "InPlaneResize",
    "InPlaneResized",
    "MaskedPercentileNormalized",
    "RandForeignPatchCorruption",
    "RandForeignPatchCorruptiond",
    "RandSoftShapeMask",
    "RandSoftShapeMaskd",
    "atomic_path",
    "foreground_brain_mask",
    "intensity_class_bias",
    "interpolate_foreign_patch",
    "masked_percentile_normalize",
    "match_intensity",
]
