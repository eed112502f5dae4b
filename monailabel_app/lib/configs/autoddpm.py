# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""AutoDDPM: reconstruct, mask, stitch and re-sample (``bundles/autoddpm``)."""

from __future__ import annotations

from lib.configs.base import NOISE_LEVEL, AnomalyTaskConfig
from lib.infers.params import Option

__all__ = ["AutoDDPMConfig"]


class AutoDDPMConfig(AnomalyTaskConfig):
    method = "autoddpm"
    method_options = (
        NOISE_LEVEL,
        Option("resample_level", "int", None, "Level the masked region is re-sampled from.", 1, 999,
               target="resample_level"),
        Option("resample_passes", "int", None, "Re-sampling passes (RePaint-style jumps).", 1, 100,
               target="resample_passes"),
    )  # fmt: skip
    summary = "AutoDDPM: reconstruction, automatic masking, stitching and re-sampling of the suspicious region."
