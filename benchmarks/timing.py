# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def interleaved_min_times(*fns: Callable[[], object], repeats: int) -> list[float]:
    """Minimum wall time of each of ``fns`` over ``repeats`` interleaved rounds (after one warm-up each).

    Interleaving and the minimum keep a busy machine's slow spells from landing on one side of a comparison.
    CUDA work is synchronised before each clock read.
    """

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            bucket.append(time.perf_counter() - start)
    return [min(bucket) for bucket in times]
