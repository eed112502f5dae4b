# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Anomaly-detection inferers; each subclasses ``monai.inferers.DiffusionInferer``.

:class:`DiffusionAnomalyInferer` is the detection frame (DISYRE stands on it directly);
:class:`PartialDiffusionInferer` adds partial noising and the DDPM reverse loop (DDPM, AnoDDPM, THOR, AutoDDPM).
"""

from __future__ import annotations

from monai_diffad.disyre_schedule import corruption_alphas, disyre_scheduler
from monai_diffad.inferers.autoddpm import AutoDDPMInferer, binary_anomaly_mask, initial_anomaly_map, stitch
from monai_diffad.inferers.base import DetectionBatch, DiffusionAnomalyInferer
from monai_diffad.inferers.ddpm import AnoDDPMInferer, DDPMAnomalyInferer
from monai_diffad.inferers.disyre import DISYRE_DEMO_UNET, DISYRE_PAPER_UNET, DISYRE_SCORING, DISYREInferer, disyre_unet
from monai_diffad.inferers.levels import equal_snr_level, signal_to_noise_ratio
from monai_diffad.inferers.output import AnomalyOutput
from monai_diffad.inferers.partial_diffusion import PartialDiffusionInferer, SeededNoise
from monai_diffad.inferers.posterior import forward_step, posterior_step, predict_original
from monai_diffad.inferers.thor import THOR_DEFAULTS, THORInferer, harmonization_mask, harmonize

__all__ = [
    "AnoDDPMInferer",
    "AutoDDPMInferer",
    "binary_anomaly_mask",
    "initial_anomaly_map",
    "stitch",
    "AnomalyOutput",
    "DDPMAnomalyInferer",
    "DISYREInferer",
    "DISYRE_DEMO_UNET",
    "DISYRE_PAPER_UNET",
    "DISYRE_SCORING",
    "corruption_alphas",
    "disyre_scheduler",
    "disyre_unet",
    "DetectionBatch",
    "DiffusionAnomalyInferer",
    "PartialDiffusionInferer",
    "SeededNoise",
    "THORInferer",
    "THOR_DEFAULTS",
    "harmonization_mask",
    "harmonize",
    "equal_snr_level",
    "signal_to_noise_ratio",
    "forward_step",
    "posterior_step",
    "predict_original",
]
