# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Command line: ``python -m monai_diffad.data build --out DIR --resolution 64 --seed 0 --what all``.

``train`` caches the healthy training slices (``train_slices_R.npz``; with ``--synthetic-subjects K``, K deformed
copies of each template join them in ``train_slices_R_kK.npz``); ``dev`` writes the synthetic development set
(NIfTI + ``datalist_R.json`` + ``dev_128.npz``/``dev_64.npz``); ``unseen`` writes the unseen-anatomy check set
(``unseen_128.npz``/``unseen_64.npz`` from ``--subjects`` Colin27 pseudo-subjects); ``demo`` writes the small demo
assets into ``--out`` (``--out demo_data`` for the shipped ones); ``all`` builds train and dev into ``--out`` and the
demo into ``--out/demo``; ``scans`` writes a small cohort stored as scanners store scans (``healthy/``,
``patients/``, ``labels/``; see ``docs/your_data.md``) to rehearse training, calibration and detection on. Everything
is read from installed packages; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from monai_diffad.data.build import (
    SUPPORTED_RESOLUTIONS,
    UNSEEN_SUBJECTS,
    build_demo_data,
    build_dev_set,
    build_training_set,
    build_unseen_set,
)
from monai_diffad.data.scanner import build_scan_folders

WHAT = ("train", "dev", "unseen", "demo", "all", "scans")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and build the requested sets; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m monai_diffad.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build data sets from the offline sources")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--resolution", type=int, default=64, choices=SUPPORTED_RESOLUTIONS)
    build.add_argument("--seed", type=int, default=0, help="seed of the dev set, the unseen set, synthetic subjects")
    build.add_argument("--what", choices=WHAT, default="all")
    build.add_argument(
        "--synthetic-subjects", type=int, default=0, help="train: deformed copies of each template (0: templates only)"
    )
    build.add_argument("--subjects", type=int, default=UNSEEN_SUBJECTS, help="unseen: Colin27 pseudo-subjects")
    args = parser.parse_args(argv)
    if args.what in ("train", "all"):
        print(build_training_set(args.out, args.resolution, args.synthetic_subjects, args.seed))
    if args.what in ("dev", "all"):
        print(build_dev_set(args.out, args.resolution, args.seed))
    if args.what == "unseen":
        for path in build_unseen_set(args.out, args.seed, args.subjects):
            print(path)
    if args.what in ("demo", "all"):
        print(build_demo_data(args.out if args.what == "demo" else os.path.join(args.out, "demo"), args.seed))
    if args.what == "scans":
        for folder in build_scan_folders(args.out).values():
            print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
