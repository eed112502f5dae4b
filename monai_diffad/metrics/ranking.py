# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Ranking metrics of pooled pixels (AUPRC, AUROC) and of image scores (image-level AUROC).

All of them are computed from counts of negatives and positives per score value or per bin, in
ascending order (see :mod:`monai_diffad.metrics.pooled`):

- AUROC is the trapezoidal area under the ROC curve, ties counted as a half, as
  ``sklearn.metrics.roc_auc_score`` computes it.
- AUPRC is the average precision ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds from
  high to low, exactly as ``sklearn.metrics.average_precision_score`` computes it (no interpolation).

**Exact and binned.** The functional forms :func:`auprc` and :func:`auroc` are exact by default
(``n_bins=None``: one count per distinct value; they match scikit-learn to floating-point rounding,
about 1e-12). The cumulative metrics :class:`AUPRCMetric` and :class:`AUROCMetric` keep fixed-size
histograms (``n_bins`` equal bins over [0, 1], default 10^5) and return exactly what scikit-learn
returns for the maps rounded down to the bin grid, i.e. values in one bin count as tied. So:

- they equal scikit-learn's values when every bin holds at most one distinct value, e.g. maps
  quantised to multiples of 1/255 with ``n_bins >= 256``;
- AUROC is also exact when no bin holds both a positive and a negative; otherwise its error is at
  most ``0.5 * sum_k neg_k * pos_k / (N * P)`` (each such pair scores 1/2 instead of 0 or 1);
- AP can only change through bins that hold positives with different values;
- on continuous random maps, the error with the default 10^5 bins is of order 1e-5 (tests check
  < 1e-3 at 10^4 bins). The grid is uniform, so maps crowded in a tiny range of values (e.g. all
  below 0.01) get fewer effective bins: rescale them or raise ``n_bins``.

A set without positives (or, for AUROC, without negatives) gives ``nan`` with a ``RuntimeWarning``,
where scikit-learn warns or raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_diffad.metrics.pooled import (
    PooledHistogramMetric,
    as_tensor,
    check_binary,
    distinct_value_counts,
    histogram_counts,
    pool_pixels,
    uniform_bin_edges,
)

__all__ = [
    "DEFAULT_N_BINS",
    "roc_curve_from_counts",
    "precision_recall_curve_from_counts",
    "auroc_from_counts",
    "average_precision_from_counts",
    "auroc",
    "auprc",
    "image_auroc",
    "AUROCMetric",
    "AUPRCMetric",
    "ImageAUROCMetric",
]

DEFAULT_N_BINS = 100_000


