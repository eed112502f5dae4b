# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Label-threshold calibration on healthy images at a stated false-positive rate.

A label map needs one operating point. Following THOR's protocol for its wrist X-ray boxes, the threshold is the
lowest of ``num_thresholds`` values in [0, 1) at which, averaged over healthy images, at most ``fpr`` of the pixels
(inside the foreground mask) exceed it. The value is stored in the bundle (config key ``threshold`` and
``metadata.json``) and used by the MONAI Label app; users can override it.

Usage::

    python -m monai_diffad.calibration --bundle thor --data data_cache/dev_64.npz --fpr 0.05 --write
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from monai_diffad.metrics.pooled import as_tensor, as_unit_maps

__all__ = ["healthy_fpr_threshold", "calibrate_bundle", "write_threshold"]


def healthy_fpr_threshold(
    maps: torch.Tensor, masks: torch.Tensor | None = None, fpr: float = 0.05, num_thresholds: int = 1000
) -> float:
    """Lowest threshold in ``{k / num_thresholds}`` whose mean per-image share of foreground pixels above it is ≤ ``fpr``.

    Args:
        maps: ``(N, 1, *spatial)`` anomaly maps of healthy images, in [0, 1].
        masks: optional foreground masks of the same shape (pixels outside are not counted).
        fpr: tolerated share of healthy pixels flagged, in (0, 1).
        num_thresholds: grid size over [0, 1).

    Returns:
        The threshold.

    Raises:
        TypeError: ``maps`` or ``masks`` is not a tensor or array.
        ValueError: ``fpr`` or ``num_thresholds`` out of range, maps empty, not finite or outside [0, 1] (a NaN would
            never count as flagged), shapes differ, or a mask is empty or not finite.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive int, got {num_thresholds!r}.")
    maps = as_unit_maps(maps, "maps")
    if maps.ndim < 2 or maps.numel() == 0:
        raise ValueError(f"maps must be a non-empty (N, 1, *spatial) batch, got shape {tuple(maps.shape)}.")
    flat = maps.flatten(1).float()
    if masks is None:
        valid = torch.ones_like(flat, dtype=torch.bool)
    else:
        masks = as_tensor(masks, "masks")
        if masks.shape != maps.shape:
            raise ValueError(f"masks {tuple(masks.shape)} must match maps {tuple(maps.shape)}.")
        if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
            raise ValueError("masks contain NaN or infinite values.")
        valid = masks.to(flat.device).flatten(1) > 0
    counts = valid.sum(1)
    if (counts == 0).any():
        raise ValueError("a foreground mask is empty; cannot measure its false-positive rate.")
    grid = torch.arange(num_thresholds, dtype=torch.float64) / num_thresholds
    for th in grid.tolist():
        share = ((flat > th) & valid).sum(1).double() / counts
        if share.mean() <= fpr:
            return float(th)
    return float(grid[-1])


def calibrate_bundle(
    bundle: str,
    data: str,
    fpr: float = 0.05,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    overrides: dict | None = None,
    bundles_dir: str = "bundles",
    overlays: Sequence[str] = (),
) -> dict:
    """Run a bundle's method on the lesion-free items of an evaluation set and calibrate its threshold.

    Args:
        bundle: method name (as for :func:`monai_diffad.evaluate.build_method`).
        data: npz or datalist of the development set (items with ``size_class == 0`` are used).
        fpr: tolerated share of healthy brain pixels above the threshold.
        limit: use at most this many healthy items.
        seed: seed of the detection noise.
        batch_size: images per detection call.
        device: computation device.
        overrides: bundle config overrides.
        bundles_dir: folder holding the bundles.
        overlays: config files merged over the bundle's (see :func:`monai_diffad.evaluate.build_method`).

    Returns:
        ``{"threshold", "fpr", "num_images", "data", "bundle"}``.
    """
    from monai_diffad.evaluate import build_method, load_evaluation_set

    method = build_method(bundle, bundles_dir, overrides=overrides or {}, device=device, overlays=overlays)
    dataset = load_evaluation_set(data)
    healthy = np.flatnonzero(dataset.size_class == 0)[: limit or None]
    if len(healthy) == 0:
        raise ValueError(f"'{data}' holds no lesion-free items (size_class 0) to calibrate on.")
    device_ = next(method.network.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    maps, masks = [], []
    for start in tqdm(range(0, len(healthy), batch_size), desc=f"calibrating {bundle}"):
        batch = dataset.batch(healthy[start : start + batch_size], device=device_)
        out = method.inferer.detect(batch["image"], method.network, mask=batch["brain_mask"], generator=generator)
        maps.append(out.anomaly_map.cpu())
        masks.append(batch["brain_mask"].cpu())
    threshold = healthy_fpr_threshold(torch.cat(maps), torch.cat(masks), fpr)
    return {"threshold": threshold, "fpr": fpr, "num_images": int(len(healthy)), "data": data, "bundle": bundle}


def write_threshold(bundle_dir: str, result: dict, key: str = "threshold") -> None:
    """Store a calibration result in ``inference.json`` (``key``) and ``metadata.json``
    (``key`` and a ``<key>_calibration`` record).

    ``key`` is ``"threshold"``, or e.g. ``"threshold_simplex"`` for a variant that shares the bundle.
    """
    config_path = os.path.join(bundle_dir, "inference.json")
    with open(config_path) as f:
        text = f.read()
    # edit the one line so the hand-written layout of the config survives
    text, count = re.subn(rf'("{key}":\s*)[^,\n]+', rf"\g<1>{result['threshold']:.4f}", text, count=1)
    if count != 1:
        raise ValueError(f"'{config_path}' has no top-level \"{key}\" key to update.")
    with open(config_path, "w") as f:
        f.write(text)
    meta_path = os.path.join(bundle_dir, "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta[key] = round(result["threshold"], 4)
    meta[f"{key}_calibration"] = (
        f"lowest of 1000 thresholds with mean share of healthy brain pixels above it <= {result['fpr']:.0%}, on "
        f"{result['num_images']} lesion-free slices of {os.path.basename(result['data'])}"
    )
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=4)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_diffad.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="method/bundle name, e.g. thor")
    parser.add_argument("--data", required=True, help="development set npz or datalist")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--bundles_dir", default="bundles")
    parser.add_argument("--overlay", action="append", default=[], metavar="FILE", help="config merged over the bundle's")
    parser.add_argument("--write", action="store_true", help="store the threshold in the bundle")
    args = parser.parse_args(argv)
    if args.write and args.overlay:
        parser.error("--write stores the bundle's own threshold; with --overlay, put the printed value in your config.")
    result = calibrate_bundle(
        args.bundle, args.data, args.fpr, args.limit, args.seed, device=args.device, bundles_dir=args.bundles_dir,
        overlays=args.overlay,
    )
    print(json.dumps(result, indent=2))
    if args.write:
        from monai_diffad.evaluate.methods import METHOD_VARIANTS

        # a variant (thor_simplex) keeps its threshold in its base bundle, under threshold_<noise type>
        base, variant = METHOD_VARIANTS.get(args.bundle, (args.bundle, {}))
        key = f"threshold_{variant['noise_type']}" if "noise_type" in variant else "threshold"
        write_threshold(os.path.join(args.bundles_dir, base), result, key)
        print(f"{key} written to {os.path.join(args.bundles_dir, base)}/inference.json and metadata.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
