# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Progress of a long diffusion run, written to the server log.

Every reverse step is one network call, so counting the calls of the network measures progress without reaching
into the inferers; the server log (console and ``logs/app.log``) is where MONAI Label users look for it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

__all__ = ["ProgressLoggedNetwork"]


class ProgressLoggedNetwork(torch.nn.Module):
    """Wraps a network, forwards every call unchanged and logs progress at most every ``interval_s`` seconds.

    Args:
        network: the diffusion network.
        total_calls: expected number of calls (``None`` when the method does not say; the log then counts calls).
        label: prefix of the log lines (e.g. the model name and image).
        logger: where to write.
        interval_s: minimum seconds between two progress lines (the first and the last call are always logged).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        total_calls: int | None,
        label: str,
        logger: logging.Logger,
        interval_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.total_calls = total_calls
        self.label = label
        self.logger = logger
        self.interval_s = float(interval_s)
        self.calls = 0
        self._start = time.perf_counter()
        self._last_log = -float("inf")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.network(*args, **kwargs)
        self.calls += 1
        now = time.perf_counter()
        last = self.total_calls is not None and self.calls >= self.total_calls
        if self.calls == 1 or last or now - self._last_log >= self.interval_s:
            self._last_log = now
            elapsed = now - self._start
            if self.total_calls:
                done = min(self.calls / self.total_calls, 1.0)
                eta = elapsed / done - elapsed if done > 0 else float("nan")
                self.logger.info(
                    f"{self.label}: network call {self.calls}/{self.total_calls} ({100 * done:.0f}%), "
                    f"{elapsed:.1f}s elapsed, ~{eta:.0f}s left"
                )
            else:
                self.logger.info(f"{self.label}: network call {self.calls}, {elapsed:.1f}s elapsed")
        return out
