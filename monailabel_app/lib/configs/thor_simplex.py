# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR with Simplex noise: the THOR bundle with ``noise_type`` set to ``simplex``."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig
from lib.configs.thor import HARMONIZATION_STEPS

__all__ = ["THORSimplexConfig"]


class THORSimplexConfig(AnomalyTaskConfig):
    method = "thor_simplex"
    # the THOR bundle's own switch: it picks the Simplex-trained weights, the Simplex defaults of the inferer
    # (L = 250, H = 200/150/100/50) and the separately calibrated threshold_simplex
    bundle = "thor"
    bundle_overrides = {"noise_type": "simplex"}
    method_options = (NOISE_LEVEL, HARMONIZATION_STEPS)
    summary = "THOR (Simplex noise): diffusion restoration harmonized with the input; map of what was restored."
