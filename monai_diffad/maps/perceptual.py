# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Perceptual distance maps: LPIPS when its backbone weights are on disk, an SSIM map otherwise.

The ``lpips`` wheel ships its linear calibration layers but not the ImageNet backbone, which
``lpips.LPIPS`` would download from the torchvision hub. We never download. Policy:

1. ``backbone_path`` given, or the torchvision file of the chosen net present in
   ``torch.hub.get_dir()/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``): build LPIPS with a
   randomly initialised trunk (``pnet_rand=True``, no download) and load the backbone from that file.
2. Otherwise warn once, naming the file to place and where, and use a documented offline term:
   the structural dissimilarity map ``(1 - SSIM) / 2`` (``fallback="ssim"`` or
   ``"multiscale_ssim"``), or raise (``fallback="error"``). A random trunk is never called LPIPS.

``PerceptualDistance.is_lpips`` and ``.kind`` say which term is in use, for reports.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import lpips
import torch
from monai.utils import look_up_option

from monai_diffad.maps._checks import check_image_tensor, check_same_shape
from monai_diffad.maps.smoothing import gaussian_smooth
from monai_diffad.maps.ssim import structural_dissimilarity_map

__all__ = [
    "BACKBONE_FILES",
    "PERCEPTUAL_FALLBACKS",
    "PERCEPTUAL_NETS",
    "PerceptualDistance",
    "PerceptualFallbackWarning",
    "default_backbone_path",
    "load_lpips_backbone",
    "perceptual_anomaly_map",
    "resolve_backbone_path",
]

# torchvision's published file names, as torch.hub caches them
BACKBONE_FILES = {
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}
PERCEPTUAL_NETS = tuple(BACKBONE_FILES)
# smallest in-plane side each LPIPS trunk's pooling cascade accepts (measured with lpips 0.1.4 / torchvision)
_LPIPS_MIN_SIDE = {"squeeze": 17, "alex": 31, "vgg": 16}
PERCEPTUAL_FALLBACKS = ("ssim", "multiscale_ssim", "error")
_MULTISCALE_LEVELS = 3
# nets for which the missing-backbone warning was already shown in this process
_WARNED_NETS: set[str] = set()


class PerceptualFallbackWarning(UserWarning):
    """Warns that LPIPS backbone weights are missing and an offline perceptual term is used."""


def default_backbone_path(net: str) -> str:
    """Where torch.hub keeps the torchvision backbone file of ``net`` (whether present or not).

    Args:
        net: ``"squeeze"``, ``"alex"`` or ``"vgg"``.

    Returns:
        ``torch.hub.get_dir()/checkpoints/<file>``, which follows ``$TORCH_HOME``.
    """
    return os.path.join(torch.hub.get_dir(), "checkpoints", BACKBONE_FILES[look_up_option(net, PERCEPTUAL_NETS)])


def resolve_backbone_path(net: str, backbone_path: str | os.PathLike | None = None) -> str | None:
    """The backbone file to load for ``net``, or None when none is available.

    Args:
        net: ``"squeeze"``, ``"alex"`` or ``"vgg"``.
        backbone_path: explicit file; when given it must exist.

    Returns:
        ``backbone_path`` if given, else the hub-cache file if it exists, else None.

    Raises:
        FileNotFoundError: when an explicit ``backbone_path`` does not exist.
    """
    if backbone_path is not None:
        if not os.path.isfile(backbone_path):
            raise FileNotFoundError(f"LPIPS backbone file not found: {os.fspath(backbone_path)!r}.")
        return os.fspath(backbone_path)
    candidate = default_backbone_path(net)
    return candidate if os.path.isfile(candidate) else None


