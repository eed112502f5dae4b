# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""monai-diffad: diffusion models as unsupervised anomaly detectors for medical images, as a MONAI plugin.

Importing the package has no side effects: nothing is downloaded, built or printed.
"""

from __future__ import annotations

__version__ = "0.1.0"

from monai_diffad.inferers import (
    AnoDDPMInferer,
    AnomalyOutput,
    DDPMAnomalyInferer,
    DiffusionAnomalyInferer,
    THORInferer,
)

__all__ = [
    "__version__",
    "AnoDDPMInferer",
    "AnomalyOutput",
    "DDPMAnomalyInferer",
    "DiffusionAnomalyInferer",
    "THORInferer",
]
