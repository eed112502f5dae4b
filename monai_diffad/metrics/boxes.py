# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Bounding-box recall and F1 at a fixed false-positive rate on healthy images (THOR Table 2).

The rule of the THOR wrist X-ray evaluation, for maps in [0, 1]:

1. Threshold ``th``: the lowest of the thresholds ``k / 1000`` (k = 0 ... 999) at which the mean over
   healthy images of the share of pixels with ``map > th`` is at most 5 %.
2. On each image with boxes, the map is zeroed where ``map <= th`` (a pixel "survives" when
   ``map > th``; values exactly equal to ``th`` count as below it).
3. TP = 1 when more than 10 % of the pixels of the (union of the) target boxes survive, else 0.
   FP = min(10, floor(sum of the surviving map in the healthy ("neg") region /
   max(sum of the surviving map in the boxes, 1))). Precision P = TP / max(TP + FP, 1).
4. Recall = TP and F1 = 2 P TP / (P + TP) (0 when P + TP = 0), averaged over the images with boxes.

Every image adds its TP, precision and F1 at all candidate thresholds to running sums (and every
healthy image its surviving share), so memory is fixed whatever the number of images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from monai_diffad.metrics.pooled import RunningSumMetric, as_tensor, as_unit_maps, check_binary

__all__ = ["BoxDetectionMetric"]


