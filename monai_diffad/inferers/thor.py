# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR: Temporal Harmonization for Optimal Restoration (Bercea et al., MICCAI 2024).

The reverse process from level L is guided implicitly: at recorded steps an intermediate anomaly map compares the
network's current x̂0 with the input; at harmonization steps, healthy-looking regions are replaced by the input
itself and the blend is re-noised with the initial noise, so the restoration keeps the patient's healthy anatomy
while anomalies keep being removed. Harmonization adds no network calls: L + 1 in total.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import look_up_option

from monai_diffad.inferers.base import DetectionBatch
from monai_diffad.inferers.partial_diffusion import PartialDiffusionInferer
from monai_diffad.inferers.perceptual_term import PerceptualTerm
from monai_diffad.maps import grey_closing, grey_dilation, harmonic_mean, normalize_by_max, residual_map

__all__ = ["THORInferer", "harmonization_mask", "harmonize", "THOR_DEFAULTS"]

#: Paper / reference defaults per noise type: level L and harmonization steps H.
THOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "gaussian": {"noise_level": 350, "harmonization_steps": (300, 150, 50)},
    "simplex": {"noise_level": 250, "harmonization_steps": (200, 150, 100, 50)},
}


def harmonization_mask(
    anomaly_map: torch.Tensor, closing_size: int = 13, dilation_size: int = 13, shape: str = "square"
) -> torch.Tensor:
    """THOR's blend weight M = clip((dilate(close(m)) + m) / 2, 0, 1): grey-level, not binarised.

    Closing fills small holes inside anomalous regions, dilation grows them so that their borders are restored
    too; averaging with m keeps the weight graded.

    Args:
        anomaly_map: ``(B, 1, H, W)`` map in [0, 1] (normalised per image).
        closing_size: side of the flat closing element.
        dilation_size: side of the flat dilation element.
        shape: ``"square"`` (reference) or ``"disc"``.

    Returns:
        ``(B, 1, H, W)`` weights in [0, 1]: 1 keeps the model's x̂0, 0 keeps the input.
    """
    grown = grey_dilation(grey_closing(anomaly_map, closing_size, shape=shape), dilation_size, shape=shape)
    return ((grown + anomaly_map) / 2).clamp(0.0, 1.0)


