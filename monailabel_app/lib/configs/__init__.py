# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""One MONAI Label ``TaskConfig`` per anomaly method, by ``--conf models`` name."""

from __future__ import annotations

from lib.configs.anoddpm import AnoDDPMConfig
from lib.configs.autoddpm import AutoDDPMConfig
from lib.configs.base import AnomalyTaskConfig
from lib.configs.ddpm import DDPMConfig
from lib.configs.disyre import DISYREConfig
from lib.configs.thor import THORConfig
from lib.configs.thor_simplex import THORSimplexConfig

__all__ = ["TASK_CONFIGS", "AnomalyTaskConfig"]

#: ``--conf models`` names, in the order the models are listed (THOR first: the default).
TASK_CONFIGS: dict[str, type[AnomalyTaskConfig]] = {
    c.method: c for c in (THORConfig, THORSimplexConfig, AutoDDPMConfig, DDPMConfig, AnoDDPMConfig, DISYREConfig)
}