def _descending_cumulative(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False and true positives when predicting every non-empty bin from the highest down to each bin.

    Both float64 vectors start with the point "nothing predicted" (0, 0).
    """
    if counts.ndim != 2 or counts.shape[0] != 2:
        raise ValueError(f"counts must have shape (2, K), got {tuple(counts.shape)}.")
    counts = counts[:, counts.sum(dim=0) > 0].flip(-1).double()
    zero = counts.new_zeros(2, 1)
    fps, tps = torch.cat([zero, counts.cumsum(dim=1)], dim=1)
    return fps, tps


def roc_curve_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC curve of pooled counts.

    Args:
        counts: (2, K) counts of negatives (row 0) and positives (row 1) per bin, ascending scores.

    Returns:
        ``(fpr, tpr)``: float64 vectors from (0, 0) to (1, 1), one point per non-empty bin plus the
        start; ``nan`` where the set has no negatives (fpr) or no positives (tpr).
    """
    fps, tps = _descending_cumulative(counts)
    return fps / fps[-1], tps / tps[-1]


def precision_recall_curve_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision-recall curve of pooled counts.

    Args:
        counts: (2, K) counts of negatives (row 0) and positives (row 1) per bin, ascending scores.

    Returns:
        ``(precision, recall)``: float64 vectors, starting at precision 1, recall 0 (as scikit-learn's
        curve ends) and then one point per non-empty bin from the highest score down; recall is ``nan``
        when the set has no positives.
    """
    fps, tps = _descending_cumulative(counts)
    predicted = tps + fps
    precision = torch.where(predicted > 0, tps / predicted.clamp(min=1), torch.ones_like(tps))
    return precision, tps / tps[-1]


def _warn_undefined(metric: str, missing: str) -> float:
    warnings.warn(f"{metric} is undefined without {missing} pixels or images; returning nan.", RuntimeWarning, 3)
    return float("nan")


def auroc_from_counts(counts: torch.Tensor) -> float:
    """Area under the ROC curve of pooled counts (ties count a half, as in scikit-learn).

    Args:
        counts: (2, K) counts of negatives (row 0) and positives (row 1) per bin, ascending scores.

    Returns:
        AUROC in [0, 1], or ``nan`` (with a warning) when there are no positives or no negatives.
    """
    n_negative, n_positive = counts.sum(dim=1).tolist()
    if n_positive == 0 or n_negative == 0:
        return _warn_undefined("AUROC", "positive" if n_positive == 0 else "negative")
    fpr, tpr = roc_curve_from_counts(counts)
    return float(torch.trapezoid(tpr, fpr))


def average_precision_from_counts(counts: torch.Tensor) -> float:
    """Average precision of pooled counts, as ``sklearn.metrics.average_precision_score``.

    Args:
        counts: (2, K) counts of negatives (row 0) and positives (row 1) per bin, ascending scores.

    Returns:
        AP in [0, 1], or ``nan`` (with a warning) when there are no positives.
    """
    if int(counts[1].sum()) == 0:
        return _warn_undefined("Average precision", "positive")
    precision, recall = precision_recall_curve_from_counts(counts)
    return float(((recall[1:] - recall[:-1]) * precision[1:]).sum())


def _pixel_counts(
    maps: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None,
    n_bins: int | None,
) -> torch.Tensor:
    values, positives = pool_pixels(maps, labels, mask)
    if n_bins is None:
        return distinct_value_counts(values, positives)
    return histogram_counts(values, positives, uniform_bin_edges(n_bins))


def auroc(
    maps: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    n_bins: int | None = None,
) -> float:
    """Pixel-level AUROC of anomaly maps, all pixels (inside ``mask``) pooled.

    Args:
        maps: anomaly maps of any shape, e.g. (B, 1, H, W), values in [0, 1].
        labels: binary labels, same shape as ``maps``.
        mask: optional binary mask of the pixels to score, broadcastable to ``maps``.
        n_bins: ``None`` for the exact value (``sklearn.metrics.roc_auc_score``), or a number of equal
            bins over [0, 1] for the binned value the cumulative :class:`AUROCMetric` gives.

    Returns:
        AUROC in [0, 1]; ``nan`` with a warning when the pooled pixels hold a single class.

    Raises:
        ValueError: for maps outside [0, 1] or non-finite, non-binary labels or mask, bad shapes.
    """
    return auroc_from_counts(_pixel_counts(maps, labels, mask, n_bins))


def auprc(
    maps: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    n_bins: int | None = None,
) -> float:
    """Pixel-level AUPRC (average precision) of anomaly maps, all pixels (inside ``mask``) pooled.

    Args:
        maps: anomaly maps of any shape, e.g. (B, 1, H, W), values in [0, 1].
        labels: binary labels, same shape as ``maps``.
        mask: optional binary mask of the pixels to score, broadcastable to ``maps``.
        n_bins: ``None`` for the exact value (``sklearn.metrics.average_precision_score``), or a number
            of equal bins over [0, 1] for the binned value the cumulative :class:`AUPRCMetric` gives.

    Returns:
        Average precision in [0, 1]; ``nan`` with a warning when there is no positive pixel.

    Raises:
        ValueError: for maps outside [0, 1] or non-finite, non-binary labels or mask, bad shapes.
    """
    return average_precision_from_counts(_pixel_counts(maps, labels, mask, n_bins))


def _image_scores_and_labels(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one score and one binary label per image; return float (B,) and bool (B,) tensors."""
    scores = as_tensor(scores, "scores")
    labels = check_binary(as_tensor(labels, "labels"), "labels").to(scores.device)
    if scores.ndim == 0 or scores.numel() != scores.shape[0]:
        raise ValueError(f"scores must have shape (B,) or (B, 1), got {tuple(scores.shape)}.")
    if labels.numel() != scores.shape[0]:
        raise ValueError(f"labels must hold one value per score, got {labels.numel()} for {scores.shape[0]} scores.")
    scores = scores.reshape(-1)
    if not scores.is_floating_point():
        scores = scores.double()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values.")
    return scores, labels.reshape(-1)


def image_auroc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Image-level AUROC of anomaly scores (exact, as ``sklearn.metrics.roc_auc_score``).

    Args:
        scores: one finite score per image, shape (B,) or (B, 1), any range (higher = more anomalous).
        labels: one binary label per image (1 = abnormal), B values.

    Returns:
        AUROC in [0, 1]; ``nan`` with a warning when only one class is present.

    Raises:
        ValueError: for non-finite scores, non-binary labels or mismatched lengths.
    """
    return auroc_from_counts(distinct_value_counts(*_image_scores_and_labels(scores, labels)))


class AUROCMetric(PooledHistogramMetric):
    """Pixel-level AUROC pooled over a set, with memory fixed by ``n_bins``.

    Usage: ``metric(y_pred=maps, y=labels, mask=brain)`` per batch, then ``metric.aggregate()``,
    ``metric.reset()``; works with MONAI's ``IgniteMetricHandler`` (without a mask). See the module
    docstring for the binning error.

    Args:
        n_bins: number of equal bins over [0, 1].
    """

    def __init__(self, n_bins: int = DEFAULT_N_BINS) -> None:
        super().__init__(uniform_bin_edges(n_bins))

    def aggregate(self) -> float:
        """AUROC of all pixels seen since the last reset (``nan`` with a warning for one class)."""
        return auroc_from_counts(self.counts())

    def curve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fpr, tpr)`` of the pooled pixels, see :func:`roc_curve_from_counts`."""
        return roc_curve_from_counts(self.counts())


class AUPRCMetric(PooledHistogramMetric):
    """Pixel-level AUPRC (average precision) pooled over a set, with memory fixed by ``n_bins``.

    Usage: ``metric(y_pred=maps, y=labels, mask=brain)`` per batch, then ``metric.aggregate()``,
    ``metric.reset()``; works with MONAI's ``IgniteMetricHandler`` (without a mask). See the module
    docstring for the binning error.

    Args:
        n_bins: number of equal bins over [0, 1].
    """

    def __init__(self, n_bins: int = DEFAULT_N_BINS) -> None:
        super().__init__(uniform_bin_edges(n_bins))

    def aggregate(self) -> float:
        """Average precision of all pixels seen since the last reset (``nan`` with a warning if no positive)."""
        return average_precision_from_counts(self.counts())

    def curve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(precision, recall)`` of the pooled pixels, see :func:`precision_recall_curve_from_counts`."""
        return precision_recall_curve_from_counts(self.counts())


class ImageAUROCMetric(CumulativeIterationMetric):
    """Image-level AUROC from one anomaly score per image (exact; keeps two numbers per image).

    Usage: ``metric(y_pred=scores, y=labels)`` per batch with scores (B,) or (B, 1) and binary image
    labels (B,) or (B, 1), then ``metric.aggregate()``; ``get_buffer()`` returns ``[scores, labels]``.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> Sequence[torch.Tensor]:
        if y is None:
            raise ValueError("ImageAUROCMetric needs image labels y.")
        scores, labels = _image_scores_and_labels(y_pred, y)
        return [scores, labels.long()]

    def aggregate(self) -> float:
        """AUROC of all scores seen since the last reset (``nan`` with a warning for one class or no data)."""
        buffers = self.get_buffer()
        if buffers is None:
            return _warn_undefined("AUROC", "positive")
        scores, labels = buffers
        return image_auroc(scores, labels)
