# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Turning a continuous anomaly map into a label map that viewers (3D Slicer) show as segments."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["AnomalyMapToLabel", "AnomalyMapToLabeld", "ANOMALY_LABELS"]

#: label values and their segment names (``metadata.json`` ``channel_def`` and the MONAI Label app use them).
ANOMALY_LABELS: dict[str, int] = {"background": 0, "anomaly": 1, "anomaly_high": 2}


class AnomalyMapToLabel(Transform):
    """Bin an anomaly map in [0, 1] into uint8 labels: 0 below ``threshold``, 1 from it, 2 from ``high_threshold``.

    Slicer's MONAI Label plugin casts results to uint8, so a float map must be quantised before it is sent as a label.

    Args:
        threshold: calibrated operating point (e.g. 5 % false-positive rate on healthy pixels).
        high_threshold: optional second level for a "high" segment; ``None`` gives a binary label.

    Raises:
        ValueError: thresholds outside [0, 1] or not increasing.
    """

    def __init__(self, threshold: float, high_threshold: float | None = None) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        if high_threshold is not None and not float(threshold) < float(high_threshold) <= 1.0:
            raise ValueError(f"high_threshold must be in ({threshold}, 1], got {high_threshold}.")
        self.levels: Sequence[float] = [float(threshold)] + ([] if high_threshold is None else [float(high_threshold)])

    def __call__(self, amap: torch.Tensor) -> torch.Tensor:
        """Args: amap: map of any shape in [0, 1]. Returns: uint8 labels of the same shape (and meta).

        Raises:
            ValueError: NaN/inf or values outside [0, 1] (a NaN would silently become background).
        """
        amap = torch.as_tensor(amap)
        if amap.numel() > 0 and not bool(((amap >= 0) & (amap <= 1)).all()):  # False for NaN too
            raise ValueError(
                "AnomalyMapToLabel needs a map in [0, 1] without NaN/inf; got values in "
                f"[{amap.min().item():.4g}, {amap.max().item():.4g}] (clamp interpolated maps first)."
            )
        label = torch.zeros_like(amap, dtype=torch.uint8)
        for level in self.levels:
            label += (amap >= level).to(torch.uint8)
        if isinstance(amap, MetaTensor):
            label = type(amap)(label, meta=amap.meta, applied_operations=amap.applied_operations)
        return label


class AnomalyMapToLabeld(MapTransform):
    """Dictionary version of :class:`AnomalyMapToLabel` writing to ``label_key`` (meta copied from the map)."""

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float,
        high_threshold: float | None = None,
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("AnomalyMapToLabeld takes exactly one map key.")
        self.to_label = AnomalyMapToLabel(threshold, high_threshold)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = self.to_label(d[key])
        return d
