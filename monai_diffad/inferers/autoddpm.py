# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""AutoDDPM: Mask, Stitch and Re-Sample (Bercea et al., ICML 2023 workshop).

A partial-noising reconstruction from a high level flags candidate anomalies; the input is kept where nothing was
flagged and the flagged region is in-painted by RePaint-style re-sampling from a low level, where the known region
is the input itself noised to the current level. The final map weighs the in-painting residual by the continuous
initial map, so a pixel must look anomalous twice to score high.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import look_up_option
from tqdm.auto import tqdm

from monai_diffad.inferers.base import DetectionBatch
from monai_diffad.inferers.partial_diffusion import PartialDiffusionInferer, SeededNoise
from monai_diffad.inferers.perceptual_term import PerceptualTerm
from monai_diffad.inferers.posterior import forward_step
from monai_diffad.maps import grey_dilation, per_image_quantile, percentile_normalize, residual_map

__all__ = [
    "AutoDDPMInferer",
    "JUMP_BETA_INDICES",
    "MASK_ORDERS",
    "RESAMPLE_STARTS",
    "binary_anomaly_mask",
    "initial_anomaly_map",
    "stitch",
]

#: ``"binarize_dilate"``: threshold, then dilate (reference code); ``"dilate_binarize"``: the paper's wording.
MASK_ORDERS = ("binarize_dilate", "dilate_binarize")
#: what the re-sampling starts from, noised to ``resample_level``: the reconstruction (reference) or the input (paper).
RESAMPLE_STARTS = ("reconstruction", "input")
#: β used by the jump back from t - 1 to t: ``betas[t - 1]`` (reference) or ``betas[t]`` (the exact forward step);
#: with ``step_stride`` s the jump from t − s to t multiplies the s factors ending at that index.
JUMP_BETA_INDICES = ("t-1", "t")


def initial_anomaly_map(residual: torch.Tensor, perceptual: torch.Tensor, percentile: float = 95.0) -> torch.Tensor:
    """AutoDDPM's uncertainty map c = P × clip(r / percentile_q(r), 0, 1), the percentile taken per image.

    Args:
        residual: ``(B, 1, *spatial)`` non-negative residual |x − x̂|.
        perceptual: ``(B, 1, *spatial)`` perceptual distance P(x, x̂) (neither smoothed nor clipped, as in the
            reference).
        percentile: q of the residual normalisation (95).

    Returns:
        ``(B, 1, *spatial)`` non-negative map; in [0, 1] where P is.
    """
    return perceptual * percentile_normalize(residual, percentile)


def binary_anomaly_mask(
    anomaly_map: torch.Tensor,
    threshold: float = 0.13,
    percentile: float = 95.0,
    dilation_size: int = 3,
    order: str = "binarize_dilate",
) -> torch.Tensor:
    """The in-painting mask B: ``anomaly_map`` binarised and dilated with a flat square element.

    The threshold is ``threshold`` when it is >= 0, otherwise each image's ``percentile``-th percentile of the map
    being binarised, clipped to [0, 1] (the reference's rule for a negative setting). Pixels strictly above it
    are 1. With a fixed threshold both orders give the same mask (a flat max filter commutes with thresholding);
    they differ for the percentile rule, whose threshold is then taken after the dilation.

    Args:
        anomaly_map: ``(B, 1, *spatial)`` map, e.g. from :func:`initial_anomaly_map`.
        threshold: fixed threshold (0.13 in the reference config) or a negative value for the percentile rule.
        percentile: percentile of the per-image rule, in [0, 100].
        dilation_size: odd side of the square dilation element (3); 1 disables the dilation.
        order: ``"binarize_dilate"`` (reference) or ``"dilate_binarize"`` (paper).

    Returns:
        ``(B, 1, *spatial)`` float mask of 0s and 1s; 1 marks the region to in-paint.
    """
    order = look_up_option(order, MASK_ORDERS)

    def binarize(m: torch.Tensor) -> torch.Tensor:
        if threshold >= 0:
            level = torch.full((m.shape[0],), float(threshold), dtype=m.dtype, device=m.device)
        else:
            level = per_image_quantile(m, percentile).clamp(0.0, 1.0)
        return (m > level.view(-1, *([1] * (m.ndim - 1)))).to(m.dtype)

    if order == "binarize_dilate":
        return grey_dilation(binarize(anomaly_map), dilation_size)
    return binarize(grey_dilation(anomaly_map, dilation_size))


