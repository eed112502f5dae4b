# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The label and image thresholds at a stated false-positive rate on healthy images (the calibration metrics).

The label threshold is the lowest of ``num_thresholds`` values in [0, 1) at which, averaged over healthy images, at
most ``fpr`` of the brain pixels are labelled, i.e. have a map value ``>=`` the threshold (the comparison labels use).
The image threshold is the lowest value at which at most ``fpr`` of the healthy images have an image score ``>=`` it
(the comparison of an image-level call such as the MONAI Label app's ``pred_label``).
:mod:`monai_diffad.calibration` stores both in a bundle; the benchmark measures both on its lesion-free slices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_diffad.metrics.pooled import as_tensor, as_unit_maps

__all__ = [
    "CALIBRATION_FPR",
    "flagged_share_curve",
    "threshold_grid",
    "threshold_at_fpr",
    "healthy_fpr_threshold",
    "image_threshold_at_fpr",
    "HealthyFPRThresholdMetric",
]

#: default tolerated share of healthy brain pixels above a label threshold
CALIBRATION_FPR = 0.05


def flagged_share_curve(
    maps: torch.Tensor, masks: torch.Tensor | None = None, num_thresholds: int = 1000
) -> torch.Tensor:
    """Per image, the share of foreground pixels labelled (map ``>=`` threshold) at each threshold ``k / T``,
    ``k = 0 ... T - 1``.

    Args:
        maps: ``(N, 1, *spatial)`` anomaly maps in [0, 1].
        masks: optional foreground masks of the same shape (pixels outside are not counted).
        num_thresholds: grid size ``T`` over [0, 1).

    Returns:
        ``(N, T)`` float64 shares in [0, 1], non-increasing along the thresholds.

    Raises:
        TypeError: ``maps`` or ``masks`` is not a tensor or array.
        ValueError: ``num_thresholds`` out of range, maps empty, not finite or outside [0, 1] (a NaN would never
            count as flagged), shapes differ, or a mask is empty or not finite.
    """
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive int, got {num_thresholds!r}.")
    maps = as_unit_maps(maps, "maps")
    if maps.ndim < 2 or maps.numel() == 0:
        raise ValueError(f"maps must be a non-empty (N, 1, *spatial) batch, got shape {tuple(maps.shape)}.")
    flat = maps.flatten(1).float().cpu()
    if masks is None:
        valid = torch.ones_like(flat, dtype=torch.bool)
    else:
        masks = as_tensor(masks, "masks")
        if masks.shape != maps.shape:
            raise ValueError(f"masks {tuple(masks.shape)} must match maps {tuple(maps.shape)}.")
        if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
            raise ValueError("masks contain NaN or infinite values.")
        valid = masks.cpu().flatten(1) > 0
    counts = valid.sum(1)
    if (counts == 0).any():
        raise ValueError("a foreground mask is empty; cannot measure its false-positive rate.")
    grid = threshold_grid(num_thresholds).float()
    # a pixel is labelled at the grid points at or below it (the labels' ">="): one histogram per image, not T passes
    above_from = torch.searchsorted(grid, flat, right=True)
    shares = torch.empty(flat.shape[0], num_thresholds, dtype=torch.float64)
    for i in range(flat.shape[0]):
        hist = torch.bincount(above_from[i][valid[i]], minlength=num_thresholds + 1).double()
        # pixels labelled at threshold k: those with more than k grid points at or below them
        shares[i] = hist.flip(0).cumsum(0).flip(0)[1:] / counts[i]
    return shares


def threshold_grid(num_thresholds: int = 1000) -> torch.Tensor:
    """The candidate thresholds ``k / num_thresholds``, ``k = 0 ... num_thresholds - 1``, as float64."""
    return torch.arange(num_thresholds, dtype=torch.float64) / num_thresholds


def threshold_at_fpr(shares: torch.Tensor, fpr: float = 0.05) -> float:
    """Lowest grid threshold whose mean share over images is ≤ ``fpr`` (the last one when none is).

    Args:
        shares: ``(N, T)`` output of :func:`flagged_share_curve`.
        fpr: tolerated share of healthy pixels flagged, in (0, 1).

    Raises:
        ValueError: ``fpr`` out of range or ``shares`` not a non-empty ``(N, T)`` tensor.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
    if shares.ndim != 2 or shares.numel() == 0:
        raise ValueError(f"shares must be a non-empty (N, T) tensor, got shape {tuple(shares.shape)}.")
    grid = threshold_grid(shares.shape[1])
    meeting = torch.nonzero(shares.double().mean(0) <= fpr)
    return float(grid[meeting[0, 0]] if len(meeting) else grid[-1])


def healthy_fpr_threshold(
    maps: torch.Tensor, masks: torch.Tensor | None = None, fpr: float = 0.05, num_thresholds: int = 1000
) -> float:
    """Lowest threshold in ``{k / num_thresholds}`` whose mean per-image share of foreground pixels ``>=`` it is ≤ ``fpr``.

    Args:
        maps: ``(N, 1, *spatial)`` anomaly maps of healthy images, in [0, 1].
        masks: optional foreground masks of the same shape (pixels outside are not counted).
        fpr: tolerated share of healthy pixels flagged, in (0, 1).
        num_thresholds: grid size over [0, 1).

    Returns:
        The threshold.

    Raises:
        TypeError: ``maps`` or ``masks`` is not a tensor or array.
        ValueError: ``fpr`` or ``num_thresholds`` out of range, maps empty, not finite or outside [0, 1] (a NaN would
            never count as flagged), shapes differ, or a mask is empty or not finite.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
    return threshold_at_fpr(flagged_share_curve(maps, masks, num_thresholds), fpr)


def image_threshold_at_fpr(scores: torch.Tensor | np.ndarray, fpr: float = CALIBRATION_FPR) -> float:
    """Lowest image-score threshold at which at most ``fpr`` of healthy images score ``>=`` it.

    With the ``n`` scores sorted ascending, ``s[0] <= ... <= s[n - 1]``, and ``k`` the largest count of images with
    ``k / n <= fpr`` (``floor(fpr * n)``), the threshold is ``s[n - k]``, the ``k``-th highest score; for ``k = 0``
    it is the next float above the highest score, so no healthy image reaches it. Scores tied with ``s[n - k - 1]``
    would push the count above ``k``: the threshold then moves up to the next higher score (or above the highest).
    The result is one of the scores or just above the highest one, so at most ``fpr`` of these images, and as many
    as allowed when there are no ties, have ``score >= threshold``.

    Args:
        scores: ``(N,)`` or ``(N, 1)`` finite image scores of healthy images (higher = more anomalous), e.g. the
            mean of the top 1 % of each map (:func:`monai_diffad.maps.scoring.top_fraction_mean`).
        fpr: tolerated share of healthy images called anomalous, in (0, 1).

    Returns:
        The threshold, as a Python float (float64).

    Raises:
        TypeError: ``scores`` is not a tensor or array.
        ValueError: ``fpr`` outside (0, 1), ``scores`` empty, not one per image, or not finite.
    """
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}.")
    values = as_tensor(scores, "scores")
    if values.ndim == 0 or values.numel() == 0 or values.numel() != values.shape[0]:
        raise ValueError(f"scores must be a non-empty (N,) or (N, 1) tensor, got shape {tuple(values.shape)}.")
    ordered = np.sort(values.detach().cpu().double().numpy().reshape(-1))
    if not np.isfinite(ordered).all():
        raise ValueError("scores contain NaN or infinite values.")
    n = len(ordered)
    # the largest k with k / n <= fpr, as the share is computed; floor(fpr * n) alone can be one short in floats
    k = min(int(math.floor(fpr * n)), n - 1)
    while k + 1 < n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    above_max = math.nextafter(float(ordered[-1]), math.inf)
    if k == 0:
        return above_max
    # the (k + 1)-th highest score must stay below the threshold: the lowest score above it, if any
    cut = float(ordered[n - k - 1])
    higher = ordered[n - k :][ordered[n - k :] > cut]
    return float(higher[0]) if len(higher) else above_max


class HealthyFPRThresholdMetric(CumulativeIterationMetric):
    """:func:`healthy_fpr_threshold` accumulated batch by batch, e.g. over the lesion-free slices of a benchmark.

    Call it per batch as ``metric(y_pred=maps, y=masks)`` with ``(B, 1, *spatial)`` maps in [0, 1] and foreground
    masks of the same shape; ``get_buffer()`` holds one row of :func:`flagged_share_curve` per image (gathered
    from every rank in a distributed run) and ``aggregate()`` returns the threshold.

    Args:
        fpr: tolerated share of healthy pixels flagged, in (0, 1).
        num_thresholds: grid size over [0, 1).
    """

    def __init__(self, fpr: float = CALIBRATION_FPR, num_thresholds: int = 1000) -> None:
        super().__init__()
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
        self.fpr = fpr
        self.num_thresholds = num_thresholds

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        return flagged_share_curve(y_pred, y, self.num_thresholds)

    def aggregate(self) -> float:
        """The threshold over every image so far; ``nan`` before any."""
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            return float("nan")
        return threshold_at_fpr(buffer, self.fpr)
