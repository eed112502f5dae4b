# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Pooling the pixels of a whole evaluation set into fixed-size histograms.

Pixel-level metrics of anomaly maps (best Dice, AUPRC, AUROC) are computed on the pixels of all
images pooled together. Keeping every pixel of a large set is what makes the usual implementations
run out of memory, so every metric here reduces a batch to per-bin counts of negative and positive
pixels and keeps only the running sum of those counts: memory is fixed by the number of bins, not by
the size of the set.

Bins are defined by sorted edges ``e_1 < ... < e_{K-1}``: bin ``k`` holds the values ``v`` with
``e_k <= v < e_{k+1}`` (``e_0 = -inf``, ``e_K = +inf``). The edges are cast to the maps' dtype before
comparing, so a threshold ``t`` splits the pixels exactly as ``maps >= t`` does in torch and numpy
(which also compare a Python float with a float32 array in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

__all__ = [
    "as_tensor",
    "check_binary",
    "as_unit_maps",
    "pool_pixels",
    "uniform_bin_edges",
    "histogram_counts",
    "distinct_value_counts",
    "RunningSumMetric",
    "PooledHistogramMetric",
]


def as_tensor(data: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Return ``data`` as a tensor (numpy arrays are wrapped without copying where possible).

    Args:
        data: a ``torch.Tensor`` or ``numpy.ndarray``.
        name: name used in error messages.

    Raises:
        TypeError: for any other type.
    """
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.as_tensor(data)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(data).__name__}.")


def check_binary(data: torch.Tensor, name: str) -> torch.Tensor:
    """Return a boolean copy of ``data`` after checking that it only holds 0 and 1.

    Args:
        data: bool or numeric tensor of any shape.
        name: name used in error messages.

    Raises:
        ValueError: when a value other than 0 or 1 (or NaN) is present.
    """
    if data.dtype == torch.bool:
        return data
    if not bool(((data == 0) | (data == 1)).all()):
        raise ValueError(f"{name} must be binary (values 0 and 1 only).")
    return data != 0


def as_unit_maps(maps: torch.Tensor | np.ndarray, name: str = "maps") -> torch.Tensor:
    """Return ``maps`` as a float32/float64 tensor after checking that its values are finite and in [0, 1].

    Args:
        maps: tensor or numpy array of any shape; float32 and float64 are kept, other dtypes become float32.
        name: name used in error messages.

    Raises:
        TypeError: when ``maps`` is neither a tensor nor a numpy array.
        ValueError: for NaN/inf or values outside [0, 1].
    """
    maps = as_tensor(maps, name)
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or infinite values.")
    # out-of-range values raise instead of being clipped: a silent clip would hide maps that were
    # never normalised, and the bins and Dice thresholds only cover [0, 1]
    if maps.numel() > 0 and (bool(maps.min() < 0) or bool(maps.max() > 1)):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{maps.min().item():.6g}, {maps.max().item():.6g}]; "
            "normalise or clip the maps first (e.g. torch.clamp(maps, 0, 1))."
        )
    return maps


def pool_pixels(
    maps: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check anomaly maps and labels and return the pixels to be scored as flat vectors.

    Args:
        maps: anomaly maps of any shape, e.g. (B, 1, H, W), values in [0, 1] (float32 or float64 are
            kept; other dtypes are converted to float32).
        labels: binary ground truth (bool or 0/1), same shape as ``maps``.
        mask: optional binary mask of the pixels to score (e.g. the brain), same shape as ``maps`` or
            broadcastable to it (e.g. (B, 1, H, W) for (B, C, H, W) maps). ``None`` scores every pixel.

    Returns:
        ``(values, positives)``: 1D float tensor of the selected map values and 1D bool tensor of
        their labels, both on the device of ``maps``.

    Raises:
        TypeError: when an input is neither a tensor nor a numpy array.
        ValueError: for NaN/inf or values outside [0, 1] in ``maps``, non-binary ``labels`` or
            ``mask``, or mismatched shapes.
    """
    maps = as_unit_maps(maps)
    positives = check_binary(as_tensor(labels, "labels"), "labels").to(maps.device)
    if positives.shape != maps.shape:
        raise ValueError(
            f"labels must have the shape of maps, got {tuple(positives.shape)} and {tuple(maps.shape)}."
        )
    if mask is None:
        return maps.reshape(-1), positives.reshape(-1)
    selected = check_binary(as_tensor(mask, "mask"), "mask").to(maps.device)
    try:
        selected = torch.broadcast_to(selected, maps.shape)
    except RuntimeError as e:
        raise ValueError(
            f"mask of shape {tuple(selected.shape)} cannot be broadcast to maps of shape {tuple(maps.shape)}."
        ) from e
    return maps[selected], positives[selected]


def uniform_bin_edges(n_bins: int) -> torch.Tensor:
    """Inner edges ``k / n_bins`` (k = 1 ... n_bins - 1) of ``n_bins`` equal bins over [0, 1].

    Args:
        n_bins: number of bins, at least 2.

    Returns:
        float64 tensor of shape (n_bins - 1,).

    Raises:
        ValueError: when ``n_bins`` is not an integer >= 2.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}.")
    return torch.arange(1, n_bins, dtype=torch.float64) / n_bins


def histogram_counts(values: torch.Tensor, positives: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Count negative and positive values per bin.

    Args:
        values: 1D float tensor of scores.
        positives: 1D bool tensor, same length as ``values``.
        edges: 1D sorted tensor of K - 1 inner bin edges (any float dtype; cast to ``values.dtype``).

    Returns:
        int64 tensor of shape (2, K): row 0 counts negatives, row 1 positives; column ``k`` holds the
        values ``v`` with ``edges[k - 1] <= v < edges[k]``.
    """
    edges = edges.to(device=values.device, dtype=values.dtype)
    n_bins = edges.numel() + 1
    bin_index = torch.searchsorted(edges, values, right=True)
    counts = torch.bincount(bin_index + n_bins * positives.long(), minlength=2 * n_bins)
    return counts.reshape(2, n_bins)


def distinct_value_counts(values: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Count negative and positive values per distinct value (exact, memory grows with the data).

    Args:
        values: 1D tensor of scores (any real dtype, any range).
        positives: 1D bool tensor, same length as ``values``.

    Returns:
        int64 tensor of shape (2, U) for the U distinct values in ascending order; row 0 counts
        negatives, row 1 positives. Ranking metrics computed from it equal scikit-learn's.
    """
    _, inverse = torch.unique(values, sorted=True, return_inverse=True)
    n_distinct = int(inverse.max().item()) + 1 if inverse.numel() else 0
    counts = torch.bincount(inverse + n_distinct * positives.long(), minlength=2 * n_distinct)
    return counts.reshape(2, n_distinct)


class RunningSumMetric(CumulativeIterationMetric):
    """A cumulative metric whose per-batch results are summed as they arrive.

    ``Cumulative`` keeps one buffer entry per item, which for per-batch histograms grows with the
    set. Here each buffer is folded into a single running total after every ``extend``, so memory
    stays fixed; ``get_buffer`` still gathers the totals of all distributed ranks (one row each).
    """

    def extend(self, *data: Any) -> None:
        """Add batch-first data to the buffers, then fold each buffer into its running total.

        Args:
            data: batch-first tensors, one per buffer; their items are summed.
        """
        super().extend(*data)
        for buffer in self._buffers or []:
            if len(buffer) > 1:
                buffer[:] = [torch.stack(buffer).sum(dim=0)]

    def totals(self) -> list[torch.Tensor] | None:
        """Running totals summed over distributed ranks, one tensor per buffer; ``None`` before any data."""
        buffers = self.get_buffer()
        if buffers is None:
            return None
        if isinstance(buffers, torch.Tensor):
            buffers = [buffers]
        return [b.sum(dim=0) for b in buffers]


class PooledHistogramMetric(RunningSumMetric):
    """Accumulates per-bin counts of negative and positive pixels over a whole set.

    Call it on batches as ``metric(y_pred, y, mask=None)`` with ``y_pred`` the anomaly maps in [0, 1],
    ``y`` the binary labels and ``mask`` the pixels to score (see :func:`pool_pixels` for shapes);
    batch-first tensors and lists of channel-first tensors (decollated batches) are both accepted.
    Each call returns that batch's counts, shape (1, 2, K).

    Args:
        edges: 1D sorted tensor of the K - 1 inner bin edges (see :func:`histogram_counts`).
    """

    def __init__(self, edges: torch.Tensor) -> None:
        super().__init__()
        if edges.ndim != 1 or (edges.numel() > 1 and not bool((edges[1:] > edges[:-1]).all())):
            raise ValueError("edges must be a 1D strictly increasing tensor.")
        self.edges = edges

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs labels y.")
        values, positives = pool_pixels(y_pred, y, mask)
        return histogram_counts(values, positives, self.edges).unsqueeze(0)

    def _compute_list(  # type: ignore[override]
        self,
        y_pred: Sequence[torch.Tensor],
        y: Sequence[torch.Tensor] | None = None,
        mask: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # one histogram for the whole list, instead of one (2, K) histogram per item
        if y is None or len(y) != len(y_pred):
            raise ValueError(f"{type(self).__name__} needs one label per prediction.")
        masks = [None] * len(y_pred) if mask is None else mask
        if len(masks) != len(y_pred):
            raise ValueError("mask must be a list with one mask per prediction.")
        pooled = [pool_pixels(p, t, m) for p, t, m in zip(y_pred, y, masks)]
        values = torch.cat([v for v, _ in pooled])
        positives = torch.cat([p for _, p in pooled])
        return histogram_counts(values, positives, self.edges).unsqueeze(0)

    def counts(self) -> torch.Tensor:
        """Pooled counts so far: int64 (2, K), row 0 negatives, row 1 positives (zeros before any data)."""
        totals = self.totals()
        if totals is None:
            return torch.zeros(2, self.edges.numel() + 1, dtype=torch.int64)
        return totals[0]
