# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Lazily built, device-following perceptual term shared by the inferers."""

from __future__ import annotations

import math

import torch
from monai.utils import look_up_option

from monai_diffad.maps import PERCEPTUAL_NETS, PerceptualDistance, gaussian_smooth, structural_dissimilarity_map

__all__ = ["PerceptualTerm"]


class PerceptualTerm:
    """Holds one :class:`~monai_diffad.maps.PerceptualDistance`, built on first use (so constructing an inferer never
    touches the disk or warns) and moved to the inputs' device.

    Args:
        kind: ``"lpips"`` (real LPIPS when the backbone file is present, else the offline fallback with one warning)
            or ``"ssim"`` (the structural-dissimilarity fallback, chosen explicitly: no warning).
        net: LPIPS backbone name.
        backbone_path: explicit backbone weights file.
        sigma: σ of the Gaussian smoothing applied by :meth:`smoothed`.

    Raises:
        ValueError: unknown ``kind`` or ``net``, or a negative or non-finite ``sigma``.
    """

    def __init__(self, kind: str = "lpips", net: str = "squeeze", backbone_path: str | None = None, sigma: float = 2.0):
        self.kind = look_up_option(kind, ("lpips", "ssim"))
        # checked now, not at the first detection: the module itself is built lazily
        self.net = look_up_option(net, PERCEPTUAL_NETS)
        self.backbone_path = backbone_path
        if not math.isfinite(float(sigma)) or float(sigma) < 0:
            raise ValueError(f"perceptual sigma must be finite and >= 0, got {sigma}.")
        self.sigma = float(sigma)
        self._module: PerceptualDistance | None = None

    @property
    def description(self) -> str:
        """What the term actually is (``"lpips-squeeze"``, ``"ssim"``), for reports; builds the module if needed."""
        return "ssim" if self.kind == "ssim" else self._lpips(torch.device("cpu")).kind

    def _lpips(self, device: torch.device) -> PerceptualDistance:
        if self._module is None:
            self._module = PerceptualDistance(net=self.net, backbone_path=self.backbone_path, fallback="ssim")
        return self._module.to(device)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel perceptual distance ``(B, 1, H, W)`` between images in [0, 1]."""
        if self.kind == "ssim":
            return structural_dissimilarity_map(x, y)
        return self._lpips(x.device)(x, y)

    def smoothed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``clip(G_σ * P(x, y), 0, 1)``, the weighting THOR applies to the residual."""
        d = self.distance(x, y)
        return (gaussian_smooth(d, self.sigma) if self.sigma > 0 else d).clamp(0.0, 1.0)
