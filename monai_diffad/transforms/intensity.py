# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Intensity normalisation for inference, matching how the training data were normalised."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = ["ForegroundPercentileScale", "ForegroundPercentileScaled", "MaskedPercentileNormalized", "masked_percentile_normalize"]


def masked_percentile_normalize(image: np.ndarray, mask: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """``clip(image / percentile(image[mask]), 0, 1)``, with 0 outside the mask.

    MONAI's percentile transforms use the whole image (mostly background here), hence this masked version.

    Args:
        image: array of any shape.
        mask: boolean-like array of the same shape; the percentile is taken over ``image[mask]``.
        percentile: in ``(0, 100]``.

    Returns:
        float32 array of ``image``'s shape, values in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, the mask is empty, the percentile is out of range, the image is not finite,
            or the brain percentile is not positive.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask) > 0
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape.")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
    if not mask.any():
        raise ValueError("The brain mask is empty: nothing to normalise by.")
    if not np.isfinite(image[mask]).all():
        raise ValueError("The image contains NaN or inf inside the brain mask.")
    scale = float(np.percentile(image[mask], percentile))
    if scale <= 0:
        raise ValueError(f"The brain's {percentile}th percentile is {scale}; expected a positive intensity.")
    return np.where(mask, np.clip(image / scale, 0.0, 1.0), 0.0).astype(np.float32)


class MaskedPercentileNormalized(MapTransform):
    """Dictionary transform: divide each image by its brain-masked percentile, clip to ``[0, 1]``, zero the background.

    Works on numpy arrays and tensors of any shape (channel-first or not) as long as the mask has the image's shape
    (or broadcasts after adding nothing). The whole array is one volume: call it on the 3D volume, before slicing,
    so all slices of a volume share one scale.

    Args:
        keys: image keys to normalise.
        mask_key: key of the brain mask.
        percentile: brain percentile mapped to 1 (docs/data.md: 99.5).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, mask_key: str = "mask", percentile: float = 99.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
        self.mask_key = mask_key
        self.percentile = percentile

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict[Hashable, np.ndarray | torch.Tensor]:
        d = dict(data)
        mask = d[self.mask_key]
        mask_np = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        for key in self.key_iterator(d):
            img = d[key]
            img_np = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            out = masked_percentile_normalize(img_np, np.broadcast_to(mask_np, img_np.shape), self.percentile)
            dtype = torch.float32 if isinstance(img, torch.Tensor) else np.float32
            d[key] = convert_to_dst_type(out, img, dtype=dtype)[0]
        return d


class ForegroundPercentileScale(Transform):
    """``clip(x / p(x[fg]), 0, 1)`` with fg = ``x > threshold``; the background stays 0.

    The training slices were normalised per volume by the 99.5th percentile inside the brain (docs/data.md); on a
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

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict[Hashable, torch.Tensor | np.ndarray]:
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
