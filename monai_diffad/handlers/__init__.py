# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers for MONAI engines (bundles' evaluators)."""

from __future__ import annotations

from monai_diffad.handlers.results import AnomalyResultsWriter

__all__ = ["AnomalyResultsWriter"]
