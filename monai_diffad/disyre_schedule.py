# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE's corruption schedule: pure functions over a DDPM beta table (Naval Marimont et al., ISBI 2024).

DISYRE replaces Gaussian noise by a foreign-patch interpolation x_t = (1 − α_t·m)·x0 + α_t·m·x_fp whose strength
α_t grows with t. The paper takes α_t from the DDPM schedule ("analogous to 1 − √ᾱ_t") with T = 100 steps, linear
β from 1e-3 to 0.2, α_0 = 0 and α_T = 1.

Timestep convention (paper, used everywhere in monai-diffad): **t large = more corruption**. With Ho et al.'s
1-based table ᾱ_t = Π_{s≤t}(1 − β_s), ᾱ_0 = 1:

    α_t = (1 − √ᾱ_t) / (1 − √ᾱ_T),   t = 0 … T,

so α_0 = 0 exactly and α_T = 1 exactly (the rescale is a factor 1/(1 − √ᾱ_T) ≈ 1.0047 for the paper's betas). The
reference code (snavalm/disyre) uses the opposite convention: its training maps an interpolation factor α to
t_ref = argmin_t |√ᾱ_t − α| over the 0-based table, so t_ref = 0 means α ≈ 1 and t_ref = 99 means α ≈ 0.005, while its
sampler reads the flipped table √ᾱ_{99−t}. Reference checkpoints therefore expect reference timesteps; our networks
are trained and restored with the paper's t. :func:`reference_timestep` converts an α to the reference's t.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDPMScheduler
from monai.utils import look_up_option

__all__ = [
    "DISYRE_NUM_STEPS",
    "STEP_SCHEDULES",
    "UPDATE_RULES",
    "check_step_size",
    "check_timesteps",
    "disyre_scheduler",
    "corruption_alphas",
    "timestep_for_alpha",
    "reference_timestep",
    "reference_restoration_steps",
    "restoration_timesteps",
    "restoration_update",
]

#: Paper / reference number of corruption steps T.
DISYRE_NUM_STEPS = 100
#: ``"paper"``: Algorithm 1's Q, x_{t'} = (1 − α_{t'})·x̂0 + α_{t'}·x_t. ``"cold"``: the reference sampler's default,
#: the cold-diffusion update x_{t'} = x̂0 + (α_{t'}/α_t)·(x_t − x̂0).
UPDATE_RULES = ("paper", "cold")
#: Which corruption level the network is told at each call. ``"reference"``: the reference evaluation's trailing
#: timesteps T − 1, T − 1 − s, … read through the reference's training map (α = √ᾱ_t, see
#: :func:`reference_restoration_steps`). ``"paper"``: Algorithm 1's t = T, T − s, … in the paper convention.
STEP_SCHEDULES = ("reference", "paper")


def disyre_scheduler(
    num_train_timesteps: int = DISYRE_NUM_STEPS, beta_start: float = 1e-3, beta_end: float = 0.2
) -> DDPMScheduler:
    """The DDPM table DISYRE's α_t is derived from (paper/reference: T = 100, linear β 1e-3 → 0.2).

    The scheduler also serves the ``DiffusionInferer`` calls inherited by ``DISYREInferer``; it is configured for
    x0 prediction (what a DISYRE network outputs) with x0 clipped to the data range [0, 1].

    Args:
        num_train_timesteps: T, at least 2.
        beta_start: first β.
        beta_end: last β.

    Returns:
        A MONAI ``DDPMScheduler``.

    Raises:
        ValueError: T < 2 or betas outside (0, 1).
    """
    if int(num_train_timesteps) < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}.")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        schedule="linear_beta",
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type="sample",
        clip_sample=True,
        clip_sample_min=0.0,
        clip_sample_max=1.0,
    )


def corruption_alphas(scheduler: DDPMScheduler) -> torch.Tensor:
    """α_t for t = 0 … T (paper convention, see the module docstring): ``(T + 1,)`` float32, increasing, 0 → 1.

    Args:
        scheduler: a DDPM scheduler; its ``alphas_cumprod`` (0-based: entry i is Ho et al.'s ᾱ_{i+1}) defines the table.

    Returns:
        The table; ``alphas[0] == 0`` and ``alphas[-1] == 1``.
    """
    root = torch.cat([torch.ones(1), scheduler.alphas_cumprod.detach().double().cpu()]).sqrt()
    return ((1.0 - root) / (1.0 - root[-1])).float()


