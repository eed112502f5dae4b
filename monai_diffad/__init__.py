# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""monai-diffad: diffusion models as unsupervised anomaly detectors for medical images, as a MONAI plugin.

Importing the package has no side effects: nothing is downloaded, built or printed. Subpackages:
:mod:`~monai_diffad.inferers`, :mod:`~monai_diffad.noise`, :mod:`~monai_diffad.maps`,
:mod:`~monai_diffad.metrics`, :mod:`~monai_diffad.transforms`, :mod:`~monai_diffad.networks`,
:mod:`~monai_diffad.data`, :mod:`~monai_diffad.evaluate`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from monai_diffad.bundles import bundle_path as bundle_path  # the bundles, checkout or installed
from monai_diffad.inferers import (
    AnoDDPMInferer,
    AnomalyOutput,
    AutoDDPMInferer,
    DDPMAnomalyInferer,
    DiffusionAnomalyInferer,
    DISYREInferer,
    PartialDiffusionInferer,
    THORInferer,
)
from monai_diffad.maps import (
    PerceptualDistance,
    gaussian_smooth,
    grey_closing,
    grey_dilation,
    harmonic_mean,
    normalize_by_max,
    percentile_normalize,
    residual_map,
)
from monai_diffad.metrics import (
    AUPRCMetric,
    AUROCMetric,
    BestDiceMetric,
    auprc,
    auroc,
    best_dice,
)
from monai_diffad.noise import NoiseType, gaussian_noise, make_noise, simplex_noise

__all__ = [
    "__version__",
    "AUPRCMetric",
    "AUROCMetric",
    "AnoDDPMInferer",
    "AnomalyOutput",
    "AutoDDPMInferer",
    "BestDiceMetric",
    "DDPMAnomalyInferer",
    "DISYREInferer",
    "DiffusionAnomalyInferer",
    "NoiseType",
    "PartialDiffusionInferer",
    "PerceptualDistance",
    "THORInferer",
    "auprc",
    "auroc",
    "best_dice",
    "gaussian_noise",
    "gaussian_smooth",
    "grey_closing",
    "grey_dilation",
    "harmonic_mean",
    "make_noise",
    "normalize_by_max",
    "percentile_normalize",
    "residual_map",
    "simplex_noise",
]
