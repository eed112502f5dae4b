# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers that MONAI's engines and bundle configs need for DDPM training (``bundles/ddpm/train.json``)."""

from __future__ import annotations

from monai_diffad.training.checkpoints import latest_checkpoint, resume_seed, warm_start
from monai_diffad.training.data import fixed_noise_items, load_slice_items
from monai_diffad.training.inferer import AUTOCAST_DTYPES, AutocastDiffusionInferer
from monai_diffad.training.handlers import EMAHandler, LossCSVLogger, WeightsExporter, attach_progress_bar
from monai_diffad.training.prepare_batch import FixedNoisePrepareBatch, NoisePrepareBatch

__all__ = [
    "AUTOCAST_DTYPES",
    "AutocastDiffusionInferer",
    "EMAHandler",
    "FixedNoisePrepareBatch",
    "LossCSVLogger",
    "NoisePrepareBatch",
    "WeightsExporter",
    "attach_progress_bar",
    "fixed_noise_items",
    "latest_checkpoint",
    "load_slice_items",
    "resume_seed",
    "warm_start",
]