def timestep_for_alpha(alpha: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """The paper timestep whose α_t is nearest to each ``alpha`` (used when training draws α ~ U[0, 1]).

    Args:
        alpha: ``(B,)`` interpolation factors in [0, 1].
        alphas: the ``(T + 1,)`` table of :func:`corruption_alphas`.

    Returns:
        ``(B,)`` long timesteps in [0, T], on ``alpha``'s device.
    """
    table = alphas.to(alpha.device, torch.float32)
    return (table[None, :] - alpha.float().reshape(-1, 1)).abs().argmin(dim=1)


def reference_timestep(alpha: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """The reference code's (reversed) training timestep for ``alpha``: argmin over the 0-based table of |√ᾱ_t − α|.

    Only needed to condition a network trained by the reference code; monai-diffad networks use the paper's t.

    Args:
        alpha: ``(B,)`` interpolation factors in [0, 1].
        scheduler: the DDPM table (T = 100, β 1e-3 → 0.2 in the reference).

    Returns:
        ``(B,)`` long timesteps in [0, T − 1]; large t means *little* corruption.
    """
    root = scheduler.alphas_cumprod.to(alpha.device, torch.float32).sqrt()
    return (root[None, :] - alpha.float().reshape(-1, 1)).abs().argmin(dim=1)


def reference_restoration_steps(scheduler: DDPMScheduler, step_size: int) -> tuple[list[int], list[float]]:
    """The reference evaluation's network calls, expressed for a paper-convention network.

    The reference sampler visits t_ref = T − 1, T − 1 − s, … ≥ 0 ("trailing" spacing; T = 100, s = 25: 99, 74, 49,
    24). Its network was trained with t_ref = argmin|√ᾱ_t − α| (0-based table), so at t_ref it is told the
    interpolation factor α = √ᾱ_{t_ref} — about 0.005, 0.05, 0.27, 0.73: the reference's network is conditioned on
    *weak* corruptions, the mirror of the paper's α_t (≈ 1 − α_t). A network trained in the paper convention is told
    the same α by calling it at the paper t whose α_t is nearest (T = 100, s = 25: 3, 10, 25, 50). The reference's
    multi-step sampler meanwhile updates its state with the flipped table, α = √ᾱ_{T − 1 − t_ref} (≈ 1.00, 0.71,
    0.26, 0.05), which this function returns as well so that a multi-step restoration can reproduce it.

    Args:
        scheduler: the DDPM table (T = 100, β 1e-3 → 0.2 in the reference).
        step_size: s, in [1, T].

    Returns:
        ``(timesteps, update_alphas)``: the paper timesteps to call the network at, in the reference's call order
        (ascending t), and the α in [0, 1] the reference's sampler uses to update the state after each call.

    Raises:
        ValueError: ``step_size`` outside [1, T].
    """
    root = scheduler.alphas_cumprod.detach().double().cpu().sqrt()
    t_max = len(root)
    reference_steps = [t - 1 for t in restoration_timesteps(t_max, step_size)]
    timesteps = timestep_for_alpha(root[reference_steps].float(), corruption_alphas(scheduler))
    return [int(t) for t in timesteps], [float(root[t_max - 1 - t]) for t in reference_steps]


def check_step_size(step_size: int, num_steps: int | None = None) -> int:
    """``step_size`` as an int, refused unless an integer in [1, T] (only >= 1 when ``num_steps`` T is ``None``).

    Raises:
        ValueError: ``step_size`` is not an integer in range.
    """
    upper = float("inf") if num_steps is None else int(num_steps)
    if isinstance(step_size, bool) or not float(step_size).is_integer() or not 1 <= int(step_size) <= upper:
        raise ValueError(f"step_size must be an integer in [1, T={'T' if num_steps is None else num_steps}], "
                         f"got {step_size!r}.")
    return int(step_size)


def restoration_timesteps(num_steps: int, step_size: int) -> list[int]:
    """Timesteps at which Algorithm 1 calls the network: T, T − s, … while > 0 (T = 100, s = 25: 100, 75, 50, 25).

    Args:
        num_steps: T.
        step_size: s, in [1, T].

    Returns:
        Descending timesteps, each one network call.

    Raises:
        ValueError: ``step_size`` outside [1, T].
    """
    return list(range(int(num_steps), 0, -check_step_size(step_size, num_steps)))


def restoration_update(
    x0_hat: torch.Tensor, x_t: torch.Tensor, alpha_t: float, alpha_next: float, rule: str = "paper"
) -> torch.Tensor:
    """One restoration step from level t to t' < t, clamped to [0, 1].

    Args:
        x0_hat: ``(B, C, H, W)`` network restoration P(x_t, t) in [0, 1].
        x_t: ``(B, C, H, W)`` current state in [0, 1].
        alpha_t: α_t of the current level (used by ``"cold"``; must be > 0 there).
        alpha_next: α_{t'} of the next level.
        rule: one of :data:`UPDATE_RULES`.

    Returns:
        x_{t'} in [0, 1].

    Raises:
        ValueError: unknown rule, or ``"cold"`` with α_t = 0.
    """
    rule = look_up_option(rule, UPDATE_RULES)
    if rule == "paper":
        out = (1.0 - alpha_next) * x0_hat + alpha_next * x_t
    else:
        if alpha_t <= 0:
            raise ValueError("The cold-diffusion update needs alpha_t > 0 (t >= 1).")
        # x̂_T = (x_t − (1 − α_t)·x̂0)/α_t, re-corrupted to level t': (1 − α_t')·x̂0 + α_t'·x̂_T
        out = x0_hat + (alpha_next / alpha_t) * (x_t - x0_hat)
    return out.clamp(0.0, 1.0)


def check_timesteps(timesteps: Sequence[int], num_steps: int | None = None) -> tuple[int, ...]:
    """Validate an explicit, strictly descending list of timesteps in [0, T] (only >= 0 when ``num_steps`` T is
    ``None``).

    Raises:
        ValueError: a timestep is not an integer in range, or the list is empty or not strictly descending.
    """
    upper = float("inf") if num_steps is None else int(num_steps)
    values = []
    for t in timesteps:
        if isinstance(t, bool) or not float(t).is_integer() or not 0 <= int(t) <= upper:
            raise ValueError(f"timestep {t!r} must be an integer in [0, T={'T' if num_steps is None else num_steps}].")
        values.append(int(t))
    if not values or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"timesteps must be a non-empty, strictly descending list, got {list(timesteps)}.")
    return tuple(values)
