# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Pure functions of a DDPM scheduler's state: x0 prediction and the reverse-step posterior.

MONAI's ``DDPMScheduler.step`` always draws Gaussian noise and only steps from t to t - 1. Partial-noising detectors
need to inject their own noise (Simplex for AnoDDPM/THOR, per-image seeded streams) and, for accelerated
schedules, to step from t to any earlier t' (and, for RePaint-style re-sampling, forward from t' back to t). These
functions read only the scheduler's public tables, so they match ``scheduler.step`` exactly when t' = t - 1 and the
same noise is used.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler

__all__ = ["forward_step", "predict_original", "posterior_step"]


def _table(scheduler: Scheduler, name: str, t: int, like: torch.Tensor) -> torch.Tensor:
    return getattr(scheduler, name)[t].to(device=like.device, dtype=like.dtype)


def predict_original(
    scheduler: DDPMScheduler, model_output: torch.Tensor, t: int, sample: torch.Tensor
) -> torch.Tensor:
    """The network's estimate of x0 at step ``t``, clipped as the scheduler's ``clip_sample`` asks.

    Args:
        scheduler: a DDPM scheduler (epsilon, sample or v prediction).
        model_output: network output ``(B, C, *spatial)``.
        t: current timestep in ``[0, T)``.
        sample: the current noisy image x_t, same shape.

    Returns:
        x̂0, same shape as ``sample``, in the model's value range.
    """
    alpha_prod = _table(scheduler, "alphas_cumprod", t, sample)
    prediction_type = str(scheduler.prediction_type)
    if prediction_type == "epsilon":
        x0 = (sample - (1 - alpha_prod) ** 0.5 * model_output) / alpha_prod**0.5
    elif prediction_type == "sample":
        x0 = model_output
    elif prediction_type == "v_prediction":
        x0 = alpha_prod**0.5 * sample - (1 - alpha_prod) ** 0.5 * model_output
    else:
        raise ValueError(f"Unsupported scheduler prediction_type '{prediction_type}'.")
    if scheduler.clip_sample:
        x0 = torch.clamp(x0, scheduler.clip_sample_values[0], scheduler.clip_sample_values[1])
    return x0


def posterior_step(
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    sample: torch.Tensor,
    t: int,
    prev_t: int,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Draw x_{t'} from q(x_{t'} | x_t, x̂0) for any ``0 <= t' < t`` (t' = -1 means "return x̂0's posterior mean at t=0").

    With ``prev_t == t - 1`` this is DDPM's step (Ho et al. 2020, Eq. 7) with the scheduler's variance type
    (``fixed_small`` or ``fixed_large``); with a larger stride it is the same posterior between the two levels, which
    keeps strided schedules faithful to the trained marginals.

    Args:
        scheduler: the DDPM scheduler the model was trained with.
        x0: predicted clean image.
        sample: x_t.
        t: current level.
        prev_t: target level ``t' < t``; ``-1`` denotes the final step (no noise added).
        noise: noise of ``sample``'s shape scaled by the posterior std; ignored when ``prev_t < 0``.

    Returns:
        x_{t'} (or the t = 0 posterior mean when ``prev_t < 0``).
    """
    if not -1 <= prev_t < t:
        raise ValueError(f"posterior_step needs -1 <= prev_t < t, got t={t}, prev_t={prev_t}.")
    alpha_prod = _table(scheduler, "alphas_cumprod", t, sample)
    alpha_prod_prev = (
        _table(scheduler, "alphas_cumprod", prev_t, sample) if prev_t >= 0 else torch.ones_like(alpha_prod)
    )
    if prev_t == t - 1:
        # consecutive steps: use the scheduler's own tables so results equal scheduler.step bit for bit
        alpha, beta = _table(scheduler, "alphas", t, sample), _table(scheduler, "betas", t, sample)
    else:
        alpha = alpha_prod / alpha_prod_prev
        beta = 1 - alpha
    mean = (alpha_prod_prev**0.5 * beta / (1 - alpha_prod)) * x0 + (
        alpha**0.5 * (1 - alpha_prod_prev) / (1 - alpha_prod)
    ) * sample
    if prev_t < 0 or noise is None:
        return mean
    if str(scheduler.variance_type) == "fixed_large":
        variance = beta
    else:
        variance = torch.clamp((1 - alpha_prod_prev) / (1 - alpha_prod) * beta, min=1e-20)
    return mean + variance**0.5 * noise


def forward_step(
    scheduler: Scheduler,
    sample: torch.Tensor,
    t: int,
    prev_t: int,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Draw x_t from the forward process q(x_t | x_{t'}) = N(√α·x_{t'}, (1 − α)·I) for any ``-1 <= t' < t``.

    α = ᾱ_t / ᾱ_{t'} (ᾱ_{-1} = 1: ``prev_t = -1`` is the clean image, so this is ``scheduler.add_noise``); with
    ``prev_t == t - 1`` it is the single step √(1 − β_t)·x_{t−1} + √β_t·z read from the scheduler's ``betas`` table
    (bit-exact, no cumulative-product ratio).

    Args:
        scheduler: the scheduler the model was trained with (only its ``betas`` and ``alphas_cumprod`` are read).
        sample: x_{t'}.
        t: target level.
        prev_t: current level ``t' < t``.
        noise: standard noise z of ``sample``'s shape.

    Returns:
        x_t.
    """
    if not -1 <= prev_t < t:
        raise ValueError(f"forward_step needs -1 <= prev_t < t, got t={t}, prev_t={prev_t}.")
    if prev_t == t - 1:
        beta = _table(scheduler, "betas", t, sample)
    else:
        alpha_prod = _table(scheduler, "alphas_cumprod", t, sample)
        alpha_prod_prev = (
            _table(scheduler, "alphas_cumprod", prev_t, sample) if prev_t >= 0 else torch.ones_like(alpha_prod)
        )
        beta = 1 - alpha_prod / alpha_prod_prev
    return (1 - beta).sqrt() * sample + beta.sqrt() * noise
