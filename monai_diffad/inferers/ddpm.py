# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DDPM partial-noising baseline and AnoDDPM (Simplex noise)."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import look_up_option

from monai_diffad.inferers.base import DetectionBatch
from monai_diffad.inferers.partial_diffusion import PartialDiffusionInferer
from monai_diffad.inferers.perceptual_term import PerceptualTerm
from monai_diffad.maps import residual_map

__all__ = ["DDPMAnomalyInferer", "AnoDDPMInferer"]


class DDPMAnomalyInferer(PartialDiffusionInferer):
    """Reconstruction-based detection: noise the input to level L, denoise to 0, map the residual.

    ``anomaly_map = |x - x̂|`` (``residual="l1"``) or ``(x - x̂)²`` (``"l2"``), on images in [0, 1]; with
    ``perceptual_weighting=True`` it is multiplied by the smoothed perceptual term as THOR does
    (``clip(G_σ * P(x̂, x), 0, 1)``). Network calls per image batch: L + 1.

    Args:
        scheduler: the scheduler the network was trained with (detection needs a ``DDPMScheduler``).
        residual: ``"l1"`` or ``"l2"``.
        perceptual_weighting: multiply the residual by the perceptual term.
        perceptual: ``"lpips"`` (real LPIPS when its backbone file is present, else the documented offline
            fallback with one warning) or ``"ssim"`` (the fallback, explicitly).
        lpips_net: LPIPS backbone, ``"squeeze"`` (references), ``"alex"`` or ``"vgg"``.
        lpips_backbone_path: path of the torchvision backbone weights, overriding the torch hub cache.
        perceptual_sigma: σ of the Gaussian smoothing of the perceptual term.
        kwargs: options of :class:`~monai_diffad.inferers.partial_diffusion.PartialDiffusionInferer` (``noise_level``,
            ``noise_type``, ``step_stride``, ``value_range``, ...). Defaults: L = 350, Gaussian noise.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        residual: str = "l1",
        perceptual_weighting: bool = False,
        perceptual: str = "lpips",
        lpips_net: str = "squeeze",
        lpips_backbone_path: str | None = None,
        perceptual_sigma: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheduler, **kwargs)
        self.residual = look_up_option(residual, ("l1", "l2"))
        self.perceptual_weighting = bool(perceptual_weighting)
        self.perceptual = PerceptualTerm(perceptual, lpips_net, lpips_backbone_path, perceptual_sigma)

    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        """Reconstruct ``batch.images`` from level L and map the (perceptually weighted) residual."""
        u, noise = batch.images, self.noise_streams(batch)
        restored = self.partial_reverse(
            self.to_model(u), diffusion_model, noise, self.noise_level, progress=batch.progress
        )
        healthy = self.from_model(restored).clamp(0.0, 1.0)
        amap = residual_map(healthy, u, kind=self.residual)
        if self.perceptual_weighting:
            amap = amap * self.perceptual.smoothed(healthy, u)
        return {"anomaly_map": amap, "pseudo_healthy": healthy, "intermediates": {}}


class AnoDDPMInferer(DDPMAnomalyInferer):
    """AnoDDPM (Wyatt et al. 2022): partial noising with multi-octave Simplex noise, in the forward and every reverse step.

    Defaults follow the paper: λ = 250, i.e. the input is noised to t = λ - 1 = 249 and the reverse loop makes 250
    network calls (``noise_level`` here is the start step, as for every inferer in this package); the map is the
    squared residual. Simplex noise is 6 octaves, persistence 0.8, with t as third coordinate
    (:func:`monai_diffad.noise.simplex_noise`).

    Args:
        scheduler: the scheduler the network was trained with (detection needs a ``DDPMScheduler``).
        residual: ``"l2"`` (paper) or ``"l1"``.
        kwargs: options of :class:`DDPMAnomalyInferer`.
    """

    default_noise_level = 249
    default_noise_type = "simplex"

    def __init__(self, scheduler: Scheduler, residual: str = "l2", **kwargs: Any) -> None:
        super().__init__(scheduler, residual=residual, **kwargs)
