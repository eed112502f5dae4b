# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Synthetic stroke-like and tumour-like lesions with exact masks (docs/data.md Recipe 2).

These build a **synthetic benchmark from real anatomy, not a clinical data set**. The painted pixels are the mask,
exactly: nothing is blurred after painting. Sizes are stratified by the mask's pixel count at 128 x 128
(``LESION_SIZE_CLASSES``); geometry parameters are in pixels of a 128 x 128 slice (1.5 mm).

- Stroke-like: hypo-intense star shape ``r(theta) = R (1 + sum_{k=2..5} a_k cos(k theta + phi_k))``,
  ``a_k ~ U(0, 0.15)``, intensity ``I * U(0.3, 0.6)``, centre 3-15 px from the brain edge.
- Tumour-like: hyper-intense ellipse (aspect 1-1.6, random angle), core ``min(1, WM * U(1.05, 1.2))`` with ``WM`` the
  slice's brain p90, a 1-3 px ring at 1.0 around it (none when ``R < 3``), centre at least 8 px inside the brain.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, look_up_option
from scipy.ndimage import distance_transform_edt

__all__ = [
    "LESION_TYPES",
    "LESION_SIZE_CLASSES",
    "SIZE_CLASS_NAMES",
    "size_class_of",
    "star_shape_mask",
    "ellipse_mask",
    "paint_stroke_like",
    "paint_tumour_like",
    "RandSyntheticLesion",
    "RandSyntheticLesiond",
]

LESION_TYPES = ("stroke", "tumour")
#: Size strata by mask pixel count at 128 x 128: class -> (exclusive lower, inclusive upper) bound.
LESION_SIZE_CLASSES: dict[int, tuple[int, int]] = {1: (3, 71), 2: (71, 570), 3: (570, 10000)}
SIZE_CLASS_NAMES: dict[int, str] = {0: "none", 1: "small", 2: "medium", 3: "large"}


def size_class_of(pixel_count: int) -> int:
    """Size class of a lesion of ``pixel_count`` pixels at 128 x 128: 0 none/too small, 1 small, 2 medium, 3 large."""
    for cls, (low, high) in LESION_SIZE_CLASSES.items():
        if low < pixel_count <= high:
            return cls
    return 0


