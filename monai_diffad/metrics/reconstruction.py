# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Reconstruction quality on healthy images: SSIM, MSE, MAE and an optional perceptual distance.

AutoDDPM reports SSIM, LPIPS and MSE of the pseudo-healthy reconstruction of healthy images; the
THOR code MAE, LPIPS and SSIM. The perceptual distance (LPIPS) is passed in as any callable, so this
module does not depend on a particular network.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from monai.metrics import CumulativeIterationMetric, compute_ssim_and_cs
from monai.utils import ensure_tuple_rep

__all__ = ["ReconstructionMetric"]


class ReconstructionMetric(CumulativeIterationMetric):
    """Per-image SSIM, MSE, MAE (and a perceptual distance) of reconstructions, averaged over a set.

    Call it per batch as ``metric(y_pred=reconstruction, y=image)`` with batch-first tensors
    (B, C, H, W) or (B, C, H, W, D) of the same shape. Each call returns the per-image values,
    shape (B, M), in the column order of :attr:`names`; ``get_buffer()`` holds them for every image
    (M numbers per image, not pixels). ``aggregate()`` returns ``{name: mean over images}``.

    SSIM is MONAI's (``compute_ssim_and_cs``: Gaussian window 11, sigma 1.5, valid region, mean of the
    SSIM map per image), matching ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``.

    Args:
        spatial_dims: 2 or 3.
        data_range: value range of the images (1.0 for [0, 1]).
        perceptual: optional distance ``f(y_pred, y)`` returning a per-pixel map (B, ...) or per-image
            values (B,) / (B, 1, ...), e.g. an LPIPS module; its mean per image is reported as
            ``perceptual_name``. It receives the inputs as given (convert channels/ranges inside it).
        perceptual_name: column name of the perceptual distance.
        win_size: SSIM window size.
        kernel_sigma: SSIM Gaussian sigma.

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3.
        TypeError: when ``perceptual`` is not callable.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        data_range: float = 1.0,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        perceptual_name: str = "lpips",
        win_size: int = 11,
        kernel_sigma: float = 1.5,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if perceptual is not None and not callable(perceptual):
            raise TypeError(f"perceptual must be callable, got {type(perceptual).__name__}.")
        self.spatial_dims = spatial_dims
        self.data_range = data_range
        self.perceptual = perceptual
        self.win_size = win_size
        self.kernel_sigma = kernel_sigma
        self.names: tuple[str, ...] = ("ssim", "mse", "mae") + ((perceptual_name,) if perceptual is not None else ())

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("ReconstructionMetric needs the original images y.")
        if y_pred.shape != y.shape or y_pred.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"y_pred and y must both be (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if not (bool(torch.isfinite(y_pred).all()) and bool(torch.isfinite(y).all())):
            raise ValueError("y_pred and y must be finite.")
        batch = y_pred.shape[0]
        ssim_map, _ = compute_ssim_and_cs(
            y_pred,
            y,
            spatial_dims=self.spatial_dims,
            kernel_size=ensure_tuple_rep(self.win_size, self.spatial_dims),
            kernel_sigma=ensure_tuple_rep(self.kernel_sigma, self.spatial_dims),
            data_range=self.data_range,
        )
        difference = (y_pred.float() - y.float()).reshape(batch, -1)
        columns: list[torch.Tensor] = [
            ssim_map.reshape(batch, -1).mean(dim=1),
            difference.pow(2).mean(dim=1),
            difference.abs().mean(dim=1),
        ]
        if self.perceptual is not None:
            columns.append(self._per_image(self.perceptual(y_pred, y), batch))
        return torch.stack([c.float() for c in columns], dim=1)

    @staticmethod
    def _per_image(distance: torch.Tensor, batch: int) -> torch.Tensor:
        """Mean of a perceptual distance per image, accepting per-pixel or per-image outputs."""
        if not isinstance(distance, torch.Tensor) or distance.ndim == 0 or distance.shape[0] != batch:
            shape = tuple(distance.shape) if isinstance(distance, torch.Tensor) else type(distance).__name__
            raise ValueError(f"perceptual must return a tensor with {batch} items first, got {shape}.")
        return distance.detach().reshape(batch, -1).mean(dim=1)

    def aggregate(self) -> dict[str, float]:
        """Mean of each column over all images since the last reset (``nan`` with a warning before any data)."""
        values = self.get_buffer()
        if values is None:
            warnings.warn("ReconstructionMetric has seen no image; returning nan.", RuntimeWarning, 2)
            return {name: float("nan") for name in self.names}
        # sorted: the mean does not depend on the order of the rows (ranks of a distributed run append theirs in turn)
        return dict(zip(self.names, values.double().sort(dim=0).values.mean(dim=0).tolist()))
