# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE's synthetic anomaly corruption: soft shape masks and foreign-patch interpolation (array + dict pairs).

A corrupted image is x_t = (1 − α·m)·x0 + α·m·x_fp (paper Eq. 1): m ∈ [0, 1] is a soft shape mask inside a square
"anomaly window" of side P centred on a random foreground pixel, x_fp a P × P patch cropped from the foreground of
*another* healthy image and placed in that window, α the interpolation factor tied to a timestep t by DISYRE's
schedule (:mod:`monai_diffad.disyre_schedule`).

Geometry follows the reference code (snavalm/disyre) at its scale — a 64-px window in 128² images, shapes of
10–44 px, edge blur σ ∈ [0, 5] px with probability 0.7, rectangles rotated by up to ±15° with probability 0.5 — and
is scaled by P/64 for other window sizes (P defaults to half the image side). The reference's third shape kind is
the mid-slice of one of 300 stored 3D lesion shapes; those files are not available here, so the third kind is our own
generator of smooth random blobs (a star-shaped region with a random low-order Fourier boundary, squashed and rotated).

The reference trains with one of two named recipes, both available here by name (:data:`DISYRE_CORRUPTIONS`, or
``preset`` of :class:`RandForeignPatchCorruptiond`):

- ``"fpi"``: the foreign patch as is (no intensity matching), α ~ U[0, 1].
- ``"dag"`` (the recipe its README trains with): the foreign patch min-max matched to the image, then an additive
  shift of randomly chosen intensity classes inside the shape (:func:`intensity_class_bias`); the timestep follows
  max(α, α_bias), α_bias being the largest change the shift made.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import GaussianSmooth, MapTransform, RandBiasField, Randomizable, Transform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_dst_type, convert_to_tensor, look_up_option

from monai_diffad.disyre_schedule import corruption_alphas, disyre_scheduler, timestep_for_alpha
from monai_diffad.maps.smoothing import gaussian_smooth

__all__ = [
    "SHAPE_KINDS",
    "INTENSITY_MATCHING",
    "TIMESTEP_SAMPLING",
    "DAG_CODEBOOK",
    "DISYRE_CORRUPTIONS",
    "interpolate_foreign_patch",
    "match_intensity",
    "quantize_intensities",
    "class_selection_probs",
    "intensity_class_bias",
    "RandSoftShapeMask",
    "RandSoftShapeMaskd",
    "RandForeignPatchCorruption",
    "RandForeignPatchCorruptiond",
]

SHAPE_KINDS = ("rectangle", "disc", "blob")
#: How the foreign patch's intensities are adapted inside the shape: ``"none"`` (reference 'fpi' config),
#: ``"minmax"`` (reference 'dag' config: the patch's min/max are mapped onto the image's) or ``"mean"``.
INTENSITY_MATCHING = ("none", "minmax", "mean")
#: ``"uniform_alpha"`` (reference): α ~ U[alpha_range], t = the step whose α_t is nearest.
#: ``"uniform_t"`` (paper): t ~ U{1, …, T}, α = α_t.
TIMESTEP_SAMPLING = ("uniform_alpha", "uniform_t")
#: The reference's anomaly window (pixels) for which the size and blur defaults are given.
_REFERENCE_WINDOW = 64
_BLOB_HARMONICS = (2, 3, 4, 5)
#: Intensity levels of the reference 'dag' recipe (images in [0, 1]): each pixel belongs to the class of its nearest.
DAG_CODEBOOK = (0.00565079, 0.38283867, 0.61224216, 0.76920754, 0.9385473)
#: The reference's class-selection pseudo-count and indicator blur σ (pixels), for its 64-px anomaly window.
_CLASS_PSEUDO_COUNT = 1000.0
_CLASS_BLUR_SIGMA = 1.0

_REFERENCE_COMMON: dict[str, Any] = {
    "timestep_sampling": "uniform_alpha",
    "alpha_range": (0.0, 1.0),
    "prob": 1.0,
    "bias_prob": 0.0,
    "cache_size": 512,
    "zero_alpha_if_unchanged": True,
}
#: The reference's two training recipes as keyword arguments of :class:`RandForeignPatchCorruption`
#: (snavalm/disyre at e149f29). ``"fpi"``: the foreign patch as is. ``"dag"``: min-max matched foreign patch plus the
#: intensity-class shift of :func:`intensity_class_bias`, the recipe the reference's README trains with.
DISYRE_CORRUPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "fpi": MappingProxyType({**_REFERENCE_COMMON, "intensity_matching": "none", "class_bias": False}),
        "dag": MappingProxyType(
            {
                **_REFERENCE_COMMON,
                "intensity_matching": "minmax",
                "class_bias": True,
                "class_bias_codebook": DAG_CODEBOOK,
                "class_bias_range": (0.0, 1.0),
            }
        ),
    }
)


