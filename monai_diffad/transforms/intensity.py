# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Intensity normalisation for inference, matching how the training data were normalised."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

from monai_diffad.data.slices import masked_percentile_normalize

__all__ = ["ForegroundPercentileScale", "ForegroundPercentileScaled"]


class ForegroundPercentileScale(Transform):
    """``clip(x / p(x[fg]), 0, 1)`` with fg = ``x > threshold``; the background stays 0.

    The training slices were normalised per volume by the 99.5th percentile inside the brain (data.md); on a
    skull-stripped input the foreground is where the image is above the background level, so the same rule applies
    without a separate mask. Apply it to the whole volume so all slices share one scale.

    Args:
        percentile: foreground percentile mapped to 1, in (0, 100].
        threshold: values above it are foreground.

    Raises:
        TypeError: the image is not a tensor or a numeric array.
        ValueError: NaN/inf in the image, a constant image, an empty foreground, or a non-positive percentile value.
    """

    def __init__(self, percentile: float = 99.5, threshold: float = 0.0) -> None:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}.")
        self.percentile = float(percentile)
        self.threshold = float(threshold)

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        if not isinstance(img, (torch.Tensor, np.ndarray)):
            raise TypeError(f"The image must be a torch.Tensor or numpy.ndarray, got {type(img).__name__}.")
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"The image must hold numbers, got dtype {arr.dtype}.")
        if not np.isfinite(arr).all():
            raise ValueError("The image contains NaN or infinite values.")
        # a constant image would scale to all ones (or fail below): there is no content to detect anomalies in
        if arr.size > 0 and arr.min() == arr.max():
            raise ValueError(f"The image is constant (every value is {arr.flat[0]}): is it empty?")
        foreground = arr > self.threshold
        if not foreground.any():
            raise ValueError(f"The image has no foreground (no value above {self.threshold}): is it empty?")
        out = masked_percentile_normalize(arr, foreground, self.percentile)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class ForegroundPercentileScaled(MapTransform):
    """Dictionary version of :class:`ForegroundPercentileScale`; errors name the image's source file when known."""

    def __init__(
        self, keys: KeysCollection, percentile: float = 99.5, threshold: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ForegroundPercentileScale(percentile, threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.scaler(d[key])
            except ValueError as e:
                # in a batch run over a folder, "which file?" is the first question
                source = getattr(d[key], "meta", {}).get("filename_or_obj")
                if source is None:
                    raise
                raise ValueError(f"Image {source}: {e}") from e
        return d
