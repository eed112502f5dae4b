# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE: restoration of synthetic-anomaly corruption (own network, weights and schedule)."""

from __future__ import annotations

import os
from typing import Any

from lib.configs.base import AnomalyTaskConfig
from lib.infers.params import Option

__all__ = ["DISYREConfig"]


class DISYREConfig(AnomalyTaskConfig):
    """DISYRE has its own x0-prediction network and T = 100 schedule: ``--conf disyre_checkpoint`` and
    ``--conf disyre_network`` set them (defaults: ``bundles/disyre/models/model.pt`` and the demo architecture)."""

    method = "disyre"
    inferer_path = "monai_diffad.inferers.disyre.DISYREInferer"
    method_options = (
        Option("step_size", "int", None, "Restoration step s: the network is called at T, T - s, ... > 0.", 1, 1000,
               target="step_size"),
    )  # fmt: skip
    summary = "DISYRE: step-wise restoration of the image as if it were synthetically corrupted; map of the changes."
    checkpoint_key = "disyre_checkpoint"
    default_checkpoint = os.path.join("bundles", "disyre", "models", "model.pt")
    network_key = "disyre_network"

    def default_network(self) -> dict[str, Any]:
        from monai_diffad.inferers.disyre import DISYRE_DEMO_UNET

        return dict(DISYRE_DEMO_UNET)

    def scheduler(self) -> Any:
        from monai_diffad.inferers.disyre_schedule import disyre_scheduler

        return disyre_scheduler()

    def calls_per_batch(self, inferer: Any) -> int | None:
        # whole slices (no sliding window here): one call per restoration step
        return len(inferer.restoration_steps())
