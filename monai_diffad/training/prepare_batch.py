# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""``prepare_batch`` callables for DDPM training: a chosen noise type, and frozen noise for validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, PrepareBatch
from monai.utils import look_up_option

from monai_diffad.noise import NoiseType, make_noise

__all__ = ["NoisePrepareBatch", "FixedNoisePrepareBatch"]


class NoisePrepareBatch(DiffusionPrepareBatch):
    """``monai.engines.utils.DiffusionPrepareBatch`` drawing Gaussian or AnoDDPM Simplex noise.

    A DDPM that restores from Simplex noise at inference (AnoDDPM, THOR-Simplex) must be trained to predict Simplex
    noise (Wyatt et al. 2022). Simplex fields are drawn per image (``per_image=True``) so that the images of a batch
    do not share one field; the reference draws one field per batch, which correlates the targets within a batch
    without changing their distribution.

    Args:
        num_train_timesteps: timesteps are drawn uniformly in ``[0, num_train_timesteps)``.
        noise_type: ``"gaussian"`` (default, same as MONAI's class) or ``"simplex"``.
        simplex_kwargs: options of :func:`monai_diffad.noise.simplex_noise` (octaves, persistence, frequency,
            normalize); the defaults are AnoDDPM's and must match the inferer's ``simplex_kwargs``.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        noise_type: str = "gaussian",
        simplex_kwargs: Mapping[str, Any] | None = None,
        condition_name: str | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.noise_type = look_up_option(noise_type, NoiseType)
        self.simplex_kwargs = {"per_image": True, **dict(simplex_kwargs or {})}

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Noise of ``images``' shape on its device, float32."""
        return make_noise(self.noise_type, images.shape, device=images.device, simplex_kwargs=self.simplex_kwargs)


class FixedNoisePrepareBatch(PrepareBatch):
    """Like ``monai.engines.utils.DiffusionPrepareBatch``, but the noise and timesteps come from the batch.

    Batches carry ``image``, ``noise`` and ``timesteps`` (see :func:`monai_diffad.training.fixed_noise_items`), so a
    ``SupervisedEvaluator`` with ``DiffusionInferer`` computes the same epsilon-prediction loss every validation round.
    """

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        missing = {"image", "noise", "timesteps"} - set(batchdata)
        if missing:
            raise KeyError(f"FixedNoisePrepareBatch needs batch keys {sorted(missing)}.")
        images, noise, timesteps = (
            torch.as_tensor(batchdata[k]).to(device, non_blocking=non_blocking, **kwargs)
            for k in ("image", "noise", "timesteps")
        )
        return images, noise, (), {"noise": noise, "timesteps": timesteps.long()}
