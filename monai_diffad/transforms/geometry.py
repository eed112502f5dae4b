# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The geometry contract's own steps: the brain mask, and the crop or pad of the field of view around it.

Every bundle brings an input to the network the way the training slices were made: RAS, in-plane spacing
``pixel_size_mm`` (slices kept), a brain mask, masked percentile normalisation, a ``field_of_view_mm`` square around
the brain-mask centroid, then the network's size. MONAI's ``Orientationd``, ``Spacingd`` and the package's
``InPlaneResized`` do the generic steps; the two transforms here do the brain-specific ones. Both record what they did
on the ``MetaTensor`` so ``Invertd`` brings every output back to the input's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import BorderPad, InvertibleTransform, MapTransform, SpatialCrop
from monai.transforms.croppad.functional import crop_func, pad_func
from monai.utils import TraceKeys
from scipy.ndimage import binary_fill_holes

__all__ = ["BrainMaskd", "BrainCentredCropOrPadd", "axial_axis", "foreground_brain_mask", "frame_around", "source_name"]

logger = logging.getLogger(__name__)

#: a brain holds about 1.1-1.9 L; a foreground this much larger is a head (skull and scalp), or a noisy background
MAX_BRAIN_VOLUME_ML = 2500.0
#: the largest axial brain section is about 170 cm^2; more than this on one slice is more than a brain
MAX_BRAIN_AREA_CM2 = 250.0
#: meta-data key set on a mask that already got the "not a brain" warning, so later steps don't warn again
WARNED_KEY = "monai_diffad_not_brain_warned"
#: an in-plane field of view smaller than this cannot hold an adult brain's axial section
MIN_BRAIN_EXTENT_MM = 100.0


def source_name(img: torch.Tensor | None) -> str:
    """The file an image was loaded from (``filename_or_obj`` of its meta data), for error messages."""
    source = getattr(img, "meta", {}).get("filename_or_obj") if img is not None else None
    return str(source) if source else "<image without file name>"


def _pixdim(img: torch.Tensor) -> np.ndarray:
    spatial = img.ndim - 1
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=float)[:spatial]
    return np.ones(spatial)


def axial_axis(img: torch.Tensor) -> int:
    """Spatial axis (0-based, after the channel) whose direction is closest to inferior-superior (world z)."""
    spatial = img.ndim - 1
    if not isinstance(img, MetaTensor) or spatial < 3:
        return spatial - 1
    directions = np.asarray(img.affine, dtype=float)[:3, :spatial]
    return int(np.argmax(np.abs(directions[2]) / np.linalg.norm(directions, axis=0)))


