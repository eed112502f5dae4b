# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""How much detection a scanner's storage conventions cost: one brain with lesions, stored two ways.

Colin27 (never trained on) gets ellipsoidal stroke- and tumour-like lesions and is written twice: in the training
geometry (RAS, 1 mm, a 192 mm square around the brain) and as a scanner stores it (LPS, 0.9 mm in-plane, a 256 mm
field of view, the brain off-centre). The user's command runs a bundle on each folder; the anomaly maps are scored
against the lesion masks on each file's own grid, inside its brain mask. The figure of merit is the ratio of the
scanner copy's AUPRC to the training copy's (1.0: storage costs nothing).

Run (about 2 minutes per method on 2 CPU cores with ``--step_stride 10``)::

    OMP_NUM_THREADS=2 python benchmarks/bench_geometry.py --bundle thor --step_stride 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import torch

from monai_diffad.data.scanner import brain_centre_world, lesion_volume, scanner_grid, store_as_scanned
from monai_diffad.metrics.dice import best_dice
from monai_diffad.metrics.ranking import auprc


def write_copies(folder: str) -> dict[str, str]:
    """Write the training-geometry and the scanner-geometry copies; returns ``{copy: folder}``."""
    volumes, affine = lesion_volume("colin27", z_slices=40)
    extent = np.asarray(volumes["image"].shape, dtype=float)
    centre_world = brain_centre_world(volumes["brain_mask"], affine)
    grids = {
        # what the training slices are: RAS, 1 mm, a 192 mm square centred on the brain
        "training": scanner_grid(extent, (1.0, 1.0, 1.0), "RAS", 192.0, (centre_world[0], centre_world[1], 0.0)),
        # what a scanner writes: LPS, 0.9 mm in-plane, 256 mm field of view, the head 25 mm / -18 mm off-centre
        "scanner": scanner_grid(extent, (0.9, 0.9, 1.0), "LPS", 256.0, (centre_world[0] + 25, centre_world[1] - 18, 0)),
    }
    folders = {}
    for name, (grid_affine, shape) in grids.items():
        root = os.path.join(folder, name)
        paths = {
            "image": os.path.join(root, "images", "colin27.nii.gz"),
            "brain_mask": os.path.join(root, "images", "colin27_brain_mask.nii.gz"),
            "label": os.path.join(root, "labels", "colin27.nii.gz"),
        }
        store_as_scanned(volumes, affine, paths, grid_affine, shape)
        folders[name] = root
    return folders


def score(root: str, output_dir: str) -> dict[str, float]:
    """AUPRC and best Dice of the bundle's map against the lesion mask, inside the brain, on the file's grid."""
    amap = nib.load(os.path.join(output_dir, "colin27_anomaly_map.nii.gz"))
    label = nib.load(os.path.join(root, "labels", "colin27.nii.gz"))
    brain = nib.load(os.path.join(root, "images", "colin27_brain_mask.nii.gz"))
    if amap.shape != label.shape or not np.allclose(amap.affine, label.affine, atol=1e-4):
        raise AssertionError(f"map {amap.shape} is not on the input's grid {label.shape}")
    inside = brain.get_fdata() > 0
    values = torch.as_tensor(amap.get_fdata()[inside], dtype=torch.float32)
    truth = torch.as_tensor(label.get_fdata()[inside] > 0)
    return {
        "auprc": auprc(values[None, None], truth[None, None]),
        "max_dice": best_dice(values[None, None], truth[None, None])[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="thor")
    parser.add_argument("--step_stride", type=int, default=10)
    parser.add_argument("--work_dir", default=None, help="keep the volumes and outputs here (default: a temp folder)")
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_geometry_")
    folders = write_copies(work)
    results = {}
    for name, root in folders.items():
        out = os.path.join(work, f"out_{args.bundle}_{name}")
        command = [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{args.bundle}/inference.json",
            "--dataset_dir", os.path.join(root, "images"), "--output_dir", out,
            "--step_stride", str(args.step_stride), "--save_png", "False",
        ]
        subprocess.run(command, check=True, capture_output=True)
        results[name] = score(root, out)
        print(f"{args.bundle} {name:>8}: AUPRC {results[name]['auprc']:.4f}  max-Dice {results[name]['max_dice']:.4f}")
    ratio = results["scanner"]["auprc"] / results["training"]["auprc"]
    dice_ratio = results["scanner"]["max_dice"] / results["training"]["max_dice"]
    print(f"{args.bundle}: scanner / training geometry  AUPRC ratio {ratio:.3f}  max-Dice ratio {dice_ratio:.3f}")
    print(f"volumes and outputs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
