# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers that MONAI's engines and bundle configs need for training (``bundles/ddpm/train.json``,
``bundles/disyre/train.json``): data (built-in templates or the user's scans), handlers, batches, checkpoints."""

from __future__ import annotations

from monai_diffad.training.checkpoints import latest_checkpoint, resume_seed, warm_start
from monai_diffad.training.cohort import RECORD_FILE, cohort_slice_items, split_subjects, training_slices, uses_own_data
from monai_diffad.training.data import fixed_noise_items, load_slice_items
from monai_diffad.training.handlers import EMAHandler, LossCSVLogger, WeightsExporter, attach_progress_bar
from monai_diffad.training.inferer import AUTOCAST_DTYPES, AutocastDiffusionInferer
from monai_diffad.training.prepare_batch import FixedNoisePrepareBatch, NoisePrepareBatch
from monai_diffad.training.stopping import IterationLimit

__all__ = [
    "AUTOCAST_DTYPES",
    "AutocastDiffusionInferer",
    "EMAHandler",
    "FixedNoisePrepareBatch",
    "IterationLimit",
    "LossCSVLogger",
    "NoisePrepareBatch",
    "RECORD_FILE",
    "WeightsExporter",
    "attach_progress_bar",
    "cohort_slice_items",
    "fixed_noise_items",
    "latest_checkpoint",
    "load_slice_items",
    "resume_seed",
    "split_subjects",
    "training_slices",
    "uses_own_data",
    "warm_start",
]
