# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Check the papers' method orderings, per size stratum, on evaluation reports.

Each ordering (e.g. THOR > AutoDDPM > DDPM, THOR's Table 1) is checked for max-Dice and AUPRC in every stratum
(avg, small, medium, large); a Markdown table marks each cell that holds (✓) or does not (✗).

Usage::

    python scripts/paper_orderings.py --report thor=docs/results/cpu_run_6 --report autoddpm=docs/results/cpu_run_9 \
        --report ddpm=docs/results/cpu_run_6 --ordering thor,autoddpm,ddpm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

STRATA = ("all", "small", "medium", "large")
METRICS = ("dice", "auprc")


def method_metrics(report_dir: str, method: str) -> dict[str, Any]:
    """The ``metrics`` of ``method`` in ``report_dir/results.json``."""
    with open(os.path.join(report_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    for entry in results["methods"]:
        if entry["name"] == method and entry["status"] == "ok":
            return dict(entry["metrics"])
    raise KeyError(f"{report_dir}/results.json holds no successful result for {method!r}.")


def ordering_rows(metrics: Mapping[str, Mapping[str, float]], ordering: Sequence[str]) -> list[str]:
    """Markdown rows, one per metric: each stratum's values in ``ordering`` (``a / b / c``), ✓ where they decrease."""
    rows = []
    for metric in METRICS:
        cells = []
        for stratum in STRATA:
            values = [100 * float(metrics[m][f"{metric}_{stratum}"]) for m in ordering]
            holds = all(a > b for a, b in zip(values, values[1:]))
            cells.append(" / ".join(f"{v:.2f}" for v in values) + (" ✓" if holds else " ✗"))
        label = "max-Dice" if metric == "dice" else "AUPRC"
        rows.append(f"| {' > '.join(ordering)} | {label} | " + " | ".join(cells) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="append", required=True, help="METHOD=REPORT_DIR (repeatable)")
    parser.add_argument("--ordering", action="append", required=True, help="comma-separated methods, best first")
    args = parser.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.report)
    metrics = {method: method_metrics(folder, method) for method, folder in sources.items()}
    print("| ordering | metric | avg | small | medium | large |")
    print("|---|---|---|---|---|---|")
    for ordering in args.ordering:
        methods = ordering.split(",")
        missing = [m for m in methods if m not in metrics]
        if missing:
            parser.error(f"no --report for {missing}")
        print("\n".join(ordering_rows(metrics, methods)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
