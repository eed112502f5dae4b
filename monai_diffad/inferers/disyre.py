# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE: Diffusion-Inspired SYnthetic REstoration (Naval Marimont et al., ISBI 2024).

A diffusion-like model whose forward process is not Gaussian noise but a growing synthetic anomaly,
x_t = (1 − α_t·m)·x0 + α_t·m·x_fp (:mod:`monai_diffad.transforms.corruption`). The network P predicts x0 directly
from (x_t, t). At test time the input itself is treated as a corrupted image and restored step by step (paper
Algorithm 1); the accumulated restoration residuals are the anomaly map. No noise is involved anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import Scheduler
from monai.utils import ensure_tuple_rep, look_up_option
from tqdm.auto import tqdm

from monai_diffad.disyre_schedule import (
    STEP_SCHEDULES,
    UPDATE_RULES,
    check_step_size,
    check_timesteps,
    corruption_alphas,
    disyre_scheduler,
    reference_restoration_steps,
    restoration_timesteps,
    restoration_update,
)
from monai_diffad.inferers.base import DetectionBatch, DiffusionAnomalyInferer
from monai_diffad.networks import diffusion_unet
from monai_diffad.transforms.corruption import RandForeignPatchCorruption, interpolate_foreign_patch

__all__ = [
    "DISYREInferer",
    "DISYRE_DEMO_UNET",
    "DISYRE_PAPER_UNET",
    "DISYRE_SCORING",
    "FOREGROUND_WEIGHTING",
    "SW_PADDING",
    "X0_CLAMPING",
    "disyre_unet",
]

#: ``"multi_step"``: paper Algorithm 1, the state is updated between calls and AS accumulates |x̂0 − x_t|.
#: ``"mean_single_step"``: the reference evaluation, x is never updated and AS averages |x − P(x, t)|.
DISYRE_SCORING = ("multi_step", "mean_single_step")
#: ``"after"`` (reference): the residual and the state update read the raw prediction P(x_t, t); only what is kept
#: (x̂0, the updated state) is clamped to [0, 1]. ``"before"``: x̂0 is clamped first, so overshoots do not score.
X0_CLAMPING = ("after", "before")
#: Multiply the map by the fraction of non-zero pixels of: ``"window"`` (reference evaluation) each network-input
#: window before blending (the whole image without ``patch_size``); ``"image"`` the whole image; ``"none"``: no weight.
FOREGROUND_WEIGHTING = ("window", "image", "none")
#: Where the sliding windows lie on an image larger than (or shaped unlike) ``patch_size``. ``"none"``: MONAI's grid,
#: windows every stride from the top-left corner and the last one flush with the far border (zero padding only up to
#: the window size). ``"stride"`` (reference evaluation, ``diffusion/sliding_window_inference.py``): the image is first
#: zero-padded, half before and the rest after, to the smallest size that whole strides tile exactly, so the windows
#: sit at other places and the border ones see more zero background (which ``foreground_weighting="window"`` counts).
#: The two agree when (size − window) is a multiple of the stride.
SW_PADDING = ("none", "stride")

#: Small x0-prediction network that trains on one CPU core at 64 x 64 (the shipped demo weights).
DISYRE_DEMO_UNET: dict[str, Any] = {
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 64,
}

#: The reference network: six levels (32, 64, 96, 128, 256, 256), two residual blocks per level, self-attention at
#: the fifth level (and, in MONAI's UNet as in diffusers', the middle block); 8 channels per head as diffusers'
#: ``UNet2DModel`` default. The paper's text places attention "from the 3rd block on": pass ``attention_levels``.
DISYRE_PAPER_UNET: dict[str, Any] = {
    "channels": [32, 64, 96, 128, 256, 256],
    "attention_levels": [False, False, False, False, True, False],
    "num_res_blocks": 2,
    "num_head_channels": 8,
}

_PRESETS = {"demo": DISYRE_DEMO_UNET, "paper": DISYRE_PAPER_UNET}