def load_lpips_backbone(model: lpips.LPIPS, path: str | os.PathLike) -> None:
    """Load a torchvision backbone state dict into an ``lpips.LPIPS`` trunk, in place.

    lpips splits torchvision's ``features`` into ``slice1..sliceN`` but keeps the torchvision
    child indices as module names, so ``net.slice2.3.squeeze.weight`` is ``features.3.squeeze.weight``.

    Args:
        model: LPIPS model built with ``pnet_rand=True``.
        path: torchvision state dict file (``squeezenet1_1``, ``alexnet`` or ``vgg16``), loaded
            with ``weights_only=True``.

    Raises:
        ValueError: when the file is not a state dict matching the model's backbone.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict (got {type(state).__name__}).")
    remapped = {}
    for key in model.net.state_dict():
        source = "features." + key.split(".", 1)[1]
        if source not in state:
            raise ValueError(
                f"{os.fspath(path)!r} lacks {source!r}: not a torchvision '{model.pnet_type}' backbone state dict."
            )
        remapped[key] = state[source]
    try:
        model.net.load_state_dict(remapped, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{os.fspath(path)!r} does not match the '{model.pnet_type}' LPIPS backbone: {error}"
        ) from error


def _build_lpips(net: str, spatial: bool, path: str) -> lpips.LPIPS:
    with warnings.catch_warnings():
        # lpips still passes torchvision's deprecated `pretrained=` argument; nothing is downloaded
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
        model = lpips.LPIPS(net=net, spatial=spatial, pretrained=True, pnet_rand=True, verbose=False)
    load_lpips_backbone(model, path)
    return model


class PerceptualDistance(torch.nn.Module):
    """Perceptual distance map between two images: LPIPS if possible, else an SSIM-based map.

    The module is frozen (always eval mode, no gradients) and follows the device of its inputs.
    3D inputs are processed as a batch of 2D slices along the last axis; grey images are repeated
    to 3 channels for LPIPS. On CPU each image's map is bit-identical whatever the batch it comes in; on
    GPU, LPIPS runs batched and cuDNN may round differently for different batch sizes.

    Args:
        net: LPIPS trunk, ``"squeeze"`` (THOR, AutoDDPM), ``"alex"`` or ``"vgg"``.
        backbone_path: torchvision backbone state dict to use; default: the torch hub cache file.
        fallback: term used when no backbone file is found: ``"ssim"`` (single-scale
            ``(1 - SSIM)/2``, Gaussian window sigma 1.5, 11 x 11), ``"multiscale_ssim"`` (mean over 3
            pyramid levels, see :func:`structural_dissimilarity_map`) or ``"error"`` (raise).
        spatial: return a per-pixel map; if False, one value per image (mean over space).
        input_range: ``(low, high)`` value range of the images given to ``forward``; they are mapped
            linearly to [0, 1] (not clipped: the THOR reference feeds x0 estimates in [-1, 1]).
        reference_double_mapping: reproduce the THOR/AutoDDPM references, which map images
            ``u -> 2u - 1`` and also call lpips with ``normalize=True``, so the net sees ``4u - 3``
            for ``u`` in [0, 1]. Keep True for parity with published numbers; False feeds the
            ``2u - 1`` that LPIPS was calibrated on. Unused by the SSIM fallback.
        slice_batch_size: 3D inputs only: number of 2D slices per LPIPS call (None: all at once).

    Attributes:
        is_lpips: True when real LPIPS (with loaded backbone weights) is used.
        kind: ``"lpips-<net>"``, ``"ssim"`` or ``"multiscale_ssim"``.
        backbone_file: path of the loaded backbone file, or None.

    Raises:
        FileNotFoundError: when ``backbone_path`` does not exist, or no backbone is found and
            ``fallback="error"``.
        ValueError: for unknown options, an empty ``input_range`` or a backbone file that does not
            match ``net``.
    """

    def __init__(
        self,
        net: str = "squeeze",
        backbone_path: str | os.PathLike | None = None,
        fallback: str = "ssim",
        spatial: bool = True,
        input_range: Sequence[float] = (0.0, 1.0),
        reference_double_mapping: bool = True,
        slice_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.net_name = look_up_option(net, PERCEPTUAL_NETS)
        self.fallback = look_up_option(fallback, PERCEPTUAL_FALLBACKS)
        if len(input_range) != 2 or not float(input_range[1]) > float(input_range[0]):
            raise ValueError(f"input_range must be (low, high) with high > low, got {tuple(input_range)}.")
        low, high = float(input_range[0]), float(input_range[1])
        if slice_batch_size is not None and slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be a positive int or None, got {slice_batch_size}.")
        self.input_range = (low, high)
        self.spatial = bool(spatial)
        self.reference_double_mapping = bool(reference_double_mapping)
        self.slice_batch_size = slice_batch_size

        self.backbone_file = resolve_backbone_path(self.net_name, backbone_path)
        self.lpips_model: lpips.LPIPS | None = None
        if self.backbone_file is not None:
            self.lpips_model = _build_lpips(self.net_name, self.spatial, self.backbone_file)
            self.kind = f"lpips-{self.net_name}"
        else:
            self._report_missing_backbone()
            self.kind = self.fallback
        self.is_lpips = self.lpips_model is not None
        self.requires_grad_(False)
        self.eval()

    def _report_missing_backbone(self) -> None:
        expected = default_backbone_path(self.net_name)
        message = (
            f"LPIPS backbone weights for net='{self.net_name}' were not found: place the torchvision file "
            f"'{BACKBONE_FILES[self.net_name]}' in '{os.path.dirname(expected)}' (set TORCH_HOME to move it) "
            "or pass backbone_path. Nothing is downloaded."
        )
        if self.fallback == "error":
            raise FileNotFoundError(message)
        if self.net_name not in _WARNED_NETS:
            _WARNED_NETS.add(self.net_name)
            warnings.warn(
                f"{message} Using the offline '{self.fallback}' structural dissimilarity map (1 - SSIM)/2 "
                "instead; it is NOT LPIPS.",
                PerceptualFallbackWarning,
                stacklevel=3,
            )

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Keep eval mode whatever is asked: a frozen metric must not enable lpips' dropout."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance map between ``x`` and ``y``.

        Args:
            x: images, (B, C, H, W) or (B, C, H, W, D) with C in {1, 3}, values in ``input_range``.
            y: images of the same shape (order does not matter: both terms are symmetric).

        Returns:
            (B, 1, *spatial) non-negative map (SSIM fallback: in [0, 1]; LPIPS: typically < 1 but
            unbounded), or (B, 1, 1, 1[, 1]) when ``spatial=False``; dtype of ``x``.

        Raises:
            TypeError: when an input is not a floating-point tensor.
            ValueError: for wrong dimensions, differing shapes, non-finite values, C not in {1, 3}, or images too
                small for the LPIPS trunk.
        """
        check_image_tensor(x, "x")
        check_image_tensor(y, "y")
        check_same_shape(x, y)
        if x.shape[1] not in (1, 3):
            raise ValueError(f"PerceptualDistance needs 1 or 3 channels, got {x.shape[1]}.")
        if self.lpips_model is not None and min(x.shape[2:4]) < _LPIPS_MIN_SIDE[self.net_name]:
            raise ValueError(
                f"images of in-plane size {tuple(x.shape[2:4])} are too small for {self.kind} (at least "
                f"{_LPIPS_MIN_SIDE[self.net_name]} pixels per side); use larger images or the 'ssim' term."
            )
        low, high = self.input_range
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        u = (x.to(compute_dtype) - low) / (high - low)
        v = (y.to(compute_dtype) - low) / (high - low)
        result = self._volume_map(u, v) if x.ndim == 5 else self._slice_map(u, v)
        return result.to(x.dtype)

    def _volume_map(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W, D) -> (B, 1, H, W, D) from 2D slices along the last axis, in chunks.

        Non-spatial: the mean of the per-slice values, (B, 1, 1, 1, 1).
        """
        batch, channels, height, width, depth = u.shape

        def to_slices(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 4, 1, 2, 3).reshape(batch * depth, channels, height, width)

        u_slices, v_slices = to_slices(u), to_slices(v)
        chunk = self.slice_batch_size or u_slices.shape[0]
        starts = range(0, u_slices.shape[0], chunk)
        maps = torch.cat([self._slice_map(u_slices[i : i + chunk], v_slices[i : i + chunk]) for i in starts])
        volume = maps.reshape(batch, depth, 1, *maps.shape[2:]).permute(0, 2, 3, 4, 1)
        return volume if self.spatial else volume.mean(dim=-1, keepdim=True)

    def _slice_map(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, 1, H, W) map, or (N, 1, 1, 1) when not spatial."""
        if self.lpips_model is None:
            scales = _MULTISCALE_LEVELS if self.fallback == "multiscale_ssim" else 1
            result = structural_dissimilarity_map(u, v, scales=scales)
            return result if self.spatial else result.mean(dim=(2, 3), keepdim=True)
        if self.lpips_model.scaling_layer.shift.device != u.device:
            self.to(u.device)
        u, v = u.float().expand(-1, 3, -1, -1), v.float().expand(-1, 3, -1, -1)
        if self.reference_double_mapping:
            u, v = 2.0 * u - 1.0, 2.0 * v - 1.0
        # lpips was built with spatial=self.spatial: upsampled per-pixel map or its per-layer means. On CPU, image by
        # image: oneDNN picks batch-size-dependent convolution kernels, and a map must not depend on its batch-mates
        # (bit-identical results across batch sizes and chunking); GPUs keep the batched call for speed.
        if u.device.type == "cpu":
            return torch.cat([self.lpips_model(u[i : i + 1], v[i : i + 1], normalize=True) for i in range(len(u))])
        return self.lpips_model(u, v, normalize=True)


