# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""One scale for every method's anomaly map: the calibrated threshold moves to 0.5.

Each bundle stores a label ``threshold`` ``t`` calibrated on healthy data (at most 5 % of healthy brain pixels at or
above it). The methods' raw maps live on very different scales (DISYRE's threshold is 0.04, DDPM's 0.35), so one
colour window in a viewer cannot fit them all. :func:`rescale_to_threshold` maps ``[0, t]`` linearly onto
``[0, 0.5]`` and ``[t, 1]`` onto ``[0.5, 1]``: monotone, continuous, 0 and 1 fixed, so the ranking of voxels, the
labels (``m >= t`` exactly when ``m' >= 0.5``, up to float rounding at ``t`` itself) and the ROC of each method are unchanged, while 0.5 means "as
suspicious as the calibrated operating point" for every method.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["CALIBRATED_LEVEL", "rescale_to_threshold"]

#: where the calibrated threshold sits on the rescaled map
CALIBRATED_LEVEL = 0.5

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray, float)


def rescale_to_threshold(amap: ArrayT, threshold: float) -> ArrayT:
    """Piecewise-linear rescaling of a map in [0, 1] that puts ``threshold`` at 0.5.

    ``m' = 0.5 m / t`` for ``m <= t`` and ``m' = 0.5 + 0.5 (m - t) / (1 - t)`` above; values are clipped to [0, 1]
    first (maps are in [0, 1]; interpolation may overshoot slightly).

    Args:
        amap: anomaly map (tensor, array or number) with values in [0, 1].
        threshold: the method's calibrated threshold ``t``, in the open interval (0, 1).

    Returns:
        The rescaled map, same type (and for tensors, dtype and device) as ``amap``.

    Raises:
        ValueError: ``threshold`` outside (0, 1) (the rescaling would not be monotone or not be defined).
    """
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold must be in (0, 1) to rescale a map, got {threshold!r}.")
    low, high = CALIBRATED_LEVEL / t, (1.0 - CALIBRATED_LEVEL) / (1.0 - t)
    if isinstance(amap, torch.Tensor):
        m = amap.clamp(0.0, 1.0)
        return torch.where(m <= t, m * low, CALIBRATED_LEVEL + (m - t) * high)
    array = np.asarray(amap)
    m = np.clip(array, 0.0, 1.0)
    out = np.where(m <= t, m * low, CALIBRATED_LEVEL + (m - t) * high)
    if not isinstance(amap, np.ndarray):  # a number in, a number out
        return float(out)
    return out.astype(array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64)