def _polar_grid(shape: Sequence[int], center: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(dx, dy)`` of every pixel of a ``shape`` grid from ``center``, and their radius."""
    dx, dy = np.meshgrid(
        np.arange(shape[0], dtype=np.float64) - center[0],
        np.arange(shape[1], dtype=np.float64) - center[1],
        indexing="ij",
    )
    return dx, dy, np.hypot(dx, dy)


def star_shape_mask(
    shape: Sequence[int],
    center: Sequence[float],
    radius: float,
    amplitudes: Sequence[float] | np.ndarray,
    phases: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Pixels inside ``r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k))``, harmonics ``k = 2, 3, ...``.

    Args:
        shape: ``(H, W)``.
        center: ``(x, y)`` pixel coordinates.
        radius: mean radius in pixels (> 0).
        amplitudes: ``a_k`` for ``k = 2 .. len + 1``.
        phases: ``phi_k``, same length.

    Returns:
        ``(H, W)`` bool mask.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}.")
    if len(amplitudes) != len(phases):
        raise ValueError("amplitudes and phases must have the same length.")
    dx, dy, r = _polar_grid(shape, center)
    theta = np.arctan2(dy, dx)
    boundary = np.ones_like(theta)
    for k, (a, phi) in enumerate(zip(amplitudes, phases), start=2):
        boundary += a * np.cos(k * theta + phi)
    return r <= radius * boundary


def ellipse_mask(shape: Sequence[int], center: Sequence[float], semi_axes: Sequence[float], angle: float) -> np.ndarray:
    """Pixels inside an ellipse with semi-axes ``(a, b)`` rotated by ``angle`` radians.

    Args:
        shape: ``(H, W)``.
        center: ``(x, y)`` pixel coordinates.
        semi_axes: ``(a, b)`` in pixels (> 0).
        angle: rotation in radians.

    Returns:
        ``(H, W)`` bool mask.
    """
    a, b = (float(s) for s in semi_axes)
    if a <= 0 or b <= 0:
        raise ValueError(f"semi_axes must be positive, got {semi_axes}.")
    dx, dy, _ = _polar_grid(shape, center)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _check_slice(image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    brain = np.asarray(brain) > 0
    if image.ndim != 2 or image.shape != brain.shape:
        raise ValueError(f"Expected 2D image and brain mask of one shape, got {image.shape} and {brain.shape}.")
    if not np.isfinite(image).all():
        raise ValueError("The image contains NaN or inf.")
    return image, brain


def paint_stroke_like(
    image: np.ndarray,
    brain: np.ndarray,
    center: Sequence[float],
    radius: float,
    amplitudes: Sequence[float] | np.ndarray,
    phases: Sequence[float] | np.ndarray,
    factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Darken a star-shaped region (clipped to the brain) by ``factor``.

    Args:
        image: ``(H, W)`` slice in [0, 1].
        brain: ``(H, W)`` brain mask.
        center, radius, amplitudes, phases: the star shape (see :func:`star_shape_mask`).
        factor: intensity multiplier, docs/data.md: ``U(0.3, 0.6)``.

    Returns:
        ``(painted image float32, mask bool)``; the mask is exactly the painted pixels.
    """
    image, brain = _check_slice(image, brain)
    mask = star_shape_mask(image.shape, center, radius, amplitudes, phases) & brain
    out = image.copy()
    out[mask] *= factor
    return out, mask


def paint_tumour_like(
    image: np.ndarray,
    brain: np.ndarray,
    center: Sequence[float],
    radius: float,
    aspect: float,
    angle: float,
    core_gain: float,
    ring_width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a bright elliptic core, ``min(1, p90(brain) * core_gain)``, inside a ring at 1.0 (clipped to the brain).

    Args:
        image: ``(H, W)`` slice in [0, 1].
        brain: ``(H, W)`` brain mask.
        center: ``(x, y)``.
        radius: core radius in pixels; the semi-axes are ``radius * sqrt(aspect)`` and ``radius / sqrt(aspect)``.
        aspect: axis ratio, docs/data.md ``U(1, 1.6)``.
        angle: rotation in radians.
        core_gain: docs/data.md ``U(1.05, 1.2)``.
        ring_width: ring thickness in pixels (0 for none; docs/data.md: 1-3, none when ``radius < 3``).

    Returns:
        ``(painted image float32, mask bool)``; the mask is core and ring, exactly the painted pixels.
    """
    image, brain = _check_slice(image, brain)
    if not brain.any():
        raise ValueError("The brain mask is empty.")
    if ring_width < 0:
        raise ValueError(f"ring_width must be >= 0, got {ring_width}.")
    wm = float(np.percentile(image[brain], 90))
    semi = (radius * math.sqrt(aspect), radius / math.sqrt(aspect))
    core = ellipse_mask(image.shape, center, semi, angle) & brain
    outer = ellipse_mask(image.shape, center, (semi[0] + ring_width, semi[1] + ring_width), angle) & brain
    out = image.copy()
    out[outer] = 1.0
    out[core] = min(1.0, wm * core_gain)
    return out, outer


def _like(array: np.ndarray, reference: NdarrayOrTensor, numpy_dtype: type) -> NdarrayOrTensor:
    """``array`` as ``reference``'s type and device: float32 tensors for torch inputs, ``numpy_dtype`` for numpy."""
    if isinstance(reference, torch.Tensor):
        return convert_to_dst_type(array.astype(np.float32), reference, dtype=torch.float32)[0]
    return array.astype(numpy_dtype)


class RandSyntheticLesion(RandomizableTransform):
    """Paint one random synthetic lesion of a given type and size class into a 2D brain slice.

    Parameters are drawn per docs/data.md Recipe 2; the target area is drawn log-uniformly inside the size class (capped at
    half the slice's brain area so a lesion never replaces most of the brain) and the whole lesion is redrawn until its
    mask pixel count, after clipping to the brain, falls in the class. Counts refer to 128 x 128 slices (1.5 mm);
    on other sizes pass ``pixel_scale = size / 128`` so distances and areas scale with the pixel size.

    Args:
        lesion_type: ``"stroke"``, ``"tumour"`` or ``"random"`` (either, 50/50).
        size_class: 1 small, 2 medium, 3 large, or 0 for a random class.
        prob: probability of painting; otherwise the image is returned with an empty label.
        max_tries: redraws before giving up.
        pixel_scale: slice side / 128.

    Raises:
        ValueError: bad option (unknown type/class, prob outside [0, 1], max_tries < 1).
        RuntimeError: no lesion of the class fits the slice within ``max_tries``.
    """

    def __init__(
        self,
        lesion_type: str = "random",
        size_class: int = 0,
        prob: float = 1.0,
        max_tries: int = 200,
        pixel_scale: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.lesion_type = look_up_option(lesion_type, (*LESION_TYPES, "random"))
        if size_class not in (0, *LESION_SIZE_CLASSES):
            raise ValueError(f"size_class must be 0 (random) or one of {list(LESION_SIZE_CLASSES)}, got {size_class}.")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}.")
        if pixel_scale <= 0:
            raise ValueError(f"pixel_scale must be positive, got {pixel_scale}.")
        self.size_class = size_class
        self.max_tries = max_tries
        self.pixel_scale = pixel_scale
        self.last_lesion_type = "none"
        self.last_size_class = 0

    def _choose_center(self, inside_distance: np.ndarray, low: float, high: float) -> tuple[int, int]:
        candidates = np.argwhere((inside_distance >= low) & (inside_distance <= high))
        if len(candidates) == 0:
            raise RuntimeError(f"No pixel lies {low}-{high} px inside the brain mask: the slice is too small.")
        x, y = candidates[self.R.randint(len(candidates))]
        return int(x), int(y)

    def _draw_once(
        self, image: np.ndarray, brain: np.ndarray, inside: np.ndarray, lesion_type: str, size_class: int
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.pixel_scale
        low, high = LESION_SIZE_CLASSES[size_class]
        high = min(high, max(low + 1, 0.5 * brain.sum() / s**2))  # counts are defined at 128 x 128
        area = math.exp(self.R.uniform(math.log(low + 1), math.log(high))) * s**2
        total_radius = math.sqrt(area / math.pi)
        if lesion_type == "stroke":
            center = self._choose_center(inside, 3 * s, 15 * s)
            amplitudes = self.R.uniform(0.0, 0.15, 4)
            phases = self.R.uniform(0.0, 2 * math.pi, 4)
            return paint_stroke_like(image, brain, center, total_radius, amplitudes, phases, self.R.uniform(0.3, 0.6))
        center = self._choose_center(inside, 8 * s, np.inf)
        ring = int(self.R.randint(1, 4))
        core_radius = total_radius - ring * s
        if core_radius < 3 * s:  # no ring around small tumours
            core_radius, ring = total_radius, 0
        return paint_tumour_like(
            image,
            brain,
            center,
            core_radius,
            aspect=self.R.uniform(1.0, 1.6),
            angle=self.R.uniform(0.0, math.pi),
            core_gain=self.R.uniform(1.05, 1.2),
            ring_width=max(int(round(ring * s)), 1) if ring else 0,
        )

    # takes the brain mask as a second argument, which MONAI's one-argument Transform.__call__ does not declare
    def __call__(  # type: ignore[override]
        self, img: NdarrayOrTensor, brain_mask: NdarrayOrTensor, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Paint a lesion.

        Args:
            img: ``(1, H, W)`` slice in [0, 1] (numpy or torch).
            brain_mask: ``(1, H, W)`` brain mask.
            randomize: draw whether to paint (``prob``); the geometry is always drawn afresh.

        Returns:
            ``(image, label)``: the painted image (input type, float32) and the exact lesion mask ``(1, H, W)``
            (input type, uint8 for numpy, float for torch). ``last_lesion_type`` and ``last_size_class`` say what was
            painted.
        """
        image_np = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        brain_np = brain_mask.detach().cpu().numpy() if isinstance(brain_mask, torch.Tensor) else np.asarray(brain_mask)
        if image_np.ndim != 3 or image_np.shape[0] != 1 or brain_np.shape != image_np.shape:
            raise ValueError(f"Expected (1, H, W) image and brain mask, got {image_np.shape} and {brain_np.shape}.")
        if randomize:
            self.randomize(None)
        image2d, brain2d = _check_slice(image_np[0], brain_np[0])
        mask2d = np.zeros_like(brain2d)
        self.last_lesion_type, self.last_size_class = "none", 0
        if self._do_transform:
            lesion_type = self.lesion_type if self.lesion_type != "random" else LESION_TYPES[self.R.randint(2)]
            size_class = self.size_class or int(self.R.randint(1, len(LESION_SIZE_CLASSES) + 1))
            inside = distance_transform_edt(brain2d)
            for _ in range(self.max_tries):
                painted, mask = self._draw_once(image2d, brain2d, inside, lesion_type, size_class)
                if size_class_of(int(round(mask.sum() / self.pixel_scale**2))) == size_class:
                    image2d, mask2d = painted, mask
                    self.last_lesion_type, self.last_size_class = lesion_type, size_class
                    break
            else:
                raise RuntimeError(
                    f"Could not fit a {SIZE_CLASS_NAMES[size_class]} {lesion_type} lesion in {self.max_tries} tries."
                )
        return _like(image2d[None], img, np.float32), _like(mask2d[None], img, np.uint8)


class RandSyntheticLesiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSyntheticLesion`.

    Adds ``label_key`` (exact lesion mask, ``(1, H, W)``), ``"size_class"`` (0 none, 1 small, 2 medium, 3 large) and
    ``"lesion_type"`` (``"none"``, ``"stroke"`` or ``"tumour"``) to the dictionary.

    Args:
        keys: the image key (exactly one).
        brain_mask_key: key of the ``(1, H, W)`` brain mask.
        label_key: output key of the lesion mask.
        lesion_type, size_class, prob, max_tries, pixel_scale: see :class:`RandSyntheticLesion`.
        allow_missing_keys: don't raise when the image key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        brain_mask_key: str = "brain_mask",
        label_key: str = "label",
        lesion_type: str = "random",
        size_class: int = 0,
        prob: float = 1.0,
        max_tries: int = 200,
        pixel_scale: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ValueError(f"RandSyntheticLesiond paints one image key, got {self.keys}.")
        self.brain_mask_key = brain_mask_key
        self.label_key = label_key
        self.painter = RandSyntheticLesion(lesion_type, size_class, 1.0, max_tries, pixel_scale)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSyntheticLesiond:
        super().set_random_state(seed, state)
        self.painter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key], d[self.label_key] = self.painter(d[key], d[self.brain_mask_key])
                d["lesion_type"], d["size_class"] = self.painter.last_lesion_type, self.painter.last_size_class
            else:
                d[self.label_key] = _like(np.zeros(np.shape(d[key]), dtype=np.uint8), d[key], np.uint8)
                d["lesion_type"], d["size_class"] = "none", 0
        return d
