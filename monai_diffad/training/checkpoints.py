# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Find the checkpoint a training run resumes from, or start it from exported weights."""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from monai.networks.nets import DiffusionModelUNet

__all__ = ["latest_checkpoint", "resume_seed", "warm_start"]

logger = logging.getLogger(__name__)

_ITERATION = re.compile(r"(\d+)\.pt$")


def _iteration_of(path: str) -> int:
    match = _ITERATION.search(os.path.basename(path))
    return int(match.group(1)) if match else -1


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint") -> str | None:
    """The newest resumable checkpoint written by ``monai.handlers.CheckpointSaver`` in ``ckpt_dir``.

    ``CheckpointSaver`` names iteration-level files ``{prefix}_checkpoint_iteration={N}.pt`` (``_final_iteration=`` at
    the end); the highest ``N`` wins.

    Args:
        ckpt_dir: folder to search (may not exist yet).
        prefix: the saver's ``file_prefix``.

    Returns:
        The path, or ``None`` when there is nothing to resume.
    """
    candidates = [p for p in glob.glob(os.path.join(ckpt_dir, f"{prefix}_*.pt")) if _iteration_of(p) >= 0]
    return max(candidates, key=_iteration_of) if candidates else None


def resume_seed(seed: int, ckpt_dir: str, prefix: str = "checkpoint") -> int:
    """``seed`` plus the iteration being resumed, so a resumed run does not replay the same random augmentations."""
    path = latest_checkpoint(ckpt_dir, prefix)
    return int(seed) + (0 if path is None else _iteration_of(path))


def warm_start(
    network: torch.nn.Module, ema_network: torch.nn.Module, weights: str | None, resume_from: str | None = None
) -> bool:
    """Start training from exported weights: load ``weights`` into the network and its EMA copy.

    A resumable checkpoint wins (it restores the optimiser too), so this only acts when ``resume_from`` is ``None``.
    ``weights`` may be a plain or int8 state dict (:func:`monai_diffad.networks.load_state_dict_safely`): this is how a
    run continues from EMA weights an earlier run exported, with a fresh optimiser.

    Args:
        network: the trained network; a ``DistributedDataParallel`` (or ``DataParallel``) wrapper is loaded through
            its ``module``, the same file on every rank.
        ema_network: its EMA copy (receives the same weights).
        weights: state-dict file, or ``None``/``""`` for a fresh start.
        resume_from: the checkpoint the run resumes from, if any.

    Returns:
        Whether weights were loaded.

    Raises:
        FileNotFoundError, ValueError: from :func:`monai_diffad.networks.load_diffusion_unet` (missing file, unsafe
            file, or an architecture that does not match the config's ``network_def``).
    """
    if not weights or resume_from:
        if weights:
            logger.info("Resuming from %s: init_weights %s is not used.", resume_from, weights)
        return False
    from monai_diffad.networks import load_diffusion_unet

    # the bundles pass a DiffusionModelUNet (or a DDP wrapper of one): their config, not the types, guarantees it
    module = cast("DiffusionModelUNet", getattr(network, "module", network))
    load_diffusion_unet(weights, model=module).train()  # the loader leaves the network in eval mode
    ema_network.load_state_dict(module.state_dict())
    logger.info("Network and EMA initialised from %s (fresh optimiser).", weights)
    return True
