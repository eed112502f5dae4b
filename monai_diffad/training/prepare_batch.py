# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""A ``prepare_batch`` for evaluating the DDPM loss on frozen noise and timesteps."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["FixedNoisePrepareBatch"]


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
