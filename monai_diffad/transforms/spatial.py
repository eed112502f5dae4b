# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""In-plane resizing: bring 2D slices or the axial planes of a 3D volume to the network's resolution, invertibly."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Resize, Transform
from monai.utils import InterpolateMode, TraceKeys, look_up_option

__all__ = ["InPlaneResize", "InPlaneResized"]


class InPlaneResize(InvertibleTransform, Transform):
    """Resize the first two spatial axes to ``spatial_size`` and keep any further axis (a volume's slices).

    2D networks see axial slices at their training resolution whatever the input's in-plane size, while the
    number of slices is untouched. The operation is recorded on ``MetaTensor`` inputs so ``Invertd`` restores
    the original in-plane size (and affine) of maps computed on the resized image.

    Args:
        spatial_size: target (H, W).
        mode: interpolation mode (``"area"`` for images going down, as the training data; ``"bilinear"``,
            ``"nearest"``, ...).

    Raises:
        ValueError: ``spatial_size`` is not two positive ints, or ``mode`` is unknown.
    """

    def __init__(self, spatial_size: Sequence[int], mode: str = "area") -> None:
        if len(spatial_size) != 2 or any(int(s) < 1 for s in spatial_size):
            raise ValueError(f"spatial_size must be two positive ints (H, W), got {spatial_size!r}.")
        mode = look_up_option(mode, InterpolateMode)  # Resize would only complain, obscurely, at the first call
        size = (int(spatial_size[0]), int(spatial_size[1]))
        # one persistent Resize per rank so the inverse can find the instance that recorded the operation
        self._resizers = {2: Resize(size, mode=mode), 3: Resize((*size, -1), mode=mode)}

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Resize in-plane.

        Args:
            img: channel-first ``(C, H, W)`` or ``(C, H, W, D)`` tensor or array, finite.

        Returns:
            ``(C, *spatial_size[, D])``.

        Raises:
            TypeError: ``img`` is not a tensor or array.
            ValueError: wrong rank, no elements, or NaN/inf (interpolation would spread them).
        """
        if not isinstance(img, (torch.Tensor, np.ndarray)):
            raise TypeError(f"InPlaneResize needs a torch.Tensor or numpy.ndarray, got {type(img).__name__}.")
        spatial = img.ndim - 1
        if spatial not in self._resizers:
            raise ValueError(f"InPlaneResize needs a channel-first 2D or 3D image, got shape {tuple(img.shape)}.")
        if any(s == 0 for s in img.shape):
            raise ValueError(f"InPlaneResize got an empty image of shape {tuple(img.shape)}.")
        if not bool(torch.isfinite(torch.as_tensor(img)).all()):
            raise ValueError("InPlaneResize got an image with NaN or infinite values.")
        return self._resizers[spatial](img)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        if not isinstance(data, MetaTensor) or not data.applied_operations:
            raise ValueError("InPlaneResize.inverse needs a MetaTensor that carries the resize operation.")
        op_id = data.applied_operations[-1].get(TraceKeys.ID)
        for resizer in self._resizers.values():
            if op_id == id(resizer):
                return resizer.inverse(data)
        return self._resizers[data.ndim - 1].inverse(data)


class InPlaneResized(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`InPlaneResize`; ``mode`` may differ per key (e.g. ``"nearest"`` for labels)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = "area",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"mode needs one entry per key ({len(self.keys)}), got {len(modes)}.")
        self.resizers = {k: InPlaneResize(spatial_size, m) for k, m in zip(self.keys, modes)}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key].inverse(d[key])
        return d
