# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""AnoDDPM: partial noising with Simplex noise (``bundles/anoddpm``)."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig

__all__ = ["AnoDDPMConfig"]


class AnoDDPMConfig(AnomalyTaskConfig):
    method = "anoddpm"
    method_options = (NOISE_LEVEL,)
    summary = "AnoDDPM: Simplex-noise partial diffusion, restore, map the squared residual."
