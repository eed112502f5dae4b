# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE training with MONAI engines (``bundles/disyre/train.json``).

The dataset transform :class:`~monai_diffad.transforms.corruption.RandForeignPatchCorruptiond` turns each healthy
slice into a corrupted x_t with its clean target x0 and timestep t; :class:`DISYREPrepareBatch` hands
``(x_t, x0, (), {"timesteps": t})`` to a ``SupervisedTrainer`` whose ``SimpleInferer`` (optionally under autocast,
:class:`AutocastSimpleInferer`) calls ``network(x_t, timesteps=t)``; the loss is ``MSELoss(x̂0, x0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import SimpleInferer
from monai.utils import look_up_option

from monai_diffad.training.inferer import AUTOCAST_DTYPES

__all__ = ["AutocastSimpleInferer", "DISYREPrepareBatch", "frozen_corruption_items"]


def _plain(value: Any) -> torch.Tensor:
    """A float/long tensor without MONAI metadata."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class DISYREPrepareBatch(PrepareBatch):
    """``(x_t, x0, (), {"timesteps": t})`` from a batch made by ``RandForeignPatchCorruptiond``.

    Args:
        image_key: key of the corrupted images x_t ``(B, C, H, W)``.
        target_key: key of the clean images x0 ``(B, C, H, W)``.
        timestep_key: key of the timesteps ``(B,)``.

    Raises:
        KeyError: a key is missing from the batch.
    """

    def __init__(self, image_key: str = "image", target_key: str = "x0", timestep_key: str = "timesteps") -> None:
        self.keys = (image_key, target_key, timestep_key)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        missing = [k for k in self.keys if k not in batchdata]
        if missing:
            raise KeyError(f"DISYREPrepareBatch needs batch keys {missing} (made by RandForeignPatchCorruptiond).")
        x_t, x0, t = (_plain(batchdata[k]).to(device, non_blocking=non_blocking, **kwargs) for k in self.keys)
        return x_t.float(), x0.float(), (), {"timesteps": t.long().reshape(-1)}


def frozen_corruption_items(
    items: list[dict[str, np.ndarray]], transform: Callable[[dict], dict], copies: int = 2, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Apply the (random) training transform once per copy with a fixed seed, so validation losses are comparable.

    Args:
        items: base items (e.g. :func:`monai_diffad.training.load_slice_items` with ``split="validation"``).
        transform: augmentation + ``RandForeignPatchCorruptiond`` chain; it is re-seeded here, so pass an instance
            that is not also used for training.
        copies: corrupted copies per base item.
        seed: seed of the transform.

    Returns:
        Items with plain tensors for every key the transform produced.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed)
    out = []
    for _ in range(copies):
        for item in items:
            out.append({k: _plain(v) for k, v in transform(dict(item)).items()})
    return out


class AutocastSimpleInferer(SimpleInferer):
    """``SimpleInferer`` (``network(inputs, *args, **kwargs)``) under ``torch.autocast`` on the inputs' device.

    MONAI's trainers only autocast on CUDA; on CPUs with bfloat16 support this trains the DISYRE demo network about
    1.7x faster (measured: 0.39 s vs 0.65 s per batch of 8 at 64², one thread). Predictions are returned in float32.

    Args:
        autocast_dtype: ``"bfloat16"``, ``"float16"`` or ``"none"`` (plain float32).
    """

    def __init__(self, autocast_dtype: str = "bfloat16") -> None:
        super().__init__()
        self.autocast_dtype = look_up_option(autocast_dtype, AUTOCAST_DTYPES)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        if self.autocast_dtype is None:
            return super().__call__(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.autocast_dtype):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out
