# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The partial-diffusion layer: noise an input to level L and walk a DDPM's reverse process back to 0.

MONAI's ``DiffusionInferer.sample`` always starts from pure noise and walks the scheduler's full timestep list, and
``DDPMScheduler.step`` always draws its own Gaussian noise and steps from t to t - 1. The reconstruction-based
detectors (DDPM, AnoDDPM, THOR, AutoDDPM) need to start from a noised input, to draw their own noise (Simplex,
per-image seeded streams) and, for accelerated schedules, to step from t to any earlier t'. This layer adds that on
top of the detection frame: the noise type and its per-image streams, the noise level L, the step stride, and one
primitive, :meth:`PartialDiffusionInferer.reverse_step`, that the plain loop (:meth:`~PartialDiffusionInferer.
partial_reverse`, which THOR drives through its after-step callback) and AutoDDPM's re-sampling are built from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from monai.utils import look_up_option
from tqdm.auto import tqdm

from monai_diffad.inferers.base import DetectionBatch, DiffusionAnomalyInferer
from monai_diffad.inferers.posterior import posterior_step, predict_original
from monai_diffad.noise import NoiseType, make_noise

__all__ = ["PartialDiffusionInferer", "SeededNoise", "StepCallback"]

#: ``callback(t, x0_hat, x_prev) -> x_prev`` runs after each reverse step; THOR uses it to harmonize.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class SeededNoise:
    """Per-image noise streams, so the noise an image gets does not depend on batch size or on how a volume is split
    into chunks (results still differ by float rounding: batched network kernels round differently per batch size).

    Each image (or slice) owns a CPU ``torch.Generator`` seeded from an integer. Gaussian noise is drawn on the CPU and
    moved to the target device, so CPU and CUDA runs use identical noise. Simplex noise draws its hash tables from
    the same generators and evaluates every image's field in one pass on the target device (on CUDA it matches the
    CPU fields to float rounding).

    Args:
        seeds: one integer seed per image in the batch.
        noise_type: ``"gaussian"`` or ``"simplex"``.
        device: device of the returned noise.
        simplex_kwargs: extra options for :func:`monai_diffad.noise.simplex_noise` (e.g. ``normalize``).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        noise_type: str,
        device: torch.device,
        simplex_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.noise_type = noise_type
        self.device = device
        self.simplex_kwargs = simplex_kwargs or {}
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, shape: Sequence[int], t: int = 0) -> torch.Tensor:
        """Noise of shape ``(len(seeds), *shape)``; ``t`` is Simplex noise's third coordinate (ignored for Gaussian)."""
        if self.noise_type == NoiseType.SIMPLEX:
            shape = (len(self.generators), *shape)
            return make_noise(
                self.noise_type, shape, t=t, generator=self.generators, device=self.device,
                simplex_kwargs=self.simplex_kwargs,
            )  # fmt: skip
        parts = [make_noise(self.noise_type, (1, *shape), generator=g) for g in self.generators]
        return torch.cat(parts, dim=0).to(self.device)


