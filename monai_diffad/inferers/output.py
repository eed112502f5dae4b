# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The result type every detection method returns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields

import torch

__all__ = ["AnomalyOutput"]


@dataclass
class AnomalyOutput(Mapping):
    """Result of ``detect()``: usable as a dataclass (``out.anomaly_map``) and as a read-only dict (``out["score"]``).

    Attributes:
        anomaly_map: ``(B, 1, *spatial)`` float map in [0, 1]; higher means more anomalous.
        pseudo_healthy: restoration of the input, same shape and value range as the input.
        score: ``(B,)`` image-level anomaly score in [0, 1].
        intermediates: optional per-method tensors for figures (e.g. THOR's ``maps`` ``(B, K, 1, *spatial)``,
            ``x0`` and their ``timesteps``); empty unless requested.
    """

    anomaly_map: torch.Tensor
    pseudo_healthy: torch.Tensor
    score: torch.Tensor
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: str) -> torch.Tensor | dict[str, torch.Tensor]:
        if key not in self._keys():
            raise KeyError(f"AnomalyOutput has no field '{key}'; fields are {self._keys()}.")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]
