# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Command line: ``python -m monai_diffad.evaluate --methods thor,ddpm --data DEV.npz --out docs/results``.

Under ``torchrun --nproc_per_node=N -m monai_diffad.evaluate ...`` the N processes split the items (one GPU each, or
CPU processes with ``--device cpu``) and the report equals a single process's.

Builds each method from ``<bundles>/<method>/inference.json`` (``thor_simplex``: the THOR bundle with Simplex noise),
runs it on the labelled set and writes ``results.md``, ``results.csv``, ``results.json``, ``pr_curves.png`` and
``examples.png``. Methods whose bundle or weights do not exist yet are listed as skipped. Exit status 1 when a
method failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from monai_diffad.evaluate.dataset import resolve_data_path
from monai_diffad.evaluate.distributed import process_group_from_environment
from monai_diffad.evaluate.runner import run_evaluation
from monai_diffad.methods import get_available_methods, parse_overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the evaluation and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m monai_diffad.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(get_available_methods()), help="comma-separated methods, in table order")
    parser.add_argument(
        "--data", required=True, help="labelled set: .npz export or .json datalist (or a folder with datalist.json)"
    )
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--bundles", default="bundles", help="folder holding the bundles (default: ./bundles)")
    parser.add_argument("--limit", type=int, default=None, help="use N items, taken in turn from each size class")
    parser.add_argument("--seed", type=int, default=0, help="noise seed, the same for every method")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per detect() call")
    parser.add_argument("--examples", type=int, default=4, help="example slices in examples.png")
    parser.add_argument(
        "--override", action="extend", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
        help="config override, e.g. thor.noise_level=100 or all.max_batch_size=8 (nested ids: inferer#progress)",
    )
    parser.add_argument(
        "--overlay", action="append", default=[], metavar="FILE",
        help="config file merged over every bundle config it fits, e.g. bundles/ddpm/inference_paper.json",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        parser.error("--methods names no method.")
    try:
        overrides = parse_overrides(args.override, methods)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with process_group_from_environment(args.device) as (rank, world_size):
        launcher = f"torchrun --nproc_per_node={world_size} -m" if world_size > 1 else "python -m"
        results = run_evaluation(
            methods,
            resolve_data_path(args.data),
            args.out,
            bundles_dir=args.bundles,
            overrides=overrides,
            overlays=args.overlay,
            limit=args.limit,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            n_examples=args.examples,
            command=f"{launcher} monai_diffad.evaluate " + shlex.join(argv),
            progress=not args.no_progress,
        )
    if rank > 0:
        return 1 if any(r.status == "failed" for r in results) else 0
    for r in results:
        print(f"{r.name}: {r.status}" + (f" ({r.reason})" if r.reason else ""))
    print(f"report: {args.out}/results.md")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