def perceptual_anomaly_map(
    x: torch.Tensor,
    y: torch.Tensor,
    perceptual: PerceptualDistance | None = None,
    sigma: float | None = 2.0,
    clip: bool = True,
) -> torch.Tensor:
    """Perceptual term of an anomaly map: ``clip(gaussian_smooth(P(x, y), sigma), 0, 1)``.

    The defaults are THOR's (LPIPS map smoothed with sigma = 2, spatially only, then clipped);
    AutoDDPM uses the raw map (``sigma=None, clip=False``).

    Args:
        x: images, (B, C, H, W) or (B, C, H, W, D) with C in {1, 3}.
        y: reconstructions of the same shape.
        perceptual: a spatial :class:`PerceptualDistance`; default builds ``PerceptualDistance()``
            (reads weights from disk on every call: pass one to reuse it).
        sigma: Gaussian smoothing in pixels, or None for none.
        clip: clip the result to [0, 1].

    Returns:
        (B, 1, *spatial) map, in [0, 1] when ``clip``.

    Raises:
        ValueError: when ``perceptual`` is not spatial, plus the errors of
            :meth:`PerceptualDistance.forward`.
    """
    perceptual = PerceptualDistance() if perceptual is None else perceptual
    if not perceptual.spatial:
        raise ValueError("perceptual_anomaly_map needs a PerceptualDistance with spatial=True.")
    result = perceptual(x, y)
    if sigma is not None:
        result = gaussian_smooth(result, sigma)
    return result.clamp(0.0, 1.0) if clip else result
