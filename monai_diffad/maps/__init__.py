# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Anomaly-map maths: residuals, perceptual distance, smoothing, morphology, combination, normalisation."""

from __future__ import annotations

from monai_diffad.maps.combine import harmonic_mean
from monai_diffad.maps.morphology import (
    STRUCTURE_SHAPES,
    grey_closing,
    grey_dilation,
    grey_erosion,
    structuring_element,
)
from monai_diffad.maps.normalize import minmax_normalize, normalize_by_max, per_image_quantile, percentile_normalize
from monai_diffad.maps.perceptual import (
    BACKBONE_FILES,
    PERCEPTUAL_FALLBACKS,
    PERCEPTUAL_NETS,
    PerceptualDistance,
    PerceptualFallbackWarning,
    default_backbone_path,
    load_lpips_backbone,
    perceptual_anomaly_map,
    resolve_backbone_path,
)
from monai_diffad.maps.rescale import CALIBRATED_LEVEL, rescale_to_threshold
from monai_diffad.maps.residual import RESIDUAL_KINDS, residual_map
from monai_diffad.maps.smoothing import gaussian_kernel1d, gaussian_smooth, symmetric_pad_indices
from monai_diffad.maps.ssim import ssim_map, structural_dissimilarity_map

__all__ = [
    "BACKBONE_FILES",
    "CALIBRATED_LEVEL",
    "PERCEPTUAL_FALLBACKS",
    "PERCEPTUAL_NETS",
    "RESIDUAL_KINDS",
    "STRUCTURE_SHAPES",
    "PerceptualDistance",
    "PerceptualFallbackWarning",
    "default_backbone_path",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "grey_closing",
    "grey_dilation",
    "grey_erosion",
    "harmonic_mean",
    "load_lpips_backbone",
    "minmax_normalize",
    "normalize_by_max",
    "per_image_quantile",
    "perceptual_anomaly_map",
    "percentile_normalize",
    "rescale_to_threshold",
    "residual_map",
    "resolve_backbone_path",
    "ssim_map",
    "structural_dissimilarity_map",
    "structuring_element",
    "symmetric_pad_indices",
]