def stitch(mask: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """``inside`` where ``mask`` is 1 and ``outside`` elsewhere, without arithmetic, so kept pixels stay bit-exact.

    Args:
        mask: ``(B, 1, *spatial)`` binary mask, broadcast over channels.
        inside: ``(B, C, *spatial)`` values for the masked region.
        outside: ``(B, C, *spatial)`` values for the rest.

    Returns:
        ``(B, C, *spatial)`` stitched tensor.
    """
    return torch.where(mask > 0, inside, outside)


class AutoDDPMInferer(PartialDiffusionInferer):
    """AutoDDPM anomaly detection: mask, stitch and re-sample with one trained DDPM.

    Procedure (docs/methods.md, AutoDDPM, reference-code parity by default), inputs x in [0, 1]:

    1. Reconstruction x̂: noise x to L = ``noise_level`` (200) and denoise to 0 (L + 1 calls), clamp to [0, 1].
    2. Mask: c = P(x, x̂) · clip(|x − x̂| / p95, 0, 1) (:func:`initial_anomaly_map`; P is LPIPS-squeeze by default,
       unsmoothed and unclipped), B = :func:`binary_anomaly_mask` (threshold 0.13, 3 × 3 dilation).
    3. Stitch and re-sample from R = ``resample_level`` (50) with K = ``resample_passes`` (5): the state starts as
       x̂ (``resample_start="reconstruction"``, reference) or x (``"input"``, paper) noised to R. For t = R, …, 1
       and each of the K passes: the known part is x noised to t − 1 with fresh noise, the unknown part is one
       reverse step of the model from the current state at t, and x_{t−1} = B·unknown + (1 − B)·known. After
       passes 1 … K − 1 the state jumps back to t: x_t = √(1 − β)·x_{t−1} + √β·z. The reference takes
       β = ``betas[t - 1]`` (``jump_beta_index="t-1"``); with MONAI's 0-indexed tables the exact forward step from
       level t − 1 to t uses ``betas[t]`` (``"t"``). At t = 0 there is no call: the in-painted image is the unknown
       part of the last t = 1 step inside B and x itself outside (bit-exact).
    4. Final map: |x − clamp(in-painted, 0, 1)| · c (c continuous and undilated); pseudo-healthy image:
       the clamped in-painted image.

    Accelerated schedule (``step_stride`` s > 1): both stages visit the shared :meth:`reverse_schedule` levels
    (L, L − s, …, 0 and R, R − s, …, 0). Each reconstruction and re-sampling step is the shared
    :meth:`~monai_diffad.inferers.partial_diffusion.PartialDiffusionInferer.reverse_step`, a draw from the exact DDPM
    posterior between two visited levels t > t', the known part is x noised to t', and the jump back is the forward process from t' to t
    (:func:`~monai_diffad.inferers.posterior.forward_step`, 1 − β = ᾱ_t / ᾱ_t' for ``"t"`` and the reference's
    one-index shift ᾱ_{t−1} / ᾱ_{t'−1}, with ᾱ_{−1} = 1, for ``"t-1"``). s = 1 is the schedule above, bit for bit.

    Network calls per batch: ``(⌈L / s⌉ + 1) + ⌈R / s⌉ × K`` (:attr:`num_network_calls`): with s = 1 (default)
    ``L + 1 + R × K`` = 201 + 50 × 5 = 451; with s = 10, 21 + 5 × 5 = 46. All noise
    comes from the per-image streams, so a result does not depend on the batch size or on chunking. The
    reference runs the re-sampling loop under autocast; this inferer runs every step in float32. The network's
    value range is the shared ``model_range`` setting (default [−1, 1] as the package's trained networks; the
    reference checkpoints, trained on [0, 1], need ``model_range=(0, 1)``).

    Intermediates (``return_intermediates=True``, 2D inputs): ``reconstruction`` x̂ ``(B, C, H, W)``, ``mask`` c
    and ``binary_mask`` B ``(B, 1, H, W)``, ``stitched`` B·x̂ + (1 − B)·x and ``inpainted`` (the re-sampled image
    before clamping) ``(B, C, H, W)``, all in [0, 1] but the last.

    Args:
        scheduler: the scheduler the network was trained with (detection needs a ``DDPMScheduler`` with T > L, R).
        noise_level: L, start level of the reconstruction (200).
        resample_level: R, start level of the re-sampling (50), in [1, T − 1] (T checked when detection runs).
        resample_passes: K, passes per re-sampling level (5), >= 1; K = 1 is plain stitched in-painting.
        mask_threshold: threshold of c (0.13); a negative value selects the per-image percentile rule.
        threshold_percentile: percentile of the per-image threshold rule (95).
        residual_percentile: percentile normalising the residual in c (95).
        dilation_size: odd side of the square dilation of the mask (3).
        mask_order: ``"binarize_dilate"`` (reference) or ``"dilate_binarize"`` (paper).
        resample_start: ``"reconstruction"`` (reference) or ``"input"`` (paper).
        jump_beta_index: ``"t-1"`` (reference) or ``"t"``.
        perceptual: ``"lpips"`` or ``"ssim"`` (see :class:`~monai_diffad.inferers.perceptual_term.PerceptualTerm`).
        lpips_net: LPIPS backbone (``"squeeze"`` as in the reference).
        lpips_backbone_path: explicit backbone weights file.
        kwargs: options of :class:`~monai_diffad.inferers.partial_diffusion.PartialDiffusionInferer`
            (``noise_type``, ``value_range``, ``model_range``, ``max_batch_size``, ``step_stride`` for both stages, ...).

    Raises:
        ValueError: an option is out of range or unknown.

    Example::

        inferer = AutoDDPMInferer(scheduler)
        out = inferer.detect(images, network, generator=torch.Generator().manual_seed(0))
        out.anomaly_map  # (B, 1, H, W) in [0, 1]
    """

    default_noise_level = 200

    def __init__(
        self,
        scheduler: Scheduler,
        noise_level: int | None = None,
        resample_level: int = 50,
        resample_passes: int = 5,
        mask_threshold: float = 0.13,
        threshold_percentile: float = 95.0,
        residual_percentile: float = 95.0,
        dilation_size: int = 3,
        mask_order: str = "binarize_dilate",
        resample_start: str = "reconstruction",
        jump_beta_index: str = "t-1",
        perceptual: str = "lpips",
        lpips_net: str = "squeeze",
        lpips_backbone_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheduler, noise_level=noise_level, **kwargs)
        self.resample_level = self._check_level(resample_level, "resample_level")
        if isinstance(resample_passes, bool) or not float(resample_passes).is_integer() or int(resample_passes) < 1:
            raise ValueError(f"resample_passes must be an integer >= 1, got {resample_passes!r}.")
        self.resample_passes = int(resample_passes)
        if not math.isfinite(float(mask_threshold)):
            raise ValueError(f"mask_threshold must be finite, got {mask_threshold}.")
        self.mask_threshold = float(mask_threshold)
        for name, q in (("threshold_percentile", threshold_percentile), ("residual_percentile", residual_percentile)):
            if not 0.0 <= float(q) <= 100.0:
                raise ValueError(f"{name} must be in [0, 100], got {q}.")
        self.threshold_percentile = float(threshold_percentile)
        self.residual_percentile = float(residual_percentile)
        odd = not isinstance(dilation_size, bool) and float(dilation_size).is_integer() and int(dilation_size) % 2 == 1
        if not odd or int(dilation_size) < 1:
            raise ValueError(f"dilation_size must be a positive odd integer, got {dilation_size!r}.")
        self.dilation_size = int(dilation_size)
        self.mask_order = look_up_option(mask_order, MASK_ORDERS)
        self.resample_start = look_up_option(resample_start, RESAMPLE_STARTS)
        self.jump_beta_index = look_up_option(jump_beta_index, JUMP_BETA_INDICES)
        # the term is used raw (σ = 0): the reference neither smooths nor clips LPIPS here
        self.perceptual = PerceptualTerm(perceptual, lpips_net, lpips_backbone_path, sigma=0.0)

    def validate_settings(self) -> None:
        """The layer's checks, then ``resample_level`` < T.

        Raises:
            TypeError: the scheduler is not a ``DDPMScheduler``.
            ValueError: ``noise_level`` or ``resample_level`` >= T.
        """
        super().validate_settings()
        self.check_level_fits(self.resample_level, "resample_level")

    @property
    def num_network_calls(self) -> int:
        """Network calls per batch: ⌈L / s⌉ + 1 (reconstruction) + ⌈R / s⌉ × K (re-sampling), s = ``step_stride``.

        With s = 1: L + 1 + R × K.
        """
        reconstruction = len(self.reverse_schedule(self.noise_level))
        resampling = len(self.reverse_schedule(self.resample_level)) - 1  # no call at t = 0
        return reconstruction + resampling * self.resample_passes

    def anomaly_masks(self, inputs: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The continuous map c and the binary in-painting mask B for images in [0, 1].

        Args:
            inputs: ``(B, C, H, W)`` images x in [0, 1].
            reconstruction: ``(B, C, H, W)`` reconstructions x̂ in [0, 1].

        Returns:
            ``(c, B)``, each ``(B, 1, H, W)``.
        """
        c = initial_anomaly_map(
            residual_map(inputs, reconstruction, kind="l1"),
            self.perceptual.distance(inputs, reconstruction),
            self.residual_percentile,
        )
        mask = binary_anomaly_mask(
            c, self.mask_threshold, self.threshold_percentile, self.dilation_size, self.mask_order
        )
        return c, mask

    def jump_back(
        self, x_prev: torch.Tensor, t: int, noise: torch.Tensor, prev_t: int | None = None
    ) -> torch.Tensor:
        """The forward process from level t' = ``prev_t`` back to t: √(1 − β)·x_{t'} + √β·z.

        With t' = t − 1 (default), β = ``betas[t - 1]`` (``jump_beta_index="t-1"``) or ``betas[t]`` (``"t"``). With a
        stride, 1 − β = ᾱ_t / ᾱ_{t'} (``"t"``, the exact forward process) or ᾱ_{t−1} / ᾱ_{t'−1} (``"t-1"``, the
        reference's one-index shift; ᾱ_{−1} = 1). Computed by
        :func:`~monai_diffad.inferers.posterior.forward_step`.

        Args:
            x_prev: the state at level t' (model range).
            t: the level to return to, >= 1.
            noise: z, standard noise of ``x_prev``'s shape.
            prev_t: t', in [0, t − 1]; ``None`` means t − 1.

        Returns:
            The state at level t.
        """
        prev_t = t - 1 if prev_t is None else int(prev_t)
        shift = 1 if self.jump_beta_index == "t-1" else 0
        return forward_step(self.scheduler, x_prev, t - shift, prev_t - shift, noise)

    @torch.no_grad()
    def resample(
        self,
        x_model: torch.Tensor,
        start_model: torch.Tensor,
        mask: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: SeededNoise,
        progress: bool = False,
    ) -> torch.Tensor:
        """RePaint-style in-painting of ``mask`` from ``resample_level`` with ``resample_passes`` passes per level.

        The levels are :meth:`reverse_schedule` of R (every ``step_stride``-th level, 0 last); each step goes from one
        visited level t to the next t' with the DDPM posterior between them, the known part noised to t'.

        Args:
            x_model: ``(B, C, H, W)`` inputs in the network's range: the known region.
            start_model: ``(B, C, H, W)`` image noised to R to start from (the reconstruction or the input).
            mask: ``(B, 1, H, W)`` binary mask, 1 where the model in-paints.
            diffusion_model: the epsilon-prediction network.
            noise: per-image noise streams.
            progress: tqdm bar over the levels.

        Returns:
            The model's output of the last step (to level 0) inside ``mask`` (network range); outside it the caller
            keeps x. ⌈R / s⌉ × K calls.
        """
        shape = tuple(x_model.shape[1:])
        level = self.resample_level
        x_t = self.noise_to_level(start_model, noise(shape, t=level), level)
        unknown = x_t
        schedule = self.reverse_schedule(level)
        steps = list(zip(schedule[:-1], schedule[1:]))  # (t, t'): no call at t = 0
        for t, prev_t in tqdm(steps, desc=f"{type(self).__name__} re-sampling", disable=not progress, leave=False):
            for k in range(self.resample_passes):
                # the known part's noise is drawn before the step's: the streams' order is part of the result
                known = self.noise_to_level(x_model, noise(shape, t=prev_t), prev_t)
                _, unknown = self.reverse_step(diffusion_model, x_t, t, prev_t, noise)
                x_t = stitch(mask, unknown, known)
                if k < self.resample_passes - 1:
                    x_t = self.jump_back(x_t, t, noise(shape, t=t), prev_t)
        return unknown

    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        """AutoDDPM on ``batch.images``: reconstruct, mask, stitch and re-sample (steps 1-4 above)."""
        u, noise, progress = batch.images, self.noise_streams(batch), batch.progress
        x_model = self.to_model(u)
        restored = self.partial_reverse(x_model, diffusion_model, noise, self.noise_level, progress=progress)
        reconstruction = self.from_model(restored).clamp(0.0, 1.0)
        c, mask = self.anomaly_masks(u, reconstruction)
        start = reconstruction if self.resample_start == "reconstruction" else u
        unknown = self.resample(x_model, self.to_model(start), mask, diffusion_model, noise, progress)
        # the t = 0 step keeps x itself outside the mask, so the known region is the input exactly
        inpainted = stitch(mask, self.from_model(unknown), u)
        healthy = inpainted.clamp(0.0, 1.0)
        out: dict[str, Any] = {
            "anomaly_map": residual_map(u, healthy, kind="l1") * c,
            "pseudo_healthy": healthy,
            "intermediates": {},
        }
        if batch.return_intermediates:
            out["intermediates"] = {
                "reconstruction": reconstruction,
                "mask": c,
                "binary_mask": mask,
                "stitched": stitch(mask, reconstruction, u),
                "inpainted": inpainted,
            }
        return out
