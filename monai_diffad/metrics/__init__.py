# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation metrics of anomaly maps, MONAI cumulative-metric style, with bounded memory."""

from __future__ import annotations

from monai_diffad.metrics.boxes import BoxDetectionMetric
from monai_diffad.metrics.dice import (
    DICE_THRESHOLDS,
    BestDiceMetric,
    best_dice,
    dice_curve_from_counts,
)
from monai_diffad.metrics.healthy_fpr import (
    CALIBRATION_FPR,
    HealthyFPRThresholdMetric,
    flagged_share_curve,
    healthy_fpr_threshold,
    image_threshold_at_fpr,
    threshold_at_fpr,
)
from monai_diffad.metrics.pooled import (
    PooledHistogramMetric,
    RunningSumMetric,
    distinct_value_counts,
    histogram_counts,
    pool_pixels,
    uniform_bin_edges,
)
from monai_diffad.metrics.ranking import (
    DEFAULT_N_BINS,
    AUPRCMetric,
    AUROCMetric,
    ImageAUROCMetric,
    auprc,
    auroc,
    auroc_from_counts,
    average_precision_from_counts,
    image_auroc,
    precision_recall_curve_from_counts,
    roc_curve_from_counts,
)
from monai_diffad.metrics.reconstruction import ReconstructionMetric
from monai_diffad.metrics.strata import (
    SIZE_STRATA,
    SIZE_STRATA_BOUNDS,
    StratifiedMetric,
    lesion_size_class,
    lesion_size_classes,
    size_strata,
)

__all__ = [
    "CALIBRATION_FPR",
    "HealthyFPRThresholdMetric",
    "flagged_share_curve",
    "healthy_fpr_threshold",
    "image_threshold_at_fpr",
    "threshold_at_fpr",
    "AUPRCMetric",
    "AUROCMetric",
    "BestDiceMetric",
    "BoxDetectionMetric",
    "DEFAULT_N_BINS",
    "DICE_THRESHOLDS",
    "ImageAUROCMetric",
    "PooledHistogramMetric",
    "ReconstructionMetric",
    "RunningSumMetric",
    "SIZE_STRATA",
    "SIZE_STRATA_BOUNDS",
    "StratifiedMetric",
    "auprc",
    "auroc",
    "auroc_from_counts",
    "average_precision_from_counts",
    "best_dice",
    "dice_curve_from_counts",
    "distinct_value_counts",
    "histogram_counts",
    "image_auroc",
    "lesion_size_class",
    "lesion_size_classes",
    "pool_pixels",
    "precision_recall_curve_from_counts",
    "roc_curve_from_counts",
    "size_strata",
    "uniform_bin_edges",
]
