# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Lesion-size strata and metrics kept per stratum.

THOR/AutoDDPM report brain metrics per lesion size: small (3, 71], medium (71, 570] and large
(570, 10000] lesion pixels at 128 x 128 (the reference code's 25th/75th percentile bins). An item's
class is 0 when it has no lesion, 1/2/3 for small/medium/large, and -1 when it has lesion pixels but
falls outside every stratum (1-3 pixels, or more than 10000): such items count in the "all" pool of
:class:`StratifiedMetric` only, never as lesion-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_diffad.metrics.pooled import as_tensor

__all__ = [
    "SIZE_STRATA",
    "SIZE_STRATA_BOUNDS",
    "lesion_size_class",
    "lesion_size_classes",
    "size_strata",
    "StratifiedMetric",
]

#: stratum names, indexed by size class (0 = lesion-free)
SIZE_STRATA = ("none", "small", "medium", "large")
#: lesion pixel counts at 128 x 128 bounding the strata: small (3, 71], medium (71, 570], large (570, 10000]
SIZE_STRATA_BOUNDS = (3, 71, 570, 10000)


def _check_bounds(bounds: Sequence[float]) -> torch.Tensor:
    edges = torch.as_tensor(bounds, dtype=torch.float64)
    if edges.shape != (4,) or not bool((edges[1:] > edges[:-1]).all()) or bool(edges[0] < 0):
        raise ValueError(f"bounds must be 4 increasing non-negative pixel counts, got {tuple(bounds)}.")
    return edges


def lesion_size_classes(
    labels: torch.Tensor | np.ndarray, bounds: Sequence[float] = SIZE_STRATA_BOUNDS, area_scale: float = 1.0
) -> torch.Tensor:
    """Size class of each item of a batch of lesion labels.

    Args:
        labels: batch-first labels (B, ...), e.g. (B, 1, H, W); every non-zero pixel is a lesion pixel.
        bounds: pixel counts ``(b0, b1, b2, b3)`` bounding the strata (b0, b1], (b1, b2], (b2, b3].
        area_scale: factor turning a pixel count into a count at the resolution of ``bounds``, e.g. 4
            for 64 x 64 labels scored with the 128 x 128 bounds.

    Returns:
        int64 (B,) tensor: 0 lesion-free, 1 small, 2 medium, 3 large, -1 lesion outside the strata.

    Raises:
        ValueError: for labels without a batch dimension, bad ``bounds`` or a non-positive ``area_scale``.
    """
    labels = as_tensor(labels, "labels")
    if labels.ndim < 1:
        raise ValueError("labels must have a batch dimension.")
    if not area_scale > 0:
        raise ValueError(f"area_scale must be positive, got {area_scale!r}.")
    edges = _check_bounds(bounds).to(labels.device)
    area = (labels != 0).reshape(labels.shape[0], -1).sum(dim=1).double() * area_scale
    # number of lower bounds exceeded: 1 small ... 3 large (area > b3 is handled below)
    classes = torch.searchsorted(edges[:3], area, right=False)
    classes = torch.where((area > edges[0]) & (area <= edges[3]), classes, torch.full_like(classes, -1))
    return torch.where(area == 0, torch.zeros_like(classes), classes)


def lesion_size_class(
    label: torch.Tensor | np.ndarray, bounds: Sequence[float] = SIZE_STRATA_BOUNDS, area_scale: float = 1.0
) -> int:
    """Size class of one lesion label.

    Args:
        label: label of one item, any shape (e.g. (1, H, W) or (H, W)); non-zero pixels are lesion.
        bounds: see :func:`lesion_size_classes`.
        area_scale: see :func:`lesion_size_classes`.

    Returns:
        0 lesion-free, 1 small, 2 medium, 3 large, -1 lesion pixels outside every stratum.
    """
    return int(lesion_size_classes(as_tensor(label, "label").unsqueeze(0), bounds, area_scale)[0])


def size_strata(size_classes: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
    """Indices of the items of each stratum.

    Args:
        size_classes: one size class per item (B values, see :func:`lesion_size_classes`).

    Returns:
        ``{"none": idx, "small": idx, "medium": idx, "large": idx}`` with int64 index tensors (possibly
        empty); items of class -1 are in none of them.
    """
    classes = torch.as_tensor(size_classes).reshape(-1)
    return {name: torch.nonzero(classes == c).reshape(-1) for c, name in enumerate(SIZE_STRATA)}


def _select(data: Any, index: torch.Tensor) -> Any:
    """Items ``index`` of a batch-first tensor or of a list of channel-first tensors."""
    if isinstance(data, torch.Tensor):
        return data[index.to(data.device)]
    return [data[i] for i in index.tolist()]


#: the metric type kept per stratum, so that ``metrics[name]`` has its own methods (e.g. ``dice_curve``)
MetricT = TypeVar("MetricT", bound=CumulativeIterationMetric)


class StratifiedMetric(Generic[MetricT]):
    """Keeps one metric for all items and one per lesion-size stratum.

    Example: ``StratifiedMetric(BestDiceMetric)`` then ``metric(maps, labels, mask=brain)`` per batch
    and ``metric.aggregate()`` -> ``{"all": ..., "none": ..., "small": ..., "medium": ..., "large": ...}``.
    Strata with no item aggregate like an empty metric (``nan`` with a warning for the metrics of this
    package). ``metrics[name]`` gives each underlying metric (e.g. for
    ``metrics["none"].flagged_fraction(t)``).

    Args:
        metric_factory: callable returning a fresh cumulative metric taking ``(y_pred, y, **kwargs)``.
        bounds: see :func:`lesion_size_classes`.
        area_scale: see :func:`lesion_size_classes`.
    """

    def __init__(
        self,
        metric_factory: Callable[[], MetricT],
        bounds: Sequence[float] = SIZE_STRATA_BOUNDS,
        area_scale: float = 1.0,
    ) -> None:
        _check_bounds(bounds)
        self.bounds = tuple(bounds)
        self.area_scale = area_scale
        self.metrics: dict[str, MetricT] = {name: metric_factory() for name in ("all", *SIZE_STRATA)}

    def __call__(
        self,
        y_pred: torch.Tensor | Sequence[torch.Tensor],
        y: torch.Tensor | Sequence[torch.Tensor],
        size_class: torch.Tensor | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Add a batch to the "all" metric and to the metric of each item's stratum.

        Args:
            y_pred: batch-first predictions or a list of channel-first predictions.
            y: labels in the same form; also used for the size classes unless ``size_class`` is given.
            size_class: optional size class per item (e.g. the datalist's ``size_class``).
            kwargs: passed to the metrics; batch-first tensors or per-item lists (e.g. ``mask``) are
                split by stratum like ``y_pred``.

        Returns:
            int64 (B,) size classes used for the batch.
        """
        if size_class is None:
            labels = y if isinstance(y, torch.Tensor) else torch.stack([as_tensor(t, "y") for t in y])
            classes = lesion_size_classes(labels, self.bounds, self.area_scale).cpu()
        else:
            classes = torch.as_tensor(size_class).reshape(-1).cpu()
        if classes.numel() != len(y_pred):
            raise ValueError(f"size_class must hold one value per item, got {classes.numel()} for {len(y_pred)}.")
        self.metrics["all"](y_pred, y, **kwargs)
        for name, index in size_strata(classes).items():
            if index.numel() > 0:
                split = {k: _select(v, index) if v is not None else None for k, v in kwargs.items()}
                self.metrics[name](_select(y_pred, index), _select(y, index), **split)
        return classes

    def aggregate(self) -> dict[str, Any]:
        """``{stratum: metric.aggregate()}`` for "all", "none", "small", "medium" and "large"."""
        return {name: metric.aggregate() for name, metric in self.metrics.items()}

    def get_buffer(self) -> dict[str, Any]:
        """``{stratum: metric.get_buffer()}`` (as ``IgniteMetricHandler(save_details=True)`` reads)."""
        return {name: metric.get_buffer() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        """Reset every metric."""
        for metric in self.metrics.values():
            metric.reset()