def disyre_unet(size: str = "demo", **overrides: Any) -> DiffusionModelUNet:
    """The DISYRE network: a timestep-conditioned ``DiffusionModelUNet`` whose output is the x0 prediction.

    Args:
        size: ``"demo"`` (:data:`DISYRE_DEMO_UNET`) or ``"paper"`` (:data:`DISYRE_PAPER_UNET`).
        overrides: any option of :func:`monai_diffad.networks.diffusion_unet` (e.g. ``in_channels``, ``channels``).

    Returns:
        A network ``model(x, timesteps=t)`` mapping ``(B, C, H, W)`` to ``(B, C, H, W)``; H and W must be divisible
        by 2^(levels − 1) (32 for the paper size).

    Raises:
        ValueError: unknown ``size``.
    """
    preset = dict(look_up_option(size, _PRESETS))
    preset.update(overrides)
    return diffusion_unet(**preset)


class DISYREInferer(DiffusionAnomalyInferer):
    """DISYRE anomaly detection and training helpers, as a ``monai.inferers.DiffusionInferer``.

    The parent's calls keep their meaning: ``inferer(inputs, model, noise, timesteps)``, ``sample`` and
    ``get_likelihood`` are ``DiffusionInferer``'s, run with the ``scheduler`` given here (any scheduler the parent
    takes; by default the DDPM table DISYRE's α_t comes from, configured for x0 prediction). DISYRE itself never uses
    noise: it stands on the detection frame alone, without the partial-diffusion layer's noise type, noise level or
    step stride (passing ``noise_type``, ``noise_level``, ``step_stride`` or ``simplex_normalize`` is a
    ``TypeError``). Its own methods are:

    - :meth:`corrupt` — the synthetic forward process x_t = (1 − α_t·m)·x0 + α_t·m·x_fp (deterministic);
    - :meth:`training_loss` — a random corruption of a batch and the MSE between P(x_t, t) and x0;
    - :meth:`restore` — paper Algorithm 1 (or the reference's single-step scoring) on one 2D batch;
    - :meth:`detect` (inherited) — validation, value-range mapping, 3D volumes slice-wise, sliding windows for
      images larger than ``patch_size``, foreground masking and the image score; ``inferer(inputs, model)`` runs it.

    Restoration (``scoring="multi_step"``, paper Algorithm 1) makes one network call per step: x̂0 = P(x_t, t);
    AS += |x̂0 − x_t|; x_t ← update(x̂0, x_t) to the next level (the paper's Q with m = 1, ``update="paper"``, or the
    reference's cold-diffusion update, ``update="cold"``); the last x̂0 is the pseudo-healthy image.
    ``scoring="mean_single_step"`` (reference evaluation) keeps x_t = x and averages |x − P(x, t)|. Our networks
    take the paper's convention (t large = strong corruption). ``step_schedule="paper"`` calls them at t = T, T − s,
    … > 0 (T = 100, s = 25: 100, 75, 50, 25, i.e. α ≈ 1.00, 0.95, 0.73, 0.27). ``step_schedule="reference"`` tells
    the network what the reference evaluation tells its own: the reference calls t_ref = 99, 74, 49, 24, which its
    training map ties to α ≈ 0.005, 0.05, 0.27, 0.73, so ours is called at the paper t with the nearest α_t (3, 10,
    25, 50, in that order) and a multi-step update uses the reference sampler's α
    (:func:`~monai_diffad.disyre_schedule.reference_restoration_steps`). The residual is taken from the raw
    prediction and clamped after (``clamp_x0="after"``, reference) or from the clamped one (``"before"``). The map is
    AS divided by the number of calls, averaged over channels, then multiplied by (x > 0) (``foreground_mask``) and
    by the fraction of non-zero pixels (``foreground_weighting``: per network window, as the reference evaluation).

    Args:
        scheduler: scheduler for the parent's calls and, when it is a ``DDPMScheduler``, the α_t table that
            detection and training read (checked when they run); ``None`` uses
            :func:`~monai_diffad.disyre_schedule.disyre_scheduler` (T = 100, β 1e-3 → 0.2).
        step_size: s, in [1, T] (paper and reference 25; T checked when detection runs).
        scoring: one of :data:`DISYRE_SCORING`.
        update: one of ``UPDATE_RULES`` (``"paper"`` or ``"cold"``), for ``"multi_step"``.
        step_schedule: one of ``STEP_SCHEDULES`` (``"paper"``, default, or ``"reference"``), see above.
        timesteps: explicit strictly descending paper timesteps in [0, T] instead of ``step_schedule``'s (T checked
            when detection runs); a multi-step update then uses their own α_t.
        patch_size: the training patch ``(H, W)``; larger (or differently shaped) images go through
            ``monai.inferers.sliding_window_inference`` with this window. ``None``: whole images.
        sw_overlap: window overlap (reference: stride 32 for 128 windows, 0.75).
        sw_sigma_scale: σ of the Gaussian window weights relative to the window (reference σ = 16 at 128: 0.125).
        sw_batch_size: windows per network call.
        foreground_mask: multiply the map by (x > 0) (reference).
        foreground_weighting: one of :data:`FOREGROUND_WEIGHTING` (default ``"none"``; ``"window"`` is the reference
            evaluation's);
            ``True`` / ``False`` mean ``"window"`` / ``"none"``.
        clamp_x0: one of :data:`X0_CLAMPING` (default ``"before"``; ``"after"`` is the reference's).
        value_range: intensity range of the inputs (mapped to [0, 1], where corruption and restoration happen).
        model_range: range the network was trained on (DISYRE trains on [0, 1]).
        corruption: the random corruption used by :meth:`training_loss` (its table must have T + 1 entries, checked
            when it is used); built from the α_t table on first use when ``None``.
        sw_padding: one of :data:`SW_PADDING` (default ``"none"``; ``"stride"`` places the windows as the reference
            evaluation does; last among the arguments so that positional calls keep their meaning).
        kwargs: other options of the detection frame :class:`DiffusionAnomalyInferer` (``out_of_range``,
            ``max_batch_size``, ``precision``, ...).

    Raises:
        TypeError: an option of the partial-diffusion layer (``noise_type``, ``step_stride``, ...) or another unknown
            keyword.
        ValueError: an option is out of range or unknown.
    """

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        step_size: int = 25,
        scoring: str = "multi_step",
        update: str = "paper",
        step_schedule: str = "paper",
        timesteps: Sequence[int] | None = None,
        patch_size: Sequence[int] | int | None = None,
        sw_overlap: float = 0.75,
        sw_sigma_scale: float = 0.125,
        sw_batch_size: int = 8,
        foreground_mask: bool = True,
        foreground_weighting: bool | str = "none",
        clamp_x0: str = "before",
        value_range: Sequence[float] = (0.0, 1.0),
        model_range: Sequence[float] = (0.0, 1.0),
        corruption: RandForeignPatchCorruption | None = None,
        sw_padding: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            disyre_scheduler() if scheduler is None else scheduler,
            value_range=value_range,
            model_range=model_range,
            **kwargs,
        )
        # the bounds that need T (step_size <= T, timesteps <= T) wait for validate_settings
        self.step_size = check_step_size(step_size)
        self.scoring = look_up_option(scoring, DISYRE_SCORING)
        self.update = look_up_option(update, UPDATE_RULES)
        self.step_schedule = look_up_option(step_schedule, STEP_SCHEDULES)
        self.clamp_x0 = look_up_option(clamp_x0, X0_CLAMPING)
        self.timesteps = None if timesteps is None else check_timesteps(timesteps)
        self.patch_size = None if patch_size is None else tuple(int(p) for p in ensure_tuple_rep(patch_size, 2))
        if self.patch_size is not None and min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size!r}.")
        if not 0.0 <= float(sw_overlap) < 1.0:
            raise ValueError(f"sw_overlap must be in [0, 1), got {sw_overlap}.")
        if float(sw_sigma_scale) <= 0:
            raise ValueError(f"sw_sigma_scale must be > 0, got {sw_sigma_scale}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        self.sw_overlap, self.sw_sigma_scale = float(sw_overlap), float(sw_sigma_scale)
        self.sw_padding = look_up_option(sw_padding, SW_PADDING)
        self.sw_batch_size = int(sw_batch_size)
        self.foreground_mask = bool(foreground_mask)
        if isinstance(foreground_weighting, bool):  # the former on/off switch; on is the reference's per window
            foreground_weighting = "window" if foreground_weighting else "none"
        self.foreground_weighting = look_up_option(foreground_weighting, FOREGROUND_WEIGHTING)
        self._corruption = corruption

    # ------------------------------------------------------------------ schedule
    def validate_settings(self) -> None:
        """The frame's scheduler check, then ``step_size``, ``timesteps`` and ``corruption`` against its T.

        Raises:
            TypeError: the scheduler is not a ``DDPMScheduler``.
            ValueError: ``step_size`` > T, a timestep > T, or a ``corruption`` table of another T.
        """
        super().validate_settings()
        t_max = self.num_train_timesteps
        check_step_size(self.step_size, t_max)
        if self.timesteps is not None:
            check_timesteps(self.timesteps, t_max)
        if self._corruption is not None and len(self._corruption.alphas) != t_max + 1:
            raise ValueError(f"corruption has T={self._corruption.num_steps}, the scheduler T={t_max}.")

    @property
    def alphas(self) -> torch.Tensor:
        """α_t for t = 0 … T, ``(T + 1,)``, from the scheduler's table (read on use: any scheduler constructs).

        Raises:
            TypeError: the scheduler is not a ``DDPMScheduler``.
        """
        return corruption_alphas(self.detection_scheduler())

    @property
    def corruption(self) -> RandForeignPatchCorruption:
        """The random corruption of :meth:`training_loss`: the one given, or one built from :attr:`alphas` on first
        use and kept (so its random state carries over between calls)."""
        if self._corruption is None:
            self._corruption = RandForeignPatchCorruption(alphas=self.alphas)
        return self._corruption

    @property
    def num_network_calls(self) -> int:
        """One call per restoration step (4 for T = 100, s = 25) on whole images; with ``patch_size`` and larger
        images, that many per batch of ``sw_batch_size`` windows."""
        return len(self.restoration_steps())

    def restoration_steps(self) -> list[int]:
        """Paper timesteps of the network calls, in call order (T = 100, s = 25: ``"reference"`` [3, 10, 25, 50],
        ``"paper"`` [100, 75, 50, 25]; explicit ``timesteps`` as given)."""
        return self._restoration_plan()[0]

    def _restoration_plan(self) -> tuple[list[int], list[float]]:
        """The network calls' timesteps and, for each, the α a multi-step update takes as that level's."""
        if self.timesteps is not None or self.step_schedule == "paper":
            steps = list(self.timesteps or restoration_timesteps(self.num_train_timesteps, self.step_size))
            return steps, [self.alpha(t) for t in steps]
        return reference_restoration_steps(self.detection_scheduler(), self.step_size)

    def network_input_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Whole images without ``patch_size``; otherwise the windows, whatever the images' size."""
        return tuple(spatial) if self.patch_size is None else self.patch_size

    def alpha(self, t: int) -> float:
        """α_t (paper convention: 0 at t = 0, 1 at t = T)."""
        return float(self.alphas[int(t)])

    # ------------------------------------------------------------------ training
    def corrupt(
        self, x0: torch.Tensor, foreign: torch.Tensor, mask: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The synthetic forward process x_t = (1 − α_t·m)·x0 + α_t·m·x_fp, the analogue of ``scheduler.add_noise``.

        Args:
            x0: ``(B, C, H, W)`` healthy images in [0, 1].
            foreign: ``(B, C, H, W)`` foreign-patch canvases in [0, 1].
            mask: ``(B, 1, H, W)`` soft masks in [0, 1].
            timesteps: ``(B,)`` integer timesteps in [0, T].

        Returns:
            x_t, ``(B, C, H, W)`` in [0, 1].

        Raises:
            ValueError: timesteps outside [0, T] or of the wrong length.
        """
        t = torch.as_tensor(timesteps).long().reshape(-1)
        if len(t) != x0.shape[0] or t.min() < 0 or t.max() > self.num_train_timesteps:
            raise ValueError(f"timesteps must be {x0.shape[0]} integers in [0, {self.num_train_timesteps}].")
        return interpolate_foreign_patch(x0, foreign, mask, self.alphas.to(x0.device)[t.to(x0.device)])

    def predict_x0(self, model: torch.nn.Module, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """P(x_t, t) for ``x_t`` in [0, 1]: maps to ``model_range``, calls ``model(x, timesteps=...)``, maps back.

        Returns:
            The unclamped x0 prediction in the [0, 1] scale, ``(B, C, H, W)``.
        """
        return self.from_model(self.call_network(model, self.to_model(x_t), t))

    def training_loss(
        self,
        x0: torch.Tensor,
        model: torch.nn.Module,
        foreground: torch.Tensor | None = None,
        corruption: RandForeignPatchCorruption | None = None,
    ) -> torch.Tensor:
        """Corrupt a batch at random (foreign patches from batch-mates) and return MSE(P(x_t, t), x0).

        The MSE is taken in the network's range (identical to the [0, 1] loss for the default ``model_range``).

        Args:
            x0: ``(B, C, H, W)`` healthy images in ``value_range``.
            model: the x0-prediction network.
            foreground: optional ``(B, 1, H, W)`` foreground masks.
            corruption: random corruption to use instead of ``self.corruption``.

        Returns:
            Scalar loss with gradients.

        Raises:
            TypeError, ValueError: settings that do not fit the scheduler (:meth:`validate_settings`) or invalid
                images.
        """
        self.validate_settings()
        u = self.validate_inputs(x0)
        if u.ndim != 4:
            raise ValueError(f"training_loss needs 2D images (B, C, H, W), got {tuple(x0.shape)}.")
        drawn = (corruption or self.corruption).corrupt_batch(u, foreground)
        prediction = model(self.to_model(drawn["image"]), timesteps=drawn["timesteps"])
        return F.mse_loss(prediction, self.to_model(u))

    # ------------------------------------------------------------------ restoration
    @torch.no_grad()
    def restore(self, u: torch.Tensor, model: torch.nn.Module, progress: bool = False) -> dict[str, torch.Tensor]:
        """Restore a 2D batch at the network's input size (no masking, no sliding window; see :meth:`detect`).

        Args:
            u: ``(B, C, H, W)`` images in [0, 1].
            model: the x0-prediction network ``model(x, timesteps=t)``.
            progress: tqdm bar over the network calls.

        Returns:
            ``anomaly_map`` ``(B, 1, H, W)`` (mean over calls of the channel-mean residual, in [0, 1]),
            ``pseudo_healthy`` ``(B, C, H, W)`` in [0, 1] (the last x̂0 for ``"multi_step"``, the first call's x̂0
            for ``"mean_single_step"``), ``x0`` ``(B, K, C, H, W)`` and ``maps`` ``(B, K, 1, H, W)`` per call. The
            maps carry ``foreground_weighting="window"``'s weight (``u`` is the window), no other masking; the
            residuals are ≥ 0 and, with ``clamp_x0="after"``, unbounded above where the network overshoots.
        """
        steps, update_alphas = self._restoration_plan()
        x_t = u
        x0s, maps = [], []
        for i, t in enumerate(tqdm(steps, desc="DISYRE", disable=not progress, leave=False)):
            raw = self.predict_x0(model, x_t, t)
            # x̂0 is kept in the data range, where the healthy image lives; the reference scores the raw output
            x0_hat = raw.clamp(0.0, 1.0)
            scored = raw if self.clamp_x0 == "after" else x0_hat
            maps.append((scored - x_t).abs().mean(dim=1, keepdim=True))
            x0s.append(x0_hat)
            if self.scoring == "multi_step" and i + 1 < len(steps):
                x_t = restoration_update(scored, x_t, update_alphas[i], update_alphas[i + 1], self.update)
        stacked_maps = torch.stack(maps, dim=1)
        if self.foreground_weighting == "window":
            stacked_maps = stacked_maps * _foreground_fraction(u)[:, None]
        healthy = x0s[-1] if self.scoring == "multi_step" else x0s[0]
        return {
            "anomaly_map": stacked_maps.mean(dim=1),
            "pseudo_healthy": healthy,
            "x0": torch.stack(x0s, dim=1),
            "maps": stacked_maps,
        }

    def _restore_windows(
        self, u: torch.Tensor, model: torch.nn.Module, patch_size: tuple[int, ...], progress: bool
    ) -> dict[str, torch.Tensor]:
        """:meth:`restore` over Gaussian-weighted sliding windows of ``patch_size``, blended by MONAI (on the image
        zero-padded to whole strides first with ``sw_padding="stride"``)."""
        b, c, h, w = u.shape
        k = len(self.restoration_steps())
        padded = u
        crop: tuple[slice, ...] = (slice(None),) * 4
        if self.sw_padding == "stride":
            padded, crop = _pad_to_stride(u, patch_size, self.sw_overlap)

        def predictor(window: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.restore(window, model)
            # per-call tensors travel as channels so that MONAI blends them like the map
            return {
                "anomaly_map": out["anomaly_map"],
                "pseudo_healthy": out["pseudo_healthy"],
                "x0": out["x0"].flatten(1, 2),
                "maps": out["maps"].flatten(1, 2),
            }

        blended = sliding_window_inference(
            padded,
            roi_size=patch_size,
            sw_batch_size=self.sw_batch_size,
            predictor=predictor,
            overlap=self.sw_overlap,
            mode="gaussian",
            sigma_scale=self.sw_sigma_scale,
            padding_mode="constant",
            cval=0.0,
            progress=progress,
        )
        assert isinstance(blended, dict)  # a predictor that returns a dict makes MONAI return one
        blended = {key: value[crop] for key, value in blended.items()}
        return {
            "anomaly_map": blended["anomaly_map"],
            "pseudo_healthy": blended["pseudo_healthy"],
            "x0": blended["x0"].reshape(b, k, c, h, w),
            "maps": blended["maps"].reshape(b, k, 1, h, w),
        }

    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        """DISYRE on ``batch.images`` in [0, 1] (``batch.seeds`` are unused: the method is deterministic)."""
        u, progress = batch.images, batch.progress
        if self.patch_size is None or tuple(u.shape[2:]) == self.patch_size:
            out = self.restore(u, diffusion_model, progress)
        else:
            out = self._restore_windows(u, diffusion_model, self.patch_size, progress)
        amap = out["anomaly_map"]
        if self.foreground_mask:
            amap = amap * (u > 0).any(dim=1, keepdim=True).to(amap.dtype)
        if self.foreground_weighting == "image":
            amap = amap * _foreground_fraction(u)
        result: dict[str, Any] = {"anomaly_map": amap, "pseudo_healthy": out["pseudo_healthy"], "intermediates": {}}
        if batch.return_intermediates:
            result["intermediates"] = {
                "timesteps": torch.tensor(self.restoration_steps()),
                "x0": out["x0"],
                "maps": out["maps"],
            }
        return result


def _pad_to_stride(
    u: torch.Tensor, patch_size: Sequence[int], overlap: float
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad ``u`` ``(B, C, H, W)`` as the reference's sliding window does (``sw_padding="stride"``).

    Each side grows to at least the window and then, if needed, to the window plus a whole number of strides; the
    padding is split half before, the rest after. The stride is MONAI's, int(window · (1 − overlap)), so MONAI's
    windows on the padded image are the reference's (its stride is int(window · its overlap), the same number for
    its 0.25 and our 0.75).

    Returns:
        The padded images and the slices that crop a padded result back to ``u``'s extent.
    """
    pads: list[tuple[int, int]] = []
    crop: list[slice] = [slice(None), slice(None)]
    for size, window in zip(u.shape[2:], patch_size):
        stride = max(int(window * (1 - overlap)), 1)
        target = max(int(size), int(window))
        if target != window and (target - window) % stride:
            target += stride - (target - window) % stride
        before = (target - size) // 2
        pads.append((before, target - size - before))
        crop.append(slice(before, before + size))
    # F.pad lists the last dimension first
    flat = [amount for pair in reversed(pads) for amount in pair]
    return F.pad(u, flat), tuple(crop)


def _foreground_fraction(u: torch.Tensor) -> torch.Tensor:
    """The fraction of pixels with any channel > 0 in each of ``u``'s ``(B, C, H, W)`` images, ``(B, 1, 1, 1)`` in
    [0, 1]: the reference evaluation's weight, which lowers the scores of mostly-background windows."""
    return (u > 0).any(dim=1).flatten(1).to(u.dtype).mean(dim=1).reshape(-1, 1, 1, 1)
