# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR with Simplex noise (its own defaults: L = 250, H = 200/150/100/50)."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig
from lib.configs.thor import HARMONIZATION_STEPS

__all__ = ["THORSimplexConfig"]


class THORSimplexConfig(AnomalyTaskConfig):
    method = "thor_simplex"
    inferer_path = "monai_diffad.inferers.thor.THORInferer"
    noise_type = "simplex"
    # the THOR bundle calibrates the Simplex variant separately; its other values are the Gaussian variant's
    bundle = "thor"
    bundle_keys = {"threshold": "threshold_simplex"}
    fixed_inferer_kwargs = {"noise_type": noise_type}
    method_options = (NOISE_LEVEL, HARMONIZATION_STEPS)
    summary = "THOR (Simplex noise): diffusion restoration harmonized with the input; map of what was restored."