def interpolate_foreign_patch(
    x0: torch.Tensor, foreign: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """x_t = (1 − α·m)·x0 + α·m·x_fp (paper Eq. 1).

    Args:
        x0: clean images, ``(C, H, W)`` or ``(B, C, H, W)``, typically in [0, 1].
        foreign: foreign patch canvas, same shape as ``x0``.
        mask: soft mask in [0, 1], broadcastable to ``x0`` (``(1, H, W)`` or ``(B, 1, H, W)``).
        alpha: scalar, or ``(B,)`` per image for batched inputs.

    Returns:
        The corrupted images, shape of ``x0``; a convex combination, so in [0, 1] when both inputs are.
    """
    a = torch.as_tensor(alpha, dtype=x0.dtype, device=x0.device)
    if a.ndim == 1:
        a = a.reshape(-1, *([1] * (x0.ndim - 1)))
    weight = a * mask.to(x0.dtype)
    return (1 - weight) * x0 + weight * foreign


def match_intensity(foreign: torch.Tensor, image: torch.Tensor, region: torch.Tensor, mode: str) -> torch.Tensor:
    """Adapt the foreign patch's intensities to the image's inside ``region``, clipped to [0, 1].

    Args:
        foreign: ``(C, H, W)`` foreign patch canvas in [0, 1].
        image: ``(C, H, W)`` image being corrupted, in [0, 1].
        region: ``(H, W)`` boolean pixels where statistics are taken (the shape's support).
        mode: one of :data:`INTENSITY_MATCHING`.

    Returns:
        The adapted canvas (unchanged for ``"none"`` or an empty region).
    """
    mode = look_up_option(mode, INTENSITY_MATCHING)
    if mode == "none" or not bool(region.any()):
        return foreign
    src, fp = image[:, region], foreign[:, region]
    if mode == "mean":
        out = foreign - fp.mean() + src.mean()
    else:
        # the small constant keeps a flat patch from being blown up to the full range
        out = (foreign - fp.min()) / (fp.max() - fp.min() + 1e-3) * (src.max() - src.min()) + src.min()
    return out.clamp(0.0, 1.0)


def quantize_intensities(image: torch.Tensor, codebook: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The index of the nearest codebook level of every value (ties go to the lower index).

    Args:
        image: any shape, e.g. ``(C, H, W)``, values typically in [0, 1].
        codebook: ``(K,)`` intensity levels.

    Returns:
        Long tensor of ``image``'s shape with values in [0, K − 1].
    """
    levels = torch.as_tensor(codebook, dtype=image.dtype, device=image.device)
    return (image[..., None] - levels).abs().argmin(dim=-1)


def class_selection_probs(
    image: torch.Tensor,
    mask: torch.Tensor,
    codebook: Sequence[float] | torch.Tensor = DAG_CODEBOOK,
    pseudo_count: float = _CLASS_PSEUDO_COUNT,
) -> torch.Tensor:
    """Probability of selecting each intensity class for the shift: n_k / (Σ_j n_j + pseudo_count).

    n_k counts the values of class k (:func:`quantize_intensities`) at the pixels of the mask's support (m > 0), over
    all channels. The pseudo-count makes large classes of large shapes likely and keeps every class unlikely in a
    small shape.

    Args:
        image: ``(C, H, W)`` image in [0, 1].
        mask: ``(1, H, W)`` soft mask in [0, 1].
        codebook: ``(K,)`` intensity levels.
        pseudo_count: the reference's 1000 (for its 64-px anomaly window), > 0.

    Returns:
        ``(K,)`` float64 probabilities in [0, 1), summing to less than 1.
    """
    classes = quantize_intensities(image, codebook)
    counts = torch.bincount(classes[(mask > 0).expand_as(classes)], minlength=len(codebook)).double()
    return counts / (counts.sum() + pseudo_count)


def intensity_class_bias(
    image: torch.Tensor,
    mask: torch.Tensor,
    selected: torch.Tensor,
    shift: float,
    codebook: Sequence[float] | torch.Tensor = DAG_CODEBOOK,
    sigma: float = _CLASS_BLUR_SIGMA,
) -> tuple[torch.Tensor, float]:
    """The reference 'dag' intensity shift: out = x + shift·m·G_σ(1[class(x) ∈ selected]), clipped to [0, 1].

    The indicator of the pixels whose intensity class (:func:`quantize_intensities`) is selected is blurred with a
    Gaussian of σ pixels (scipy's ``'reflect'`` border) so that the shift has no hard edges, and weighted by the mask.
    With no class selected every class is shifted (the reference's fallback), i.e. the whole shape.

    Args:
        image: ``(C, H, W)`` image in [0, 1] (in DISYRE, the foreign-patch corrupted image).
        mask: ``(1, H, W)`` soft mask in [0, 1].
        selected: ``(K,)`` bool, the shifted classes.
        shift: signed shift in intensity units, reference ±U[0, 1].
        codebook: ``(K,)`` intensity levels.
        sigma: blur σ in pixels, >= 0 (reference 1 at its 64-px window).

    Returns:
        ``(out, alpha_bias)``: the shifted ``(C, H, W)`` image, equal to ``image`` outside the mask's support and
        clipped to [0, 1] inside it, and α_bias = max |out − image| in [0, 1].
    """
    if selected.shape != (len(codebook),):
        raise ValueError(f"selected needs one flag per codebook level ({len(codebook)}), got {tuple(selected.shape)}.")
    flags = selected.to(device=image.device, dtype=torch.bool)
    if not bool(flags.any()):
        flags = torch.ones_like(flags)
    indicator = flags[quantize_intensities(image, codebook)].to(image.dtype)
    if sigma > 0:
        indicator = gaussian_smooth(indicator[None], sigma)[0]
    weight = mask.to(image.dtype) * indicator
    # only the shifted pixels are clipped, so an input slightly outside [0, 1] is left alone outside the shape
    out = torch.where(weight > 0, (image + shift * weight).clamp(0.0, 1.0), image)
    return out, float((out - image).abs().max())


def _check_pair(name: str, value: Sequence[float], low: float, high: float | None = None) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (low <= lo <= hi) or (high is not None and hi > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be (low, high) with low <= high within {bound}, got {tuple(value)!r}.")
    return lo, hi


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return float(value)


def _as_image(img: NdarrayOrTensor, name: str = "img") -> torch.Tensor:
    """``(C, H, W)`` float tensor, validated."""
    x = convert_to_tensor(img, track_meta=False).float()
    if x.ndim != 3:
        raise ValueError(f"{name} must be channel-first 2D (C, H, W), got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def _foreground_of(image: torch.Tensor, foreground: NdarrayOrTensor | None) -> torch.Tensor:
    """``(H, W)`` boolean foreground: the given mask, or pixels where any channel is above 0."""
    if foreground is None:
        return (image > 0).any(dim=0)
    fg = convert_to_tensor(foreground, track_meta=False).to(image.device)
    fg = fg.reshape(-1, *fg.shape[-2:]).gt(0).any(dim=0)
    if fg.shape != image.shape[1:]:
        raise ValueError(f"foreground has spatial shape {tuple(fg.shape)}, expected {tuple(image.shape[1:])}.")
    return fg


class RandSoftShapeMask(Randomizable, Transform):
    """Random soft shape mask m ∈ [0, 1] inside a square anomaly window centred on a foreground pixel.

    :meth:`randomize` draws the window centre (a foreground pixel at least P/2 from the border when one exists), one
    shape kind (``shape_probs`` over rectangle / disc / blob), its size and position inside the window, an optional
    rotation (rectangles) and an optional Gaussian edge blur. The mask is then rendered, cut to the window and zeroed
    on the background.

    Args:
        window_size: P, the anomaly window side in pixels; ``None`` uses half the smaller image side.
        shape_probs: relative odds of rectangle, disc and blob (reference: equal).
        size_range: shape side / diameter range in pixels of a 64-px window (reference 10–44), scaled by P/64.
        rotate_prob: probability of rotating a rectangle (reference 0.5).
        max_angle: rotation range ±``max_angle`` degrees (reference 15).
        blur_prob: probability of blurring the edges (reference 0.7).
        blur_sigma: σ range in pixels of a 64-px window (reference 0–5), scaled by P/64.
        zero_background: zero the mask where the image is background (reference ``no_anom_in_background``).

    After :meth:`randomize`, ``kind`` (str), ``center`` ((y, x) window centre), ``window`` (slices of the window),
    ``shape`` (the kind's parameters in pixels) and ``sigma`` (blur σ in pixels, 0 for none) describe the draw.

    Raises:
        ValueError: invalid options, a non-2D image, or a window larger than the image.
    """

    def __init__(
        self,
        window_size: int | None = None,
        shape_probs: Sequence[float] = (1.0, 1.0, 1.0),
        size_range: Sequence[float] = (10.0, 44.0),
        rotate_prob: float = 0.5,
        max_angle: float = 15.0,
        blur_prob: float = 0.7,
        blur_sigma: Sequence[float] = (0.0, 5.0),
        zero_background: bool = True,
    ) -> None:
        if window_size is not None and int(window_size) < 4:
            raise ValueError(f"window_size must be >= 4 pixels, got {window_size}.")
        self.window_size = None if window_size is None else int(window_size)
        probs = np.asarray(shape_probs, dtype=np.float64)
        if probs.shape != (len(SHAPE_KINDS),) or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"shape_probs needs {len(SHAPE_KINDS)} non-negative odds, not all 0; got {shape_probs!r}.")
        self.shape_probs = probs / probs.sum()
        self.size_range = _check_pair("size_range", size_range, 1.0, float(_REFERENCE_WINDOW))
        self.rotate_prob = _check_prob("rotate_prob", rotate_prob)
        self.max_angle = float(max_angle)
        self.blur_prob = _check_prob("blur_prob", blur_prob)
        self.blur_sigma = _check_pair("blur_sigma", blur_sigma, 0.0)
        self.zero_background = bool(zero_background)
        self.kind = SHAPE_KINDS[0]
        self.center = (0, 0)
        self.window = (slice(0, 0), slice(0, 0))
        self.shape: dict[str, Any] = {}
        self.sigma = 0.0

    def resolve_window(self, spatial_size: Sequence[int]) -> int:
        """P for an image of ``spatial_size`` ``(H, W)``."""
        side = min(int(s) for s in spatial_size)
        p = side // 2 if self.window_size is None else self.window_size
        if p > side or p < 4:
            raise ValueError(f"The anomaly window ({p} px) must fit in the image {tuple(spatial_size)} and be >= 4 px.")
        return p

    def _draw_center(self, foreground: torch.Tensor, p: int) -> tuple[int, int]:
        h, w = foreground.shape
        lo = p // 2
        valid = torch.zeros_like(foreground)
        valid[lo : h - (p - lo) + 1, lo : w - (p - lo) + 1] = True
        candidates = (foreground & valid).nonzero()
        if len(candidates) > 0:
            y, x = candidates[self.R.randint(len(candidates))].tolist()
            return int(y), int(x)
        return int(self.R.randint(lo, h - (p - lo) + 1)), int(self.R.randint(lo, w - (p - lo) + 1))

    def _draw_shape(self, p: int) -> dict[str, Any]:
        """Pixel parameters of the drawn kind, with its centre placed so that it stays inside the window."""
        scale = p / _REFERENCE_WINDOW
        size_lo, size_hi = (max(1.0, v * scale) for v in self.size_range)
        size_hi = min(size_hi, float(p))
        if self.kind == "rectangle":
            sides = self.R.uniform(size_lo, size_hi, size=2)
            rotate = self.R.rand() < self.rotate_prob
            angle = math.radians(self.R.uniform(-self.max_angle, self.max_angle)) if rotate else 0.0
            shape: dict[str, Any] = {"sides": sides.tolist(), "angle": angle}
            extent = float(sides.max())
        elif self.kind == "disc":
            extent = float(self.R.uniform(size_lo, size_hi))
            shape = {"diameter": extent}
        else:
            extent = float(self.R.uniform(size_lo, size_hi))
            shape = {
                "diameter": extent,
                "amplitudes": [float(self.R.uniform(0.0, 0.5 / k)) for k in _BLOB_HARMONICS],
                "phases": self.R.uniform(0.0, 2 * math.pi, size=len(_BLOB_HARMONICS)).tolist(),
                "squash": float(self.R.uniform(0.6, 1.0)),
                "angle": float(self.R.uniform(0.0, math.pi)),
            }
        margin = max(0.0, (p - extent) / 2)
        shape["offset"] = self.R.uniform(-margin, margin, size=2).tolist()
        return shape

    def randomize(self, data: tuple[torch.Tensor, int]) -> None:
        """Draw kind, window centre, shape parameters and blur for ``data = (foreground (H, W) bool, P)``."""
        foreground, p = data
        self.kind = SHAPE_KINDS[int(self.R.choice(len(SHAPE_KINDS), p=self.shape_probs))]
        self.center = self._draw_center(foreground, p)
        y0, x0 = self.center[0] - p // 2, self.center[1] - p // 2
        self.window = (slice(y0, y0 + p), slice(x0, x0 + p))
        self.shape = self._draw_shape(p)
        blur = self.R.rand() < self.blur_prob
        self.sigma = float(self.R.uniform(*self.blur_sigma)) * p / _REFERENCE_WINDOW if blur else 0.0

    def _render(self, p: int, device: torch.device) -> torch.Tensor:
        """The drawn binary shape on a ``(P, P)`` grid."""
        coords = torch.arange(p, device=device, dtype=torch.float32)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        dy, dx = yy - ((p - 1) / 2 + self.shape["offset"][0]), xx - ((p - 1) / 2 + self.shape["offset"][1])
        c, s = math.cos(self.shape.get("angle", 0.0)), math.sin(self.shape.get("angle", 0.0))
        u, v = c * dx + s * dy, -s * dx + c * dy
        if self.kind == "rectangle":
            a, b = self.shape["sides"]
            return ((u.abs() <= a / 2) & (v.abs() <= b / 2)).float()
        radius = self.shape["diameter"] / 2
        if self.kind == "disc":
            return (dx**2 + dy**2 <= radius**2).float()
        # blob: star-shaped r(θ) = 1 + Σ_k a_k cos(kθ + φ_k), squashed along v, farthest boundary point at ``radius``
        v = v / self.shape["squash"]
        amps, phases = self.shape["amplitudes"], self.shape["phases"]

        def boundary(theta: torch.Tensor) -> torch.Tensor:
            return 1.0 + sum(a * torch.cos(k * theta + ph) for a, k, ph in zip(amps, _BLOB_HARMONICS, phases))

        peak = boundary(torch.linspace(0, 2 * math.pi, 720, device=device)).max()
        return ((u**2 + v**2).sqrt() <= boundary(torch.atan2(v, u)) * (radius / peak)).float()

    def __call__(
        self, img: NdarrayOrTensor, foreground: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> NdarrayOrTensor:
        """Draw and render a mask for ``img``.

        Args:
            img: ``(C, H, W)`` image (its foreground is where any channel is > 0 unless ``foreground`` is given).
            foreground: optional ``(1, H, W)`` or ``(H, W)`` foreground mask.
            randomize: draw a new shape; ``False`` re-renders the last draw (same window and shape) for ``img``.

        Returns:
            ``(1, H, W)`` float mask in [0, 1], same type (tensor/array) and device as ``img``.
        """
        x = _as_image(img)
        fg = _foreground_of(x, foreground)
        h, w = x.shape[1:]
        p = self.resolve_window((h, w))
        if randomize:
            self.randomize((fg, p))
        elif not self.shape or self.window[0].stop > h or self.window[1].stop > w:
            raise ValueError("randomize=False needs an earlier draw for an image at least as large as this one.")
        mask = torch.zeros((1, h, w), device=x.device)
        mask[(0, *self.window)] = self._render(p, x.device)
        if self.sigma > 0:
            mask = convert_to_tensor(GaussianSmooth(sigma=self.sigma)(mask), track_meta=False)
        # the blur spreads beyond the window, where there is no foreign patch: cut it back
        inside = torch.zeros_like(mask, dtype=torch.bool)
        inside[(0, *self.window)] = True
        mask = torch.where(inside, mask, torch.zeros_like(mask)).clamp(0.0, 1.0)
        if self.zero_background:
            mask = mask * fg[None].to(mask.dtype)
        return convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class RandSoftShapeMaskd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandSoftShapeMask`: writes ``mask_key`` from the image at ``keys``.

    Args:
        keys: the image key (exactly one).
        mask_key: output key of the ``(1, H, W)`` soft mask.
        foreground_key: optional key of a foreground mask (else the image's non-zero pixels).
        kwargs: options of :class:`RandSoftShapeMask`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "corruption_mask",
        foreground_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandSoftShapeMaskd works on exactly one image key, got {self.keys}.")
        self.mask_key = mask_key
        self.foreground_key = foreground_key
        self.generator = RandSoftShapeMask(**kwargs)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSoftShapeMaskd:
        super().set_random_state(seed, state)
        self.generator.set_random_state(seed, state)
        return self

    def randomize(self, data: Mapping[Hashable, NdarrayOrTensor]) -> None:
        """Draw the shape for the image (and foreground) of ``data``."""
        image = _as_image(data[self.keys[0]])
        fg = _foreground_of(image, data[self.foreground_key] if self.foreground_key is not None else None)
        self.generator.randomize((fg, self.generator.resolve_window(image.shape[1:])))

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize(d)
            fg = d[self.foreground_key] if self.foreground_key is not None else None
            d[self.mask_key] = self.generator(d[key], foreground=fg, randomize=False)
        return d


class RandForeignPatchCorruption(Randomizable, Transform):
    """DISYRE's forward corruption of one image: x_t = (1 − α·m)·x0 + α·m·x_fp with a random (t, α, m, x_fp).

    The foreign patch is a P × P crop of the foreground bounding box of a *different* image, taken from

    - the ``foreign`` argument when given (e.g. another image of the batch, see :meth:`corrupt_batch`), else
    - a cache of patches cropped from previously seen images (reference: 512), else (first call, empty cache)
    - another location of the same image.

    Every call without ``foreign`` then crops a patch of the current image into the cache (oldest dropped when full),
    so a dataset transform feeds itself with foreign patches from the training set. The patch intensities may be adapted
    (``intensity_matching``) and multiplied by a random smooth bias field (``bias_prob``). With ``class_bias``, the
    corrupted image then gets the reference 'dag' intensity-class shift (:func:`intensity_class_bias`) inside the
    same shape, and the timestep follows max(α, α_bias). The reference's two recipes are :data:`DISYRE_CORRUPTIONS`.

    Args:
        alphas: the ``(T + 1,)`` α_t table (:func:`~monai_diffad.disyre_schedule.corruption_alphas`);
            ``None`` uses the paper's schedule (T = 100, β 1e-3 → 0.2).
        timestep_sampling: one of :data:`TIMESTEP_SAMPLING` (reference default ``"uniform_alpha"``).
        alpha_range: α range for ``"uniform_alpha"`` (reference [0, 1]).
        prob: probability of corrupting at all; otherwise α = 0 and t = 0 (reference ``p_anomaly`` = 1).
        intensity_matching: one of :data:`INTENSITY_MATCHING`.
        bias_prob: probability of multiplying the foreign patch by MONAI's ``RandBiasField`` (degree 3).
        bias_coeff_range: coefficient range of that field.
        cache_size: foreign-patch cache length (reference 512); 0 disables the cache.
        mask_kwargs: options of :class:`RandSoftShapeMask` (window size, shapes, blur).
        zero_alpha_if_unchanged: report α = 0 and t = 0 when the foreign patch left the image exactly unchanged
            (e.g. a shape wholly in the background), as the reference does.
        class_bias: add the intensity-class shift after the foreign patch (reference 'dag'). Drawn with probability
            ``prob`` (independently of the patch): a magnitude ~ U[class_bias_range] with a random sign, and each class
            k selected with the probability of :func:`class_selection_probs`. Its pseudo-count (1000) and blur σ
            (1 px) are the reference's for a 64-px window, scaled by (P/64)² and P/64.
        class_bias_codebook: the ``(K,)`` intensity levels of the classes (reference :data:`DAG_CODEBOOK`).
        class_bias_range: range of the shift's magnitude, within [0, 1] (reference [0, 1]).

    After a call, ``alpha`` (float, the α the timestep follows: max(``alpha_texture``, ``alpha_bias``)),
    ``alpha_texture`` (the foreign patch's α), ``alpha_bias`` (max |Δ| of the class shift, 0 without it),
    ``timestep`` (int), ``mask`` (``(1, H, W)`` tensor) and ``foreign`` (``(C, H, W)`` canvas) describe the last
    corruption.

    Raises:
        ValueError: invalid options or images (not ``(C, H, W)``, NaN/inf, shape mismatch with ``foreign``).
    """

    def __init__(
        self,
        alphas: Sequence[float] | torch.Tensor | None = None,
        timestep_sampling: str = "uniform_alpha",
        alpha_range: Sequence[float] = (0.0, 1.0),
        prob: float = 1.0,
        intensity_matching: str = "minmax",
        bias_prob: float = 0.0,
        bias_coeff_range: Sequence[float] = (0.0, 0.3),
        cache_size: int = 512,
        mask_kwargs: Mapping[str, Any] | None = None,
        zero_alpha_if_unchanged: bool = False,
        class_bias: bool = False,
        class_bias_codebook: Sequence[float] = DAG_CODEBOOK,
        class_bias_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        if alphas is None:
            table = corruption_alphas(disyre_scheduler())
        else:
            table = torch.as_tensor(alphas, dtype=torch.float32)
        if table.ndim != 1 or len(table) < 2 or table[0] != 0 or (table.diff() < 0).any() or table[-1] > 1:
            raise ValueError("alphas must be a 1D non-decreasing table from 0 (t = 0) to at most 1 (t = T).")
        self.alphas = table.cpu()
        self.timestep_sampling = look_up_option(timestep_sampling, TIMESTEP_SAMPLING)
        self.alpha_range = _check_pair("alpha_range", alpha_range, 0.0, 1.0)
        self.prob = _check_prob("prob", prob)
        self.intensity_matching = look_up_option(intensity_matching, INTENSITY_MATCHING)
        self.bias_prob = _check_prob("bias_prob", bias_prob)
        coeffs = _check_pair("bias_coeff_range", bias_coeff_range, 0.0)
        self.bias_field = RandBiasField(degree=3, coeff_range=coeffs, prob=1.0)
        if int(cache_size) < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}.")
        self.cache_size = int(cache_size)
        self.cache: list[torch.Tensor] = []
        self.mask_generator = RandSoftShapeMask(**dict(mask_kwargs or {}))
        self.zero_alpha_if_unchanged = bool(zero_alpha_if_unchanged)
        self.class_bias = bool(class_bias)
        codebook = torch.as_tensor(class_bias_codebook, dtype=torch.float32)
        if codebook.ndim != 1 or len(codebook) == 0 or not torch.isfinite(codebook).all():
            raise ValueError(f"class_bias_codebook must be a non-empty 1D list of finite levels, got {codebook}.")
        self.class_bias_codebook = codebook
        self.class_bias_range = _check_pair("class_bias_range", class_bias_range, 0.0, 1.0)
        # the (α, t) drawn by randomize; alpha/timestep below are what the last call reported
        self._draw = (0.0, 0)
        self.alpha = 0.0
        self.alpha_texture = 0.0
        self.alpha_bias = 0.0
        self.timestep = 0
        self.mask = torch.zeros(1, 1, 1)
        self.foreign = torch.zeros(1, 1, 1)

    @property
    def num_steps(self) -> int:
        """T."""
        return len(self.alphas) - 1

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandForeignPatchCorruption:
        """Re-seed, and empty the foreign-patch cache: its content is part of the random state."""
        super().set_random_state(seed, state)
        # the sub-transforms share this transform's stream, so one seed fixes every draw
        self.mask_generator.set_random_state(state=self.R)
        self.bias_field.set_random_state(state=self.R)
        self.cache.clear()
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw (t, α): α ~ U[alpha_range] with t nearest (``"uniform_alpha"``) or t ~ U{1..T} with α = α_t."""
        if self.R.rand() >= self.prob:
            self.alpha, self.timestep = 0.0, 0
        elif self.timestep_sampling == "uniform_alpha":
            self.alpha = float(self.R.uniform(*self.alpha_range))
            self.timestep = int(timestep_for_alpha(torch.tensor([self.alpha]), self.alphas)[0])
        else:
            self.timestep = int(self.R.randint(1, self.num_steps + 1))
            self.alpha = float(self.alphas[self.timestep])
        self._draw = (self.alpha, self.timestep)

    def crop_patch(self, image: torch.Tensor, p: int, foreground: NdarrayOrTensor | None = None) -> torch.Tensor:
        """A random ``(C, P, P)`` crop of the foreground bounding box of ``image`` (clamped to the image)."""
        fg = _foreground_of(image, foreground)
        h, w = image.shape[1:]
        if fg.any():
            start, end = generate_spatial_bounding_box(fg[None])
        else:
            start, end = [0, 0], [h, w]
        corner = []
        for lo, hi, size in zip(start, end, (h, w)):
            # inside the box when it is larger than P, else centred on it; always inside the image
            first = self.R.randint(lo, hi - p + 1) if hi - lo >= p else (lo + hi - p) // 2
            corner.append(int(min(max(first, 0), size - p)))
        return image[:, corner[0] : corner[0] + p, corner[1] : corner[1] + p].clone()

    def _push(self, patch: torch.Tensor) -> None:
        if self.cache_size == 0:
            return
        self.cache.append(patch.detach().cpu())
        while len(self.cache) > self.cache_size:
            self.cache.pop(0)

    def _foreign_patch(self, image: torch.Tensor, p: int, foreign: torch.Tensor | None) -> torch.Tensor:
        if foreign is not None:
            return self.crop_patch(foreign, p)
        usable = [i for i, c in enumerate(self.cache) if c.shape == (image.shape[0], p, p)]
        if usable:
            return self.cache[usable[self.R.randint(len(usable))]].to(image.device)
        return self.crop_patch(image, p)

    def _class_shift(self, image: torch.Tensor, mask: torch.Tensor, p: int) -> tuple[torch.Tensor, float]:
        """Draw and apply the class shift to ``image`` ``(C, H, W)`` inside ``mask``; returns (out, α_bias)."""
        if self.R.rand() >= self.prob:
            return image, 0.0
        magnitude = float(self.R.uniform(*self.class_bias_range))
        sign = 1.0 if self.R.rand() < 0.5 else -1.0
        scale = p / _REFERENCE_WINDOW
        # the reference's constants hold for its 64-px window: the pseudo-count is a pixel count, σ a length
        odds = class_selection_probs(image, mask, self.class_bias_codebook, _CLASS_PSEUDO_COUNT * scale**2)
        selected = torch.from_numpy(self.R.rand(len(odds)) < odds.cpu().numpy())
        return intensity_class_bias(
            image, mask, selected, sign * magnitude, self.class_bias_codebook, _CLASS_BLUR_SIGMA * scale
        )

    def __call__(
        self,
        img: NdarrayOrTensor,
        foreground: NdarrayOrTensor | None = None,
        foreign: NdarrayOrTensor | None = None,
        randomize: bool = True,
    ) -> NdarrayOrTensor:
        """Corrupt one image.

        Args:
            img: ``(C, H, W)`` healthy image in [0, 1] (background 0).
            foreground: optional ``(1, H, W)`` foreground mask (else the non-zero pixels).
            foreign: optional ``(C, H', W')`` healthy image the foreign patch is cropped from.
            randomize: draw a new (t, α); ``False`` reuses the last drawn (t, α) (mask, patch and class shift are
                always new).

        Returns:
            x_t, ``(C, H, W)``, same type and device as ``img``; in [0, 1] when ``img`` is.
        """
        x = _as_image(img)
        src = None if foreign is None else _as_image(foreign, "foreign").to(x.device)
        p = self.mask_generator.resolve_window(x.shape[1:])
        if src is not None and (src.shape[0] != x.shape[0] or min(src.shape[1:]) < p):
            raise ValueError(f"foreign {tuple(src.shape)} must have {x.shape[0]} channels and hold the anomaly window.")
        if randomize:
            self.randomize()
        mask = convert_to_tensor(self.mask_generator(x, foreground=foreground), track_meta=False).float()
        patch = self._foreign_patch(x, p, src)
        if self.R.rand() < self.bias_prob:
            patch = convert_to_tensor(self.bias_field(patch), track_meta=False).float().to(x.device).clamp(0.0, 1.0)
        canvas = torch.zeros_like(x)
        canvas[(slice(None), *self.mask_generator.window)] = patch
        canvas = match_intensity(canvas, x, mask[0] > 0, self.intensity_matching)
        if src is None:  # a caller that supplies foreign images (corrupt_batch) does not use the cache
            self._push(self.crop_patch(x, p, foreground))
        self.mask, self.foreign = mask, canvas
        alpha, timestep = self._draw
        out = interpolate_foreign_patch(x, canvas, mask, alpha)
        if self.zero_alpha_if_unchanged and torch.equal(out, x):
            alpha, timestep = 0.0, 0
        self.alpha_texture, self.alpha_bias = alpha, 0.0
        if self.class_bias:
            out, self.alpha_bias = self._class_shift(out, mask, p)
            if self.alpha_bias > alpha:
                alpha = self.alpha_bias
                timestep = int(timestep_for_alpha(torch.tensor([alpha]), self.alphas)[0])
        self.alpha, self.timestep = alpha, timestep
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]

    def corrupt_batch(self, x0: torch.Tensor, foreground: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Corrupt a batch, each image with a foreign patch from another (random) image of the same batch.

        A batch of one falls back to the cache / another location (see the class docstring).

        Args:
            x0: ``(B, C, H, W)`` healthy images in [0, 1].
            foreground: optional ``(B, 1, H, W)`` foreground masks.

        Returns:
            ``{"image": x_t (B, C, H, W), "alpha": (B,), "timesteps": (B,) long, "mask": (B, 1, H, W),
            "foreign": (B, C, H, W)}`` on ``x0``'s device.

        Raises:
            ValueError: ``x0`` is not 4D or ``foreground`` does not match it.
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim != 4:
            raise ValueError(f"x0 must be a (B, C, H, W) tensor, got {getattr(x0, 'shape', type(x0))}.")
        if foreground is not None and (foreground.shape[0] != x0.shape[0] or foreground.shape[2:] != x0.shape[2:]):
            raise ValueError(f"foreground {tuple(foreground.shape)} does not match x0 {tuple(x0.shape)}.")
        b = x0.shape[0]
        images, alphas, steps, masks, canvases = [], [], [], [], []
        for i in range(b):
            j = (i + 1 + self.R.randint(b - 1)) % b if b > 1 else None
            fg = None if foreground is None else foreground[i]
            image = self(x0[i], foreground=fg, foreign=None if j is None else x0[j])
            assert isinstance(image, torch.Tensor)  # the output has the input's type
            images.append(image)
            alphas.append(self.alpha)
            steps.append(self.timestep)
            masks.append(self.mask)
            canvases.append(self.foreign)
        return {
            "image": torch.stack(images),
            "alpha": torch.tensor(alphas, dtype=torch.float32, device=x0.device),
            "timesteps": torch.tensor(steps, dtype=torch.long, device=x0.device),
            "mask": torch.stack(masks),
            "foreign": torch.stack(canvases),
        }


class RandForeignPatchCorruptiond(Randomizable, MapTransform):
    """Dictionary version of :class:`RandForeignPatchCorruption` for a training ``Dataset``.

    The image at ``keys`` is replaced by x_t; the clean image goes to ``target_key`` (the regression target), the
    timestep to ``timestep_key`` (``()`` long tensor), the α it follows to ``alpha_key`` and the soft mask to
    ``mask_key``.

    Args:
        keys: the image key (exactly one).
        target_key: where the clean x0 is kept.
        timestep_key: output key of t.
        alpha_key: output key of α.
        mask_key: output key of m (``None`` to skip).
        foreground_key: optional key of a foreground mask.
        preset: ``None`` or the name of a reference recipe in :data:`DISYRE_CORRUPTIONS` (``"fpi"``, ``"dag"``); its
            options are the defaults of ``kwargs``, which override them one by one.
        kwargs: options of :class:`RandForeignPatchCorruption`.

    Raises:
        ValueError: more than one key, an unknown ``preset`` or invalid options.
    """

    def __init__(
        self,
        keys: KeysCollection,
        target_key: str = "x0",
        timestep_key: str = "timesteps",
        alpha_key: str = "alpha",
        mask_key: str | None = "corruption_mask",
        foreground_key: str | None = None,
        allow_missing_keys: bool = False,
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandForeignPatchCorruptiond works on exactly one image key, got {self.keys}.")
        self.target_key, self.timestep_key, self.alpha_key = target_key, timestep_key, alpha_key
        self.mask_key = mask_key
        self.foreground_key = foreground_key
        self.preset = None if preset is None else look_up_option(preset, tuple(DISYRE_CORRUPTIONS))
        defaults = DISYRE_CORRUPTIONS[self.preset] if self.preset is not None else {}
        self.corruption = RandForeignPatchCorruption(**{**defaults, **kwargs})

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandForeignPatchCorruptiond:
        super().set_random_state(seed, state)
        self.corruption.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.corruption.randomize()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            fg = d[self.foreground_key] if self.foreground_key is not None else None
            clean = d[key]
            d[key] = self.corruption(clean, foreground=fg)
            d[self.target_key] = clean
            d[self.timestep_key] = torch.tensor(self.corruption.timestep, dtype=torch.long)
            d[self.alpha_key] = torch.tensor(self.corruption.alpha, dtype=torch.float32)
            if self.mask_key is not None:
                d[self.mask_key] = convert_to_dst_type(self.corruption.mask, clean)[0]
        return d