def foreground_brain_mask(image: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``image > threshold`` with holes filled per axial slice, so the ventricles (dark on T1) count as brain.

    Args:
        image: channel-first ``(1, H, W)`` or ``(1, H, W, D)`` skull-stripped image (background at or below
            ``threshold``); for a volume, the axial slices are those across its most inferior-superior axis (from
            the affine of a ``MetaTensor``, else the last axis).
        threshold: background level.

    Returns:
        A bool tensor of ``image``'s shape and device.
    """
    fg = (torch.as_tensor(image) > threshold).detach().cpu().numpy()[0]
    if fg.ndim == 2:
        filled = binary_fill_holes(fg)
    else:
        axis = axial_axis(image)
        filled = np.moveaxis(fg, axis, -1).copy()
        for z in range(filled.shape[-1]):
            filled[..., z] = binary_fill_holes(filled[..., z])
        filled = np.moveaxis(filled, -1, axis)
    return torch.as_tensor(filled[None], device=torch.as_tensor(image).device)


class BrainMaskd(MapTransform):
    """Give every item a brain mask on the image's grid: the user's, checked, or a filled foreground mask.

    It runs on the input's own grid, before any resampling, so that the mask the outputs are restricted to at the
    end (``copy_key``) is exactly the user's mask, or the foreground of the image they gave.

    With ``mask_key`` present (loaded from the datalist's ``brain_mask`` or ``<name>_brain_mask.nii.gz``), its
    spatial shape must equal the image's; it is binarised at > 0. Without it, the mask is
    :func:`foreground_brain_mask` of the image (the models are trained on skull-stripped brains, whose background
    is 0). Either way a warning names the file when the mask looks like a head rather than a brain (more than
    ``max_brain_volume_ml`` in all, or ``max_brain_area_cm2`` on one axial slice): skull-strip such inputs, or give
    a brain mask.

    Args:
        keys: the image key (one).
        mask_key: the brain mask's key, written as a ``MetaTensor`` sharing the image's meta data and trace.
        copy_key: when given, a copy of the mask under this key stays on the input's grid (listed in no later
            transform), for restricting the outputs once they are inverted onto that grid.
        threshold: background level of the foreground mask.
        max_brain_volume_ml: warning limit of the mask's volume.
        max_brain_area_cm2: warning limit of the mask's largest axial section.

    Raises:
        ValueError: (naming the file) an image that is not one channel of 2D or 3D, a non-finite or constant image,
            a mask of another shape, a non-finite mask, or an empty mask (an all-background image).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "brain_mask",
        copy_key: str | None = None,
        threshold: float = 0.0,
        max_brain_volume_ml: float = MAX_BRAIN_VOLUME_ML,
        max_brain_area_cm2: float = MAX_BRAIN_AREA_CM2,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"BrainMaskd takes one image key, got {list(self.keys)}.")
        self.mask_key = mask_key
        self.copy_key = copy_key
        self.threshold = float(threshold)
        self.max_brain_volume_ml = float(max_brain_volume_ml)
        self.max_brain_area_cm2 = float(max_brain_area_cm2)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        key = self.keys[0]
        image = d[key]
        name = source_name(image)
        values = torch.as_tensor(image)
        if values.ndim not in (3, 4) or values.shape[0] != 1:
            raise ValueError(
                f"Image {name} has shape {tuple(values.shape)} (channel first): the models take one channel of a 2D "
                "slice or a 3D volume; split multi-channel or 4D series into single volumes first."
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"Image {name} contains NaN or infinite values.")
        if values.numel() and float(values.min()) == float(values.max()):
            raise ValueError(f"Image {name} is constant (every value is {float(values.min())}): is it empty?")
        given = d.get(self.mask_key)
        if given is not None:
            given = torch.as_tensor(given)
            if tuple(given.shape[1:]) != tuple(image.shape[1:]) or given.shape[0] != 1:
                raise ValueError(
                    f"Brain mask {source_name(given)} has shape {tuple(given.shape)} on the image's grid, but image "
                    f"{name} has {tuple(image.shape)}: give a single-channel mask on the image's voxel grid."
                )
            if given.is_floating_point() and not bool(torch.isfinite(given).all()):
                raise ValueError(f"Brain mask {source_name(given)} contains NaN or infinite values.")
            values = given > 0
            origin = f"brain mask {source_name(given)}"
        else:
            values = foreground_brain_mask(image, self.threshold)
            origin = "foreground mask"
        if not bool(values.any()):
            raise ValueError(f"Image {name}: the {origin} is empty; is the image empty or all background?")
        warned = self._warn_if_not_brain(values, image, name, origin)
        # the mask shares the image's meta data and trace, so every later step and its inverse treat both alike
        mask = image.clone() if isinstance(image, MetaTensor) else torch.as_tensor(image).clone()
        mask.copy_(values.to(mask.device, mask.dtype))
        if warned and isinstance(mask, MetaTensor):
            mask.meta[WARNED_KEY] = True
        d[self.mask_key] = mask
        if self.copy_key is not None:
            d[self.copy_key] = mask.clone()
        return d

    def _warn_if_not_brain(self, mask: torch.Tensor, image: torch.Tensor, name: str, origin: str) -> bool:
        # a whole volume is judged by its volume, and any volume (a thin slab too) by its largest axial section
        spacing = _pixdim(image)
        values = mask[0].detach().cpu().numpy() > 0
        if values.ndim == 3:
            axis = axial_axis(image)
            in_plane = float(np.prod(np.delete(spacing, axis)))
            area = float(values.sum(axis=tuple(a for a in range(3) if a != axis)).max()) * in_plane / 100.0
            volume = float(values.sum()) * float(np.prod(spacing)) / 1000.0
        else:
            area, volume = float(values.sum()) * float(np.prod(spacing[:2])) / 100.0, 0.0
        for size, limit, unit in ((volume, self.max_brain_volume_ml, "mL"), (area, self.max_brain_area_cm2, "cm^2")):
            if size > limit:
                logger.warning(
                    "Image %s: the %s covers %.0f %s, more than a brain (limit %.0f %s): the image looks not "
                    "skull-stripped or has a noisy background. The models are trained on skull-stripped brains; "
                    "skull-strip it (e.g. with HD-BET or SynthStrip) or give a brain mask (datalist key 'brain_mask' "
                    "or <name>_brain_mask.nii.gz beside the image).",
                    name, origin, size, unit, limit, unit,
                )
                return True
        return False


