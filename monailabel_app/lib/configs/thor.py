# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR with Gaussian noise (the app's default model; ``bundles/thor``)."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig
from lib.infers.params import Option

__all__ = ["HARMONIZATION_STEPS", "THORConfig"]

HARMONIZATION_STEPS = Option(
    "harmonization_steps", "int_list", None,
    "Steps at which THOR blends the restoration with the input, each <= noise_level, e.g. '300,150,50'; "
    "empty for none.",
    0, 999, target="harmonization_steps",
)  # fmt: skip


class THORConfig(AnomalyTaskConfig):
    method = "thor"
    method_options = (NOISE_LEVEL, HARMONIZATION_STEPS)
    summary = "THOR (Gaussian noise): diffusion restoration harmonized with the input; map of what was restored."
