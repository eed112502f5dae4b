# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark evaluation: run methods from their bundles on a labelled set and write a paper-style report.

Methods come from the registry of :mod:`monai_diffad.methods`. Command line: ``python -m monai_diffad.evaluate --methods thor,ddpm --data data_cache/dev_64.npz --out docs/results``;
bundles: ``python -m monai.bundle run --config_file bundles/thor/evaluate.json``.
"""

from __future__ import annotations

from monai_diffad.evaluate.dataset import (
    LABELLED_SPLITS,
    EvaluationSet,
    load_evaluation_set,
    resolve_data_path,
    select_items,
)
from monai_diffad.evaluate.report import (
    METRIC_COLUMNS,
    REPORT_FILES,
    results_markdown,
    run_metadata,
    write_report,
)
from monai_diffad.evaluate.runner import (
    REPORTED_STRATA,
    STATUSES,
    MethodMetrics,
    MethodResult,
    evaluate_bundle_method,
    evaluate_method,
    run_bundle_evaluation,
    run_evaluation,
)

__all__ = [
    "EvaluationSet",
    "LABELLED_SPLITS",
    "METRIC_COLUMNS",
    "MethodMetrics",
    "MethodResult",
    "REPORTED_STRATA",
    "REPORT_FILES",
    "STATUSES",
    "evaluate_bundle_method",
    "evaluate_method",
    "load_evaluation_set",
    "resolve_data_path",
    "results_markdown",
    "run_bundle_evaluation",
    "run_evaluation",
    "run_metadata",
    "select_items",
    "write_report",
]