def frame_around(
    centre: Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> tuple[list[tuple[int, int]], list[slice]]:
    """Zero padding and then crop slices that cut a ``size`` frame centred on ``centre`` out of a ``shape`` grid.

    Index ``centre[a] - size[a] // 2`` of axis ``a`` lands at the frame's first pixel; where the frame reaches past
    the grid, it is padded.

    Returns:
        ``([(before, after)] per axis, [slice] per axis of the padded grid)``.
    """
    pads, crops = [], []
    for c, n, extent in zip(centre, size, shape):
        start = int(c) - int(n) // 2
        before, after = max(0, -start), max(0, start + int(n) - int(extent))
        pads.append((before, after))
        crops.append(slice(start + before, start + before + int(n)))
    return pads, crops


class BrainCentredCropOrPadd(MapTransform, InvertibleTransform):
    """Crop or zero-pad the in-plane axes to ``field_of_view_mm`` around the brain mask's in-plane centroid.

    The training slices are 192 mm squares around their volume's brain centroid; a scan's own field of view (often
    240-256 mm, the brain off-centre) is brought to the same frame. The centroid is taken over the whole mask (all
    slices), so every slice of a volume shares one frame, as in training. Further axes (a volume's slices) are
    kept. The operations are recorded, so the inverse restores the input's in-plane extent (zeros where the frame
    cut the input).

    Args:
        keys: keys to crop or pad alike (the image, the mask, labels).
        mask_key: key of the brain mask the centroid is taken from.
        field_of_view_mm: side of the square frame in mm; its size in pixels follows from each axis's spacing.
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: (naming the file) an empty mask or non-positive spacing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "brain_mask",
        field_of_view_mm: float = 192.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not field_of_view_mm > 0:
            raise ValueError(f"field_of_view_mm must be positive, got {field_of_view_mm}.")
        self.mask_key = mask_key
        self.field_of_view_mm = float(field_of_view_mm)

    def frame(self, mask: torch.Tensor) -> tuple[list[tuple[int, int]], list[slice]]:
        """Padding ``[(before, after)]`` and then crop slices for the in-plane axes of ``mask`` (others untouched)."""
        name = source_name(mask)
        spacing = _pixdim(mask)[:2]
        if not (spacing > 0).all():
            raise ValueError(f"Image {name}: in-plane spacing must be positive, got {spacing.tolist()}.")
        coords = torch.nonzero(torch.as_tensor(mask)[0] > 0)
        if coords.numel() == 0:
            raise ValueError(f"Image {name}: the brain mask is empty; there is no brain to centre on.")
        size = [max(1, int(round(self.field_of_view_mm / s))) for s in spacing]
        self._warn_if_frame_misfits(mask, coords, spacing, name)
        centre = coords[:, :2].double().mean(0).round().long().tolist()
        return frame_around(centre, size, mask.shape[1:3])

    def _warn_if_frame_misfits(self, mask: torch.Tensor, coords: torch.Tensor, spacing: np.ndarray, name: str) -> None:
        extent = [(int(coords[:, a].max()) - int(coords[:, a].min()) + 1) * spacing[a] for a in range(2)]
        field = [mask.shape[a + 1] * spacing[a] for a in range(2)]
        if min(field) < MIN_BRAIN_EXTENT_MM:
            logger.warning(
                "Image %s: its in-plane field of view (%.0f x %.0f mm) cannot hold a brain's axial section; the "
                "models expect whole axial brain slices (check the spacing in the header, or the slice axis).",
                name, field[0], field[1],
            )
        elif max(extent) > self.field_of_view_mm and not getattr(mask, "meta", {}).get(WARNED_KEY):
            logger.warning(
                "Image %s: the brain mask spans %.0f x %.0f mm in-plane, more than the %.0f mm field of view, so its "
                "edges are cut off: the mask probably holds more than the brain (skull-strip the image or give a "
                "brain mask), or raise field_of_view_mm.",
                name, extent[0], extent[1], self.field_of_view_mm,
            )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        pads, crops = self.frame(d[self.mask_key])
        for key in self.key_iterator(d):
            img = d[key]
            extra = [(0, 0)] * (img.ndim - 3)
            to_pad = ((0, 0), *pads, *extra)
            # MONAI annotates to_pad as a 1-tuple; it takes one (before, after) pair per dimension
            img = pad_func(img, to_pad, self.get_transform_info(), "constant", False)  # type: ignore[arg-type]
            d[key] = crop_func(img, (slice(None), *crops, *[slice(None)] * len(extra)), False, self.get_transform_info())
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            cropped = self.pop_transform(img)[TraceKeys.EXTRA_INFO]["cropped"]
            uncrop = BorderPad(cropped)
            with uncrop.trace_transform(False):
                img = uncrop(img)
            padded = self.pop_transform(img)[TraceKeys.EXTRA_INFO]["padded"]
            unpad = SpatialCrop(
                roi_start=[p[0] for p in padded[1:]], roi_end=[n - p[1] for n, p in zip(img.shape[1:], padded[1:])]
            )
            with unpad.trace_transform(False):
                d[key] = unpad(img)
        return d