def harmonize(x0_hat: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x̃0 = clamp(M·x̂0 + (1 − M)·x, 0, 1) for images in [0, 1] and ``weight`` M broadcastable over channels."""
    return (weight * x0_hat + (1 - weight) * inputs).clamp(0.0, 1.0)


class THORInferer(PartialDiffusionInferer):
    """THOR anomaly detection with a DDPM, Gaussian or Simplex variant.

    Procedure (docs/methods.md, THOR, reference code parity by default), inputs x in [0, 1]:

    1. ε0 ~ noise; x_L = add_noise(x, ε0, L).
    2. For t = L, …, 0 (L + 1 network calls): one reverse step gives x̂0 (clipped by the scheduler) and x_{t-1}.
       If t is a multiple of ``record_interval``: m_t = clip(G_σ * P(x̂0, x), 0, 1) · |x̂0 − x|, normalised by its
       per-image maximum (P = LPIPS or the offline fallback). If t ∈ H: M = ``harmonization_mask(m_t)``,
       x̃0 = ``harmonize(x̂0, x, M)``, and the state continues from add_noise(x̃0, ε0, t) — the same ε0, level t
       (the reference's choice; ``renoise_level="t-1"`` uses the level of the next step).
    3. Final map: min(harmonic mean of the maps, ``map_clip``); the maps are all recorded ones (reference,
       ``final_maps="recorded"``) or those at H only (paper Eq. 5, ``"harmonization"``). Pseudo-healthy image:
       the last step's output clamped to [0, 1].

    ``THORInferer(scheduler)`` is the Gaussian variant (L = 350, H = 300/150/50);
    ``THORInferer(scheduler, noise_type="simplex")`` the Simplex variant (L = 250, H = 200/150/100/50) unless
    ``noise_level``/``harmonization_steps`` are given.

    Args:
        scheduler: the scheduler the network was trained with (detection needs a ``DDPMScheduler`` with T > L).
        noise_type: ``"gaussian"`` or ``"simplex"``.
        noise_level: L; default per variant.
        harmonization_steps: H, steps in [0, L]; default per variant; empty gives the plain DDPM reconstruction.
        record_interval: maps are recorded at every multiple of it in [0, L] (and at every step of H).
        closing_size: closing element size (13).
        dilation_size: dilation element size (13).
        kernel_shape: ``"square"`` or ``"disc"``.
        perceptual: ``"lpips"`` or ``"ssim"`` (see :class:`~monai_diffad.inferers.perceptual_term.PerceptualTerm`).
        lpips_net: LPIPS backbone (``"squeeze"`` as in the reference).
        lpips_backbone_path: explicit backbone weights file.
        sigma: σ of the smoothing of the perceptual term (2).
        final_maps: ``"recorded"`` or ``"harmonization"``.
        map_clip: upper clip of the final map (0.999 in the reference).
        renoise_level: ``"t"`` (reference) or ``"t-1"`` (the level of the next visited step).
        kwargs: options of :class:`~monai_diffad.inferers.partial_diffusion.PartialDiffusionInferer`
            (``step_stride``, ``value_range``, ``model_range``, ...).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        noise_type: str = "gaussian",
        noise_level: int | None = None,
        harmonization_steps: Sequence[int] | None = None,
        record_interval: int = 50,
        closing_size: int = 13,
        dilation_size: int = 13,
        kernel_shape: str = "square",
        perceptual: str = "lpips",
        lpips_net: str = "squeeze",
        lpips_backbone_path: str | None = None,
        sigma: float = 2.0,
        final_maps: str = "recorded",
        map_clip: float = 0.999,
        renoise_level: str = "t",
        **kwargs: Any,
    ) -> None:
        variant = THOR_DEFAULTS[str(look_up_option(noise_type, tuple(THOR_DEFAULTS)))]
        level = variant["noise_level"] if noise_level is None else noise_level
        super().__init__(scheduler, noise_level=level, noise_type=noise_type, **kwargs)
        steps = variant["harmonization_steps"] if harmonization_steps is None else harmonization_steps
        self.harmonization_steps = tuple(sorted({self._check_step(s) for s in steps}, reverse=True))
        if int(record_interval) < 1:
            raise ValueError(f"record_interval must be >= 1, got {record_interval}.")
        self.record_interval = int(record_interval)
        for name, size in (("closing_size", closing_size), ("dilation_size", dilation_size)):
            if int(size) < 1 or int(size) % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {size}.")
        self.closing_size, self.dilation_size = int(closing_size), int(dilation_size)
        self.kernel_shape = look_up_option(kernel_shape, ("square", "disc"))
        self.perceptual = PerceptualTerm(perceptual, lpips_net, lpips_backbone_path, sigma)
        self.final_maps = look_up_option(final_maps, ("recorded", "harmonization"))
        if self.final_maps == "harmonization" and not self.harmonization_steps:
            raise ValueError("final_maps='harmonization' needs at least one harmonization step.")
        if not 0.0 < float(map_clip) <= 1.0:
            raise ValueError(f"map_clip must be in (0, 1], got {map_clip}.")
        self.map_clip = float(map_clip)
        self.renoise_level = look_up_option(renoise_level, ("t", "t-1"))

    def _check_step(self, step: int) -> int:
        if isinstance(step, bool) or not float(step).is_integer() or not 0 <= int(step) <= self.noise_level:
            raise ValueError(f"harmonization step {step!r} must be an integer in [0, noise_level={self.noise_level}].")
        return int(step)

    def _on_schedule(self, step: int) -> int:
        """The visited step nearest to ``step`` (identity for the full schedule): strided runs harmonize on their grid."""
        return min(self.reverse_schedule(self.noise_level), key=lambda t: (abs(t - step), -t))

    def active_harmonization_steps(self) -> list[int]:
        """H mapped onto the reverse schedule (equal to H when ``step_stride`` is 1), descending."""
        return sorted({self._on_schedule(t) for t in self.harmonization_steps}, reverse=True)

    def recorded_steps(self) -> list[int]:
        """Descending steps at which an intermediate map is recorded: visited multiples of ``record_interval``
        (their nearest visited step when strided) and the harmonization steps."""
        last = self.noise_level - self.noise_level % self.record_interval
        wanted = {self._on_schedule(t) for t in range(last, -1, -self.record_interval)}
        return sorted(wanted | set(self.active_harmonization_steps()), reverse=True)

    def intermediate_map(self, x0_hat: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """m = clip(G_σ * P(x̂0, x), 0, 1) · |x̂0 − x|, normalised per image by its maximum; ``(B, 1, H, W)``."""
        return normalize_by_max(self.perceptual.smoothed(x0_hat, inputs) * residual_map(x0_hat, inputs, kind="l1"))

    def blend_weight(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """The harmonization weight M for this inferer's kernel settings."""
        return harmonization_mask(anomaly_map, self.closing_size, self.dilation_size, self.kernel_shape)

    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        """THOR on ``batch.images``: the reverse loop from L, harmonized after the steps of H (step 2 above)."""
        u, noise, return_intermediates = batch.images, self.noise_streams(batch), batch.return_intermediates
        record = set(self.recorded_steps())
        harmonize_at = set(self.active_harmonization_steps())
        schedule = self.reverse_schedule(self.noise_level)
        next_level = dict(zip(schedule, [*schedule[1:], 0]))
        eps0 = noise(tuple(u.shape[1:]), t=self.noise_level)
        maps: dict[int, torch.Tensor] = {}
        x0s: dict[int, torch.Tensor] = {}

        def on_step(t: int, x0_hat_model: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
            if t not in record:
                return x_prev
            # x̂0 is used as the scheduler clipped it (model range), mapped to [0, 1] but not clamped further
            x0_hat = self.from_model(x0_hat_model)
            maps[t] = self.intermediate_map(x0_hat, u)
            if return_intermediates:
                x0s[t] = x0_hat
            if t not in harmonize_at:
                return x_prev
            blended = harmonize(x0_hat, u, self.blend_weight(maps[t]))
            level = t if self.renoise_level == "t" else next_level[t]
            return self.noise_to_level(self.to_model(blended), eps0, level)

        restored = self.partial_reverse(
            self.to_model(u), diffusion_model, noise, self.noise_level, initial_noise=eps0, callback=on_step,
            progress=batch.progress,
        )
        final_steps = sorted(maps, reverse=True) if self.final_maps == "recorded" else sorted(harmonize_at, reverse=True)
        amap = harmonic_mean([maps[t] for t in final_steps]).clamp(max=self.map_clip)
        out: dict[str, Any] = {
            "anomaly_map": amap,
            "pseudo_healthy": self.from_model(restored).clamp(0.0, 1.0),
            "intermediates": {},
        }
        if return_intermediates:
            steps = sorted(maps, reverse=True)
            out["intermediates"] = {
                "timesteps": torch.tensor(steps),
                "maps": torch.stack([maps[t] for t in steps], dim=1),
                "x0": torch.stack([x0s[t] for t in steps], dim=1),
            }
        return out
