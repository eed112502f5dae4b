# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Find the checkpoint a training run resumes from."""

from __future__ import annotations

import glob
import os
import re

__all__ = ["latest_checkpoint", "resume_seed"]

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
