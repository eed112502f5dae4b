# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DDPM partial-noising reconstruction baseline (``bundles/ddpm``)."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig

__all__ = ["DDPMConfig"]


class DDPMConfig(AnomalyTaskConfig):
    method = "ddpm"
    method_options = (NOISE_LEVEL,)
    summary = "DDPM: noise the image partially, restore it, map the residual."