class PartialDiffusionInferer(DiffusionAnomalyInferer):
    """Detection frame plus partial noising: noise the input to level L, reverse diffusion to 0 with a DDPM.

    Subclasses implement :meth:`~DiffusionAnomalyInferer.detect_batch` from :meth:`noise_streams`,
    :meth:`partial_reverse`, :meth:`reverse_step` and :meth:`noise_to_level`.

    Args:
        scheduler: the scheduler the network was trained with; detection needs a ``DDPMScheduler`` with
            T > ``noise_level`` (checked by :meth:`validate_settings` when detection runs, so that the parent's calls
            take any scheduler).
        noise_level: L, the level the input is noised to; the reverse loop makes L + 1 network calls. An integer
            >= 1, and < T when detection runs. Default: the class's ``default_noise_level``.
        noise_type: ``"gaussian"`` or ``"simplex"``, used to noise the input and in every reverse step.
        simplex_normalize: give Simplex noise unit variance (the references do not; raw std is about 0.5).
        simplex_frequency: feature size in pixels of Simplex noise's coarsest octave (64, the references' value at
            their 128² (THOR) and 256² (AnoDDPM) images; the same relative scale at another image size ``n`` is
            ``64 * n / 128`` or ``64 * n / 256``). It must be the value the network was trained with.
        step_stride: visit every ``step_stride``-th level of the reverse process (L, L - s, ..., 0), each step drawing
            from the exact DDPM posterior between the two levels: about ``step_stride`` times fewer network calls.
            1 (default) is the papers' full schedule.
        kwargs: options of the detection frame :class:`DiffusionAnomalyInferer` (``value_range``, ``model_range``,
            ``max_batch_size``, ``precision``, ...).

    Raises:
        ValueError: an option is out of range or unknown.
    """

    default_noise_level: int = 350
    default_noise_type: str = NoiseType.GAUSSIAN

    def __init__(
        self,
        scheduler: Scheduler,
        noise_level: int | None = None,
        noise_type: str | None = None,
        simplex_normalize: bool = False,
        simplex_frequency: float = 64.0,
        step_stride: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheduler, **kwargs)
        self.noise_type = str(look_up_option(self.default_noise_type if noise_type is None else noise_type, NoiseType))
        self.noise_level = self._check_level(self.default_noise_level if noise_level is None else noise_level)
        self.simplex_normalize = bool(simplex_normalize)
        if not (math.isfinite(float(simplex_frequency)) and float(simplex_frequency) > 0):
            raise ValueError(f"simplex_frequency must be a finite number > 0, got {simplex_frequency!r}.")
        self.simplex_frequency = float(simplex_frequency)
        if isinstance(step_stride, bool) or int(step_stride) < 1:
            raise ValueError(f"step_stride must be a positive integer, got {step_stride!r}.")
        self.step_stride = int(step_stride)

    # ------------------------------------------------------------------ levels
    @staticmethod
    def _check_level(level: int, name: str = "noise_level") -> int:
        """``level`` as an int, refused unless an integer >= 1 (its upper bound T - 1 waits for the scheduler)."""
        if isinstance(level, bool) or not float(level).is_integer():
            raise ValueError(f"{name} must be an integer, got {level!r}.")
        if int(level) < 1:
            raise ValueError(f"{name}={int(level)} is outside [1, T - 1]: a level must be at least 1.")
        return int(level)

    def check_level_fits(self, level: int, name: str) -> None:
        """Refuse a level the scheduler does not have (detection-time part of the level checks).

        Raises:
            ValueError: ``level`` > T - 1.
        """
        if level > self.num_train_timesteps - 1:
            raise ValueError(
                f"{name}={level} is outside [1, {self.num_train_timesteps - 1}] for a scheduler with "
                f"T={self.num_train_timesteps} training steps."
            )

    def validate_settings(self) -> None:
        """The frame's scheduler check, then ``noise_level`` < T.

        Raises:
            TypeError: the scheduler is not a ``DDPMScheduler``.
            ValueError: ``noise_level`` >= T.
        """
        super().validate_settings()
        self.check_level_fits(self.noise_level, "noise_level")

    @property
    def num_network_calls(self) -> int:
        """One call per visited level of the reverse loop from L: ⌈L / s⌉ + 1 (L + 1 with ``step_stride`` 1)."""
        return len(self.reverse_schedule(self.noise_level))

    # ------------------------------------------------------------------ noise
    def noise_streams(self, batch: DetectionBatch) -> SeededNoise:
        """The batch's per-image noise streams of this inferer's ``noise_type``, on the images' device."""
        simplex = {"normalize": self.simplex_normalize, "frequency": self.simplex_frequency}
        return SeededNoise(batch.seeds, self.noise_type, batch.images.device, simplex)

    def noise_to_level(self, x_model: torch.Tensor, noise: torch.Tensor, level: int) -> torch.Tensor:
        """The forward process q(x_level | x_0): the scheduler's ``add_noise`` at ``level`` for the whole batch.

        Args:
            x_model: ``(B, C, H, W)`` clean images in the network's range.
            noise: standard noise of the same shape.
            level: the level t, in [0, T - 1].

        Returns:
            x_t, same shape.
        """
        timesteps = torch.full((x_model.shape[0],), level, device=x_model.device, dtype=torch.long)
        return self.scheduler.add_noise(x_model, noise, timesteps)

    # ------------------------------------------------------------------ reverse process
    def reverse_schedule(self, start: int) -> list[int]:
        """Timesteps visited by the reverse loop from ``start`` down to 0 (each is one network call).

        With ``step_stride`` s: ``start, start - s, ...`` and always 0 last, so the final x̂0 comes from t = 0.
        """
        steps = list(range(start, -1, -self.step_stride))
        return steps if steps[-1] == 0 else [*steps, 0]

    def reverse_step(
        self,
        diffusion_model: torch.nn.Module,
        x_t: torch.Tensor,
        t: int,
        prev_t: int,
        noise: SeededNoise,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from level ``t`` to ``prev_t``: one network call, x̂0, then a draw from the DDPM posterior.

        Args:
            diffusion_model: the epsilon-prediction network ``model(x, timesteps=...)``.
            x_t: ``(B, C, H, W)`` state at level ``t`` (network range).
            t: current level, in [0, T - 1].
            prev_t: next level, in [0, t - 1], or -1 for the last step (the posterior mean, no noise drawn).
            noise: the per-image streams the step noise is drawn from (at Simplex coordinate ``prev_t``).

        Returns:
            ``(x0_hat, x_prev)``: x̂0 as the scheduler clips it and the state at ``prev_t``, both in the network's range.
        """
        scheduler = self.detection_scheduler()
        model_output = self.call_network(diffusion_model, x_t, t)
        x0_hat = predict_original(scheduler, model_output, t, x_t)
        step_noise = noise(tuple(x_t.shape[1:]), t=prev_t) if prev_t >= 0 else None
        return x0_hat, posterior_step(scheduler, x0_hat, x_t, t, prev_t, step_noise)

    @torch.no_grad()
    def partial_reverse(
        self,
        x_model: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: SeededNoise,
        start: int,
        initial_noise: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Noise ``x_model`` to level ``start`` and run the reverse process to 0 (``len(reverse_schedule(start))`` calls).

        Args:
            x_model: clean inputs in the network's range, ``(B, C, H, W)``.
            diffusion_model: the epsilon-prediction network ``model(x, timesteps=...)``.
            noise: per-image noise streams for the forward noise (when ``initial_noise`` is None) and every step.
            start: the noise level L.
            initial_noise: forward noise ε0 to use; drawn from ``noise`` at ``t = start`` when None.
            callback: called after each step with ``(t, x0_hat, x_prev)``; returns the state to continue from.
            progress: show a tqdm bar over the steps.

        Returns:
            The restored image in the network's range (the final x̂0 posterior mean).
        """
        eps0 = noise(tuple(x_model.shape[1:]), t=start) if initial_noise is None else initial_noise
        x_t = self.noise_to_level(x_model, eps0, start)
        schedule = self.reverse_schedule(start)
        bar = tqdm(schedule, desc=type(self).__name__, disable=not progress, leave=False)
        for i, t in enumerate(bar):
            prev_t = schedule[i + 1] if i + 1 < len(schedule) else -1
            x0_hat, x_prev = self.reverse_step(diffusion_model, x_t, t, prev_t, noise)
            x_t = callback(t, x0_hat, x_prev) if callback is not None else x_prev
        return x_t
