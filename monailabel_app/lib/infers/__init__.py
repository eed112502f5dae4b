# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The anomaly infer task, its request options and progress logging."""

from __future__ import annotations

from lib.infers.anomaly import OPTIONS_KEY, TASK_OPTIONS, AnomalyInferTask
from lib.infers.params import FRAMEWORK_KEYS, InvalidInferRequest, Option, parse_options
from lib.infers.progress import ProgressLoggedNetwork

__all__ = [
    "AnomalyInferTask",
    "FRAMEWORK_KEYS",
    "InvalidInferRequest",
    "OPTIONS_KEY",
    "Option",
    "ProgressLoggedNetwork",
    "TASK_OPTIONS",
    "parse_options",
]
