# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Best-threshold ("max") Dice of anomaly maps over a pooled set.

The papers binarise the maps at thresholds 0.00, 0.01, ..., 1.00, compute one Dice over all pixels
of the set pooled, and report the best. We predict ``map >= t`` (the THOR/AutoDDPM code uses
``map > t``; only pixels exactly on a threshold differ). Each pixel is counted in the bin of the
number of thresholds it reaches, so the 101 Dice values are exact (not approximated) from 102
counts per class: for float32 maps they are what ``maps >= j / 100`` gives in torch or numpy.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from monai_diffad.metrics.pooled import PooledHistogramMetric, histogram_counts, pool_pixels

__all__ = ["DICE_THRESHOLDS", "dice_curve_from_counts", "best_dice", "BestDiceMetric"]

#: thresholds 0.00 ... 1.00 in steps of 0.01 (float64; cast to the maps' dtype before comparing)
DICE_THRESHOLDS = torch.arange(101, dtype=torch.float64) / 100


def _predicted_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives (false positives) and positives (true positives) with ``map >= t`` for every threshold."""
    # bin i holds the pixels reaching exactly i thresholds, so threshold j is reached by bins > j
    reached = counts.flip(-1).cumsum(dim=-1).flip(-1)[:, 1:].double()
    return reached[0], reached[1]


def dice_curve_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Dice at every threshold of :data:`DICE_THRESHOLDS` from pooled counts.

    Args:
        counts: int (2, 102) counts of negatives (row 0) and positives (row 1) per number of
            thresholds reached (bins of :func:`~monai_diffad.metrics.pooled.histogram_counts` with
            :data:`DICE_THRESHOLDS` as edges).

    Returns:
        float64 (101,) Dice per threshold; all ``nan`` when there is no positive pixel.
    """
    if counts.shape != (2, DICE_THRESHOLDS.numel() + 1):
        raise ValueError(f"counts must have shape (2, {DICE_THRESHOLDS.numel() + 1}), got {tuple(counts.shape)}.")
    false_positives, true_positives = _predicted_counts(counts)
    n_positive = counts[1].sum().double()
    if n_positive == 0:
        return torch.full_like(true_positives, float("nan"))
    return 2 * true_positives / (true_positives + false_positives + n_positive)


def _best_of_curve(curve: torch.Tensor) -> tuple[float, float]:
    """Highest Dice and its threshold (the lowest one among equal maxima); ``nan`` with a warning if undefined."""
    if bool(torch.isnan(curve).all()):
        warnings.warn("Dice is undefined without positive pixels; returning nan.", RuntimeWarning, 3)
        return float("nan"), float("nan")
    index = int(torch.argmax(curve))  # first maximum = lowest threshold
    return float(curve[index]), float(DICE_THRESHOLDS[index])


def best_dice(
    maps: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
) -> tuple[float, float]:
    """Best Dice over thresholds 0.00 ... 1.00 (step 0.01), all pixels (inside ``mask``) pooled.

    Args:
        maps: anomaly maps of any shape, e.g. (B, 1, H, W), values in [0, 1].
        labels: binary labels, same shape as ``maps``.
        mask: optional binary mask of the pixels to score, broadcastable to ``maps``.

    Returns:
        ``(dice, threshold)``: the best Dice in [0, 1] and the lowest threshold reaching it
        (prediction ``maps >= threshold``); ``(nan, nan)`` with a warning without positive pixels.

    Raises:
        ValueError: for maps outside [0, 1] or non-finite, non-binary labels or mask, bad shapes.
    """
    values, positives = pool_pixels(maps, labels, mask)
    return _best_of_curve(dice_curve_from_counts(histogram_counts(values, positives, DICE_THRESHOLDS)))


class BestDiceMetric(PooledHistogramMetric):
    """Best-threshold Dice pooled over a set (exact, 204 counts of memory).

    Usage: ``metric(y_pred=maps, y=labels, mask=brain)`` per batch, then ``metric.aggregate()``,
    ``metric.reset()``; works with MONAI's ``IgniteMetricHandler`` (without a mask).

    Args:
        return_threshold: make ``aggregate`` return ``(dice, threshold)`` instead of the Dice alone
            (the Dice alone suits ``IgniteMetricHandler``, which records one value).
    """

    def __init__(self, return_threshold: bool = False) -> None:
        super().__init__(DICE_THRESHOLDS)
        self.return_threshold = return_threshold

    def dice_curve(self) -> torch.Tensor:
        """float64 (101,) Dice at each of :data:`DICE_THRESHOLDS` (``nan`` without positives)."""
        return dice_curve_from_counts(self.counts())

    def aggregate(self) -> float | tuple[float, float]:
        """Best Dice (and its threshold when ``return_threshold``); ``nan`` with a warning without positives."""
        dice, threshold = _best_of_curve(self.dice_curve())
        return (dice, threshold) if self.return_threshold else dice

    def flagged_fraction(self, threshold: float | None = None) -> float:
        """Share of negative (label 0) pixels with ``map >= threshold``, e.g. on lesion-free images.

        Args:
            threshold: one of :data:`DICE_THRESHOLDS` (a multiple of 0.01 in [0, 1]); ``None`` uses
                this metric's best-Dice threshold.

        Returns:
            Fraction in [0, 1]; ``nan`` with a warning without negative pixels (or, for ``None``,
            without positive pixels to choose a threshold).

        Raises:
            ValueError: when ``threshold`` is not on the grid.
        """
        if threshold is None:
            threshold = _best_of_curve(self.dice_curve())[1]
            if threshold != threshold:  # nan: no best threshold
                return float("nan")
        index = round(threshold * 100)
        if not 0 <= index <= 100 or abs(index / 100 - threshold) > 1e-9:
            raise ValueError(f"threshold must be a multiple of 0.01 in [0, 1], got {threshold!r}.")
        counts = self.counts()
        n_negative = int(counts[0].sum())
        if n_negative == 0:
            warnings.warn("No negative pixels to flag; returning nan.", RuntimeWarning, 2)
            return float("nan")
        false_positives, _ = _predicted_counts(counts)
        return float(false_positives[index] / n_negative)