class BoxDetectionMetric(RunningSumMetric):
    """Box recall, precision and F1 at a threshold calibrated on healthy images (THOR Table 2 rule).

    Call it per batch as ``metric(y_pred=maps, y=boxes, mask=neg)``:

    - ``maps``: anomaly maps (B, C, H, W) or (B, C, H, W, D) in [0, 1];
    - ``boxes``: binary raster of the union of the target-class boxes, same shape; an item without any
      box pixel is a healthy image and is used only to calibrate the threshold;
    - ``neg``: optional binary healthy ("neg") region, broadcastable to the maps; it is where false
      positives are summed on box images and where the surviving share is measured on healthy images.
      ``None`` uses the pixels outside the boxes (the whole image for healthy images).

    ``aggregate()`` returns ``{"recall", "precision", "f1", "threshold", "healthy_fraction"}``, floats
    (``healthy_fraction``: mean surviving share on healthy images at the threshold).

    Args:
        healthy_fraction: largest mean share of surviving pixels allowed on healthy images (5 %).
        n_thresholds: number of candidate thresholds ``k / n_thresholds`` in [0, 1).
        threshold: a fixed threshold in [0, 1) to use instead of calibrating (e.g. one calibrated on a
            validation set); healthy images are then optional.
        min_box_fraction: share of box pixels that must survive for a true positive (10 %).
        max_false_positives: cap on the false positives of one image (10).

    Raises:
        ValueError: for out-of-range options.
    """

    def __init__(
        self,
        healthy_fraction: float = 0.05,
        n_thresholds: int = 1000,
        threshold: float | None = None,
        min_box_fraction: float = 0.1,
        max_false_positives: int = 10,
    ) -> None:
        super().__init__()
        if not 0 <= healthy_fraction <= 1:
            raise ValueError(f"healthy_fraction must be in [0, 1], got {healthy_fraction!r}.")
        if isinstance(n_thresholds, bool) or not isinstance(n_thresholds, int) or n_thresholds < 1:
            raise ValueError(f"n_thresholds must be a positive integer, got {n_thresholds!r}.")
        if threshold is not None and not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
        if not 0 <= min_box_fraction < 1:
            raise ValueError(f"min_box_fraction must be in [0, 1), got {min_box_fraction!r}.")
        if max_false_positives < 0:
            raise ValueError(f"max_false_positives must be >= 0, got {max_false_positives!r}.")
        self.healthy_fraction = healthy_fraction
        self.fixed_threshold = threshold
        self.min_box_fraction = min_box_fraction
        self.max_false_positives = max_false_positives
        if threshold is None:
            self.thresholds = torch.arange(n_thresholds, dtype=torch.float64) / n_thresholds
        else:
            self.thresholds = torch.tensor([threshold], dtype=torch.float64)

    def _threshold_bins(self, maps: torch.Tensor) -> torch.Tensor:
        """Per pixel, the number of thresholds strictly below its value: it survives thresholds k < bin."""
        thresholds = self.thresholds.to(device=maps.device, dtype=maps.dtype)
        return torch.searchsorted(thresholds, maps.contiguous(), right=False)

    def _surviving_sums(self, bins: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per image and threshold, the sum of ``weights`` over the surviving pixels: (B, K) float64."""
        batch, n_bins = bins.shape[0], self.thresholds.numel() + 1
        offsets = torch.arange(batch, device=bins.device).unsqueeze(1) * n_bins
        per_bin = torch.bincount((bins + offsets).reshape(-1), weights.reshape(-1).double(), minlength=batch * n_bins)
        return per_bin.reshape(batch, n_bins).flip(-1).cumsum(dim=-1).flip(-1)[:, 1:]

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        if y is None:
            raise ValueError("BoxDetectionMetric needs the box raster y.")
        maps = as_unit_maps(y_pred, "y_pred")
        if maps.ndim < 3:
            raise ValueError(f"y_pred must be batch-first (B, C, H, W[, D]), got {tuple(maps.shape)}.")
        boxes = check_binary(as_tensor(y, "y"), "y").to(maps.device)
        if boxes.shape != maps.shape:
            raise ValueError(f"y must have the shape of y_pred, got {tuple(boxes.shape)} and {tuple(maps.shape)}.")
        if mask is None:
            neg = ~boxes
        else:
            neg = check_binary(as_tensor(mask, "mask"), "mask").to(maps.device)
            try:
                neg = torch.broadcast_to(neg, maps.shape)
            except RuntimeError as e:
                raise ValueError(f"mask of shape {tuple(neg.shape)} cannot be broadcast to {tuple(maps.shape)}.") from e
        batch = maps.shape[0]
        maps, boxes, neg = maps.reshape(batch, -1), boxes.reshape(batch, -1), neg.reshape(batch, -1)
        box_area = boxes.sum(dim=1, keepdim=True).double()
        neg_area = neg.sum(dim=1, keepdim=True).double()
        healthy = box_area.squeeze(1) == 0
        if bool((healthy & (neg_area.squeeze(1) == 0)).any()):
            raise ValueError("a healthy image has an empty mask: its surviving share is undefined.")

        bins = self._threshold_bins(maps)
        surviving_share = self._surviving_sums(bins, neg) / neg_area.clamp(min=1)
        true_positive = (self._surviving_sums(bins, boxes) > self.min_box_fraction * box_area).double()
        box_signal = self._surviving_sums(bins, maps * boxes)
        neg_signal = self._surviving_sums(bins, maps * neg)
        false_positive = torch.floor(neg_signal / box_signal.clamp(min=1)).clamp(max=self.max_false_positives)
        precision = true_positive / (true_positive + false_positive).clamp(min=1)
        # TP is 0 or 1, so F1 = 2 P TP / (P + TP) is 2 P / (P + 1) for a hit and 0 otherwise
        f1 = true_positive * 2 * precision / (precision + 1)

        is_box = (~healthy).double().unsqueeze(1)
        sums = torch.stack(
            [
                (surviving_share * healthy.double().unsqueeze(1)).sum(dim=0),
                (true_positive * is_box).sum(dim=0),
                (precision * is_box).sum(dim=0),
                (f1 * is_box).sum(dim=0),
            ]
        )
        n_images = torch.stack([healthy.sum(), (~healthy).sum()]).double()
        return [sums.unsqueeze(0), n_images.unsqueeze(0)]

    def _compute_list(  # type: ignore[override]
        self,
        y_pred: Sequence[torch.Tensor],
        y: Sequence[torch.Tensor] | None = None,
        mask: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        # each item with its own mask (MONAI's default would hand the whole mask list to every item)
        masks = [None] * len(y_pred) if mask is None else mask
        if y is None or not len(y) == len(masks) == len(y_pred):
            raise ValueError("BoxDetectionMetric needs one box raster (and mask, if any) per prediction.")
        parts = [
            self._compute_tensor(
                as_tensor(p, "y_pred")[None], as_tensor(t, "y")[None], None if m is None else as_tensor(m, "mask")[None]
            )
            for p, t, m in zip(y_pred, y, masks)
        ]
        return [torch.cat(items) for items in zip(*parts)]

    def aggregate(self) -> dict[str, float]:
        """Recall, precision, F1, threshold and healthy surviving share over all images since the last reset.

        Returns:
            dict of floats; values are ``nan`` with a warning when no image with boxes was seen, or when
            no candidate threshold meets ``healthy_fraction``.

        Raises:
            ValueError: when calibrating (no fixed ``threshold``) without any healthy image.
        """
        nan = float("nan")
        totals = self.totals()
        if totals is None:
            warnings.warn("BoxDetectionMetric has seen no image; returning nan.", RuntimeWarning, 2)
            return {"recall": nan, "precision": nan, "f1": nan, "threshold": nan, "healthy_fraction": nan}
        sums, (n_healthy, n_box) = totals[0], totals[1].tolist()
        mean_share = sums[0] / n_healthy if n_healthy > 0 else torch.full_like(sums[0], nan)
        if self.fixed_threshold is not None:
            index = 0
        elif n_healthy == 0:
            raise ValueError("calibrating the threshold needs healthy images (items without boxes).")
        else:
            meets = torch.nonzero(mean_share <= self.healthy_fraction).reshape(-1)
            if meets.numel() == 0:
                warnings.warn("No candidate threshold meets healthy_fraction; returning nan.", RuntimeWarning, 2)
                return {"recall": nan, "precision": nan, "f1": nan, "threshold": nan, "healthy_fraction": nan}
            index = int(meets[0])
        result = {"threshold": float(self.thresholds[index]), "healthy_fraction": float(mean_share[index])}
        if n_box == 0:
            warnings.warn("No image with boxes was seen; recall, precision and F1 are nan.", RuntimeWarning, 2)
            return {"recall": nan, "precision": nan, "f1": nan, **result}
        recall, precision, f1 = (sums[1:, index] / n_box).tolist()
        return {"recall": recall, "precision": precision, "f1": f1, **result}
