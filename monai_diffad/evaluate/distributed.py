# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Splitting an evaluation over the processes of a ``torch.distributed`` job (``torchrun``, one process per GPU).

Every rank runs the same evaluation code on its share of the items: runs of one batch of consecutive items, dealt in
turn (:func:`deal_items`), or consecutive blocks (:func:`split_items`). Results stay identical to a single process:
the noise seeds come one per image from one stream, so a run starting at item ``s`` skips the first ``s`` seeds and
every image gets the noise it gets in a single pass. The metrics are merged by MONAI
(``Cumulative.get_buffer`` all-gathers the buffers of every rank), which needs every rank to hold a buffer of every
metric; both splits therefore give each rank at least one item of each group that fills a per-image buffer.
Without an initialized process group everything here is the single-process case (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather_objects",
    "barrier",
    "deal_items",
    "process_group_from_environment",
    "process_rank",
    "raise_if_any_rank_failed",
    "split_items",
]


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def process_group_from_environment(device: torch.device | str | None = None) -> Iterator[tuple[int, int]]:
    """Join the ``torchrun`` job this process was launched in for the duration of the block; yields ``(rank, size)``.

    ``torchrun`` only sets the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): a command
    line must create the process group itself, or each of its processes would run the whole evaluation. Outside
    ``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``), or when a group already exists, it does nothing.

    Args:
        device: the device the evaluation asks for. CUDA (or ``None`` with CUDA available) uses the ``nccl`` backend
            and makes ``cuda:LOCAL_RANK`` the current device, so ``"cuda"`` means the rank's own GPU; otherwise
            ``gloo`` (CPU processes).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        yield process_rank()
        return
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    try:
        try:  # ignite (MONAI's metric gathering) creates its own group at first use: a collective for every rank
            import ignite.distributed as idist
        except ImportError:
            pass
        else:
            idist.sync()
        yield process_rank()
    finally:
        dist.destroy_process_group()


def split_items(n_items: int, world_size: int, required: Sequence[np.ndarray] = ()) -> list[tuple[int, int]]:
    """Consecutive blocks ``[start, stop)`` of ``range(n_items)``, one per rank, as equal in size as allowed.

    Args:
        n_items: number of items (positions ``0 ... n_items - 1``).
        world_size: number of blocks (processes), >= 1.
        required: boolean (n_items,) masks of item groups; every block holds at least one item of each group that
            is not empty (e.g. the lesion-free items, which alone feed the reconstruction metric).

    Returns:
        ``world_size`` pairs ``(start, stop)``: ``blocks[0][0] == 0``, ``blocks[-1][1] == n_items`` and each block
        starts where the previous one stops.

    Raises:
        ValueError: ``world_size`` < 1, a mask of the wrong shape, or (``world_size`` > 1) fewer items than blocks or
            groups that cannot all be present in every block (e.g. fewer lesion-free items than processes).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}.")
    groups = [np.ones(n_items, dtype=bool)]
    for mask in required:
        mask = np.asarray(mask)
        if mask.shape != (n_items,) or mask.dtype != bool:
            raise ValueError(f"each required group must be a boolean array of shape ({n_items},), got {mask.shape}.")
        if mask.any():
            groups.append(mask)
    if world_size == 1:
        return [(0, n_items)]
    positions = [np.flatnonzero(g) for g in groups]
    for members in positions:
        if len(members) < world_size:
            raise ValueError(
                f"cannot give each of {world_size} processes one of only {len(members)} items of a group (every rank "
                "needs data for every metric, or the metric gathering stalls); use at most that many processes."
            )
    bounds = [0]
    for rank in range(1, world_size):
        remaining = world_size - rank
        # lowest stop: the previous block has one item of every group; highest: the rest still has one per block
        low = max(int(p[np.searchsorted(p, bounds[-1])]) + 1 for p in positions)
        high = min(int(p[len(p) - remaining]) for p in positions)
        if low > high:
            raise ValueError(f"cannot split the items into {world_size} consecutive blocks holding every group.")
        bounds.append(min(max(round(rank * n_items / world_size), low), high))
    bounds.append(n_items)
    return list(zip(bounds[:-1], bounds[1:]))


def deal_items(
    n_items: int, world_size: int, required: Sequence[np.ndarray] = (), chunk: int = 1
) -> list[list[int]]:
    """Positions of ``range(n_items)`` for each rank: runs of ``chunk`` consecutive items dealt in turn.

    Dealing balances the work when the items are sorted by kind (the development set ends with its lesion-free
    slices, so consecutive blocks that must each hold a lesion-free item leave the first rank most of the work).
    When dealing leaves a rank without an item of a required group, the consecutive blocks of :func:`split_items`
    are used instead.

    Args:
        n_items: number of items (positions ``0 ... n_items - 1``).
        world_size: number of ranks, >= 1.
        required: boolean (n_items,) masks of item groups every rank must hold one of (see :func:`split_items`).
        chunk: run length, >= 1; the batch size keeps every batch a run of consecutive positions.

    Returns:
        ``world_size`` ascending position lists that together hold every position once.

    Raises:
        ValueError: ``chunk`` < 1, or as :func:`split_items`.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
    blocks = split_items(n_items, world_size, required)  # validates, and is the fallback
    runs = [range(start, min(start + chunk, n_items)) for start in range(0, n_items, chunk)]
    # MONAI's partition_dataset deals the same way but refuses fewer runs than ranks, which must fall back below
    dealt = [[p for run in runs[rank::world_size] for p in run] for rank in range(world_size)]
    groups = [np.ones(n_items, dtype=bool)] + [np.asarray(m) for m in required if np.asarray(m).any()]
    if all(group[positions].any() for positions in dealt for group in groups):
        return dealt
    return [list(range(start, stop)) for start, stop in blocks]


def raise_if_any_rank_failed(error: BaseException | None) -> None:
    """Collective failure check: every rank calls it with its own error (or ``None``) before the next collective.

    A rank that fails on its own (an image only it holds, memory on its GPU) would otherwise leave the others waiting
    in the metric gathering; here all ranks raise instead.

    Args:
        error: this rank's exception, ``None`` when it succeeded.

    Raises:
        BaseException: ``error`` itself on the rank that had it.
        RuntimeError: on the other ranks, naming the first failed rank and its error.
    """
    rank, world_size = process_rank()
    if world_size > 1:
        messages: list[Any] = [None] * world_size
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is None:
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if failed:
                raise RuntimeError(f"rank {failed[0][0]} of {world_size} failed: {failed[0][1]}")
    if error is not None:
        raise error


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank in rank order (picklable objects); ``[value]`` without a process group."""
    _, world_size = process_rank()
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for every rank (``torch.distributed.barrier``); nothing without a process group."""
    if process_rank()[1] > 1:
        dist.barrier()
