# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE: restoration of synthetic-anomaly corruption (``bundles/disyre``: own network, weights and schedule)."""

from __future__ import annotations

from typing import Any

from lib.configs.base import AnomalyTaskConfig
from lib.infers.params import Option

__all__ = ["DISYREConfig"]


class DISYREConfig(AnomalyTaskConfig):
    """DISYRE has its own x0-prediction network: ``--conf disyre_checkpoint`` and ``--conf disyre_network`` override
    its bundle's ``checkpoint`` and ``network_def`` (``--conf checkpoint``/``network`` are the DDPM's)."""

    method = "disyre"
    method_options = (
        Option("step_size", "int", None, "Restoration step s: the network is called at T, T - s, ... > 0.", 1, 1000,
               target="step_size"),
    )  # fmt: skip
    summary = "DISYRE: step-wise restoration of the image as if it were synthetically corrupted; map of the changes."
    checkpoint_key = "disyre_checkpoint"
    network_key = "disyre_network"

    def calls_per_batch(self, inferer: Any) -> int | None:
        # whole slices (no sliding window here): one call per restoration step
        return len(inferer.restoration_steps())
