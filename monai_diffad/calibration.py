# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Label- and image-threshold calibration on healthy images at a stated false-positive rate.

A label map needs one operating point. Following THOR's protocol for its wrist X-ray boxes, the threshold is the
lowest of ``num_thresholds`` values in [0, 1) at which, averaged over healthy images, at most ``fpr`` of the pixels
(inside the brain mask) are labelled, i.e. have a map value ``>= threshold`` (the comparison the labels use). The
value is stored in the bundle (config key ``threshold`` and ``metadata.json``) and used by the bundle and the MONAI
Label app; users can override it.

An image-level call (the MONAI Label app's ``pred_label``: anomalous when the image score, the mean of the top 1 % of
the map, is ``>= image_threshold``) needs its own operating point: the lowest score that at most ``fpr`` of the
healthy images reach (:func:`~monai_diffad.metrics.image_threshold_at_fpr`). It is calibrated on the same images and
stored beside the label threshold (``image_threshold``; ``image_threshold_simplex`` for THOR-Simplex).

On your own healthy scans (any geometry; they go through the bundle's geometry contract and the shares are counted
on each scan's own grid, where the labels are applied)::

    python -m monai_diffad.calibration --bundle thor --dataset_dir /data/healthy_val --checkpoint my_model.pt \
        --fpr 0.05 --write

On the built-in development set (lesion-free slices, already in the network's geometry)::

    python -m monai_diffad.calibration --bundle thor --data data_cache/dev_64.npz --fpr 0.05 --write

A benchmark run (``python -m monai_diffad.evaluate``) measures the same threshold on its lesion-free slices; to store
that one instead of running the method again::

    python -m monai_diffad.calibration --bundle thor --from-results docs/results/<run>/results.json --write
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from decimal import ROUND_CEILING, Decimal

import numpy as np
import torch
from tqdm.auto import tqdm

from monai_diffad.maps.scoring import top_fraction_mean
from monai_diffad.metrics.healthy_fpr import (
    CALIBRATION_FPR,
    flagged_share_curve,
    image_threshold_at_fpr,
    threshold_at_fpr,
)

__all__ = [
    "calibrate_bundle",
    "calibrate_on_images",
    "image_threshold_key",
    "bundle_config_has_key",
    "threshold_from_results",
    "write_threshold",
]

#: decimals of a stored image threshold (scores are continuous, unlike the label threshold's 1/1000 grid)
_IMAGE_THRESHOLD_DECIMALS = 6


def image_threshold_key(threshold_key: str = "threshold") -> str:
    """The bundle key of the image threshold that goes with a label-threshold key: ``"image_" + threshold_key``
    (``image_threshold``; ``image_threshold_simplex`` for THOR-Simplex, whose label key is ``threshold_simplex``)."""
    return f"image_{threshold_key}"


def _top_percent(fraction: float) -> str:
    return f"top {fraction * 100:g} %"


def _dev_score(fraction: float, image_shape: Sequence[int]) -> str:
    """How a development-set score is computed, for the calibration record."""
    size = "x".join(str(int(n)) for n in image_shape)
    return (
        f"mean of the {_top_percent(fraction)} of the map inside the brain mask of one {size + ' ' if size else ''}"
        "development slice; the MONAI Label app scores a whole volume (all its slices pooled, on the scan's own grid, "
        "zero outside the brain), so on volumes the image-level false-positive rate is approximate"
    )


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
    """Run a bundle's method on the lesion-free items of an evaluation set and calibrate its label and image thresholds.

    Args:
        bundle: method name (as for :func:`monai_diffad.evaluate.build_method`).
        data: npz or datalist of the development set (items with ``size_class == 0`` are used).
        fpr: tolerated share of healthy brain pixels above the threshold, and of healthy images whose score reaches
            the image threshold.
        limit: use at most this many healthy items.
        seed: seed of the detection noise.
        batch_size: images per detection call.
        device: computation device.
        overrides: bundle config overrides.
        bundles_dir: folder holding the bundles.
        overlays: config files merged over the bundle's (see :func:`monai_diffad.evaluate.build_method`).

    Returns:
        ``{"threshold", "image_threshold", "image_score", "fpr", "num_images", "data", "bundle"}``: the image
        threshold is over the items' detection scores (:class:`~monai_diffad.inferers.AnomalyOutput` ``score``,
        the top values of each slice's map inside its brain mask); ``image_score`` says so in words.
    """
    from monai_diffad.evaluate import evaluate_method, load_evaluation_set
    from monai_diffad.methods import build_method

    method = build_method(bundle, bundles_dir, overrides=overrides or {}, device=device, overlays=overlays)
    dataset = load_evaluation_set(data)
    healthy = np.flatnonzero(dataset.size_class == 0)[: limit or None]
    if len(healthy) == 0:
        raise ValueError(f"'{data}' holds no lesion-free items (size_class 0) to calibrate on.")
    # the benchmark's own loop and seeding: its lesion-free slices give the same threshold (threshold_from_results)
    result = evaluate_method(
        method.inferer, method.network, dataset, healthy, name=bundle, batch_size=batch_size, seed=seed,
        progress=True, calibration_fpr=fpr,
    )
    fraction = float(getattr(method.inferer, "score_top_fraction", 0.01))
    return {
        "threshold": float(result.metrics["calibrated_threshold"]),
        "image_threshold": float(result.metrics["image_threshold"]),
        "image_score": _dev_score(fraction, dataset.spatial_shape),
        "fpr": fpr,
        "num_images": int(len(healthy)),
        "data": data,
        "bundle": bundle,
    }


def calibrate_on_images(
    bundle: str,
    dataset_dir: str,
    datalist: str | None = None,
    split: str = "validation",
    fpr: float = CALIBRATION_FPR,
    checkpoint: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    device: str | None = None,
    overrides: dict | None = None,
    bundles_dir: str = "bundles",
    overlays: Sequence[str] = (),
) -> dict:
    """Calibrate a bundle's label and image thresholds on healthy scans through its own pre- and post-processing.

    Each scan (any orientation, spacing or field of view; 2D or 3D) goes through the bundle's ``preprocessing`` (the
    geometry contract), its inferer and its ``postprocessing``, which brings the map back onto the scan's own grid
    and zeroes it outside the brain mask. The shares of labelled brain voxels are counted there, where the bundle's
    labels are applied; each scan weighs the same. Each scan's image score is computed there too, as the MONAI Label
    app and the bundle's ``scores.csv`` compute it: the mean of the top ``score_top_fraction`` (1 %) of the
    post-processed map's values over the whole scan (every slice, zeros outside the brain included); the image
    threshold is the lowest score that at most ``fpr`` of the scans reach.

    Args:
        bundle: method name (a bundle or a variant such as ``thor_simplex``).
        dataset_dir: folder of healthy scans (``<name>_brain_mask.<ext>`` beside a scan is its brain mask), or one
            holding a decathlon ``datalist.json``.
        datalist: explicit datalist JSON (paths relative to it).
        split: the datalist list to use.
        fpr: tolerated share of healthy brain voxels labelled, and of healthy scans called anomalous.
        checkpoint: network weights to calibrate (default: the bundle's).
        limit: use at most this many scans.
        seed: seed of the detection noise (one stream over the scans in order).
        device: computation device.
        overrides: further bundle config overrides.
        bundles_dir: folder holding the bundles.
        overlays: config files merged over the bundle's.

    Returns:
        ``{"threshold", "image_threshold", "image_score", "image_scores", "fpr", "num_images", "data", "bundle",
        "checkpoint", "checkpoint_sha256"}``; ``image_scores`` holds each scan's score, in datalist order.

    Raises:
        FileNotFoundError: no scan, or a datalist entry that does not exist.
        ValueError: a scan the contract cannot process (the message names the file).
    """
    from monai.data import decollate_batch, list_data_collate

    from monai_diffad.bundles import image_datalist
    from monai_diffad.methods import build_method

    items = image_datalist(dataset_dir, datalist, split=split)[: limit or None]
    overrides = {**(overrides or {}), "save_outputs": False}
    if checkpoint is not None:
        overrides["checkpoint"] = os.path.abspath(checkpoint)
    method = build_method(bundle, bundles_dir, overrides=overrides, device=device, overlays=overlays)
    assert method.config is not None  # build_method always attaches the bundle's parser
    preprocessing = method.config.get_parsed_content("preprocessing")
    postprocessing = method.config.get_parsed_content("postprocessing")
    device_ = next(method.network.parameters()).device
    fraction = float(getattr(method.inferer, "score_top_fraction", 0.01))
    generator = torch.Generator().manual_seed(seed)
    rows, scores = [], []
    for item in tqdm(items, desc=f"calibrating {bundle}"):
        batch = list_data_collate([preprocessing(dict(item))])
        batch["pred"] = method.inferer(batch["image"].to(device_), method.network, generator=generator)
        out = postprocessing(decollate_batch(batch)[0])
        amap, brain = out["pred_anomaly_map"], out["brain_mask"]
        raw = amap.as_tensor().float().cpu()  # (1, *spatial) on the scan's grid, zero outside the brain
        rows.append(flagged_share_curve(raw[None], brain.as_tensor()[None].cpu()))
        # the app's score (AnomalyInferTask.writer): the channel axis is the batch axis, so one score per scan
        scores.append(float(top_fraction_mean(raw, fraction)[0]))
    if not rows:
        raise FileNotFoundError(f"No scans to calibrate on in '{datalist or dataset_dir}'.")
    threshold = threshold_at_fpr(torch.cat(rows), fpr)
    return {
        "threshold": threshold,
        "image_threshold": image_threshold_at_fpr(torch.tensor(scores, dtype=torch.float64), fpr),
        "image_score": (
            f"mean of the {_top_percent(fraction)} of the map over the whole scan on its own grid (zero outside the "
            "brain), as the MONAI Label app scores it"
        ),
        "image_scores": scores,
        "fpr": fpr, "num_images": len(rows), "data": datalist or dataset_dir,
        "bundle": bundle, "checkpoint": method.settings["checkpoint"],
        "checkpoint_sha256": method.settings["checkpoint_sha256"],
    }


def threshold_from_results(results_file: str, method: str, bundles_dir: str = "bundles") -> dict:
    """The thresholds a benchmark run (``python -m monai_diffad.evaluate``) calibrated on its lesion-free slices.

    The benchmark runs the method on every lesion-free slice of its set anyway; its ``calibrated_threshold`` and
    ``image_threshold`` follow the protocol of :func:`calibrate_bundle` on the same slices (only the noise draws
    differ), so a candidate's benchmark also calibrates it. The weights the run used must be the bundle's present ones
    (SHA-256 compared). A report from before the image threshold was recorded gives ``image_threshold`` ``None``.

    Args:
        results_file: ``results.json`` of the run.
        method: method name in that run, e.g. ``thor`` or ``thor_simplex``.
        bundles_dir: folder holding the bundle whose weights must match.

    Returns:
        ``{"threshold", "image_threshold", "image_score", "fpr", "num_images", "data", "bundle", "results"}``.

    Raises:
        ValueError: the file is not a benchmark report, the method is missing, did not run or has no calibrated
            threshold (a report from before it was recorded), or it ran with other weights than the bundle holds.
    """
    from monai_diffad.methods import build_method

    try:
        with open(results_file) as f:
            report = json.load(f)
        entries = {m["name"]: m for m in report["methods"]}
        data = report["metadata"]["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: not JSON, or not text at all
        raise ValueError(f"'{results_file}' is not a readable results.json of monai_diffad.evaluate: {e}") from e
    entry = entries.get(method)
    if entry is None or entry.get("status") != "ok":
        raise ValueError(f"'{results_file}' has no completed run of '{method}' (it has: {sorted(entries)}).")
    threshold = entry["metrics"].get("calibrated_threshold")
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"'{results_file}' records no calibrated threshold for '{method}'; rerun the benchmark.")
    built = build_method(method, bundles_dir, device="cpu")
    present = built.settings["checkpoint_sha256"]
    used = entry["settings"].get("checkpoint_sha256")
    if used != present:
        raise ValueError(
            f"'{results_file}' ran '{method}' with weights {str(used)[:12]}..., but '{bundles_dir}' now holds "
            f"{present[:12]}...; calibrate the weights you ship."
        )
    image_threshold = entry["metrics"].get("image_threshold")
    fraction = float(getattr(built.inferer, "score_top_fraction", 0.01))
    return {
        "threshold": float(threshold),
        "image_threshold": float(image_threshold) if _is_finite(image_threshold) else None,
        "image_score": _dev_score(fraction, data.get("image_shape", ())),
        "fpr": float(entry["metrics"]["calibration_fpr"]),
        "num_images": int(data["items_per_stratum"]["none"]),
        "data": data["source"],
        "bundle": method,
        "results": results_file,
    }


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _key_pattern(key: str) -> str:
    # the quote before the key keeps "threshold" from matching "image_threshold"
    return rf'("{re.escape(key)}":\s*)[^,\n]+'


def bundle_config_has_key(bundle_dir: str, key: str) -> bool:
    """Whether the bundle's ``inference.json`` has a ``"key": value`` line that :func:`write_threshold` can edit."""
    with open(os.path.join(bundle_dir, "inference.json")) as f:
        return re.search(_key_pattern(key), f.read()) is not None


def _round_up(value: float, decimals: int) -> float:
    """``value`` rounded towards +inf to ``decimals`` decimals: a stored image threshold is never below the measured
    one, so the calibration images still meet the false-positive rate with it (rounding down could admit one)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_CEILING))


def write_threshold(
    bundle_dir: str, result: dict, key: str = "threshold", image_key: str | None = None
) -> dict[str, float]:
    """Store a calibration result in the bundle's ``inference.json`` and ``metadata.json``.

    The label threshold (``result["threshold"]``, 4 decimals) goes under ``key``; the image threshold
    (``result["image_threshold"]``, when present and finite; 6 decimals, rounded up) under ``image_key``. Each
    edits one line of ``inference.json`` (its layout survives) and sets the key and a ``<key>_calibration`` record,
    saying how it was measured, in ``metadata.json``. Nothing is written when a key is missing.

    Args:
        bundle_dir: the bundle folder.
        result: from :func:`calibrate_bundle`, :func:`calibrate_on_images` or :func:`threshold_from_results`.
        key: ``"threshold"``, or e.g. ``"threshold_simplex"`` for a variant that shares the bundle.
        image_key: key of the image threshold; default :func:`image_threshold_key` of ``key``.

    Returns:
        ``{key: value}`` of what was written, as stored; the label key first.

    Raises:
        ValueError: ``inference.json`` has no ``key``, or no ``image_key`` while ``result`` holds an image threshold.
    """
    image_key = image_threshold_key(key) if image_key is None else image_key
    values = {key: f"{result['threshold']:.4f}"}
    image_threshold = result.get("image_threshold")
    if isinstance(image_threshold, (int, float)) and _is_finite(image_threshold):
        rounded = _round_up(float(image_threshold), _IMAGE_THRESHOLD_DECIMALS)
        values[image_key] = f"{rounded:.{_IMAGE_THRESHOLD_DECIMALS}f}"
    config_path = os.path.join(bundle_dir, "inference.json")
    with open(config_path) as f:
        text = f.read()
    for name, value in values.items():
        # edit the one line so the hand-written layout of the config survives
        text, count = re.subn(_key_pattern(name), rf"\g<1>{value}", text, count=1)
        if count != 1:
            raise ValueError(f"'{config_path}' has no top-level \"{name}\" key to update.")
    with open(config_path, "w") as f:
        f.write(text)
    meta_path = os.path.join(bundle_dir, "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    data = os.path.basename(os.path.normpath(result["data"]))
    provenance = (f", measured by the benchmark run {result['results']}" if result.get("results") else "") + (
        f", weights SHA-256 {result['checkpoint_sha256'][:12]}..." if result.get("checkpoint_sha256") else ""
    )
    meta[key] = float(values[key])
    meta[f"{key}_calibration"] = (
        f"lowest of 1000 thresholds with mean share of healthy brain pixels >= it <= {result['fpr']:.0%}, on "
        f"{result['num_images']} lesion-free images of {data}{provenance}"
    )
    if image_key in values:
        meta[image_key] = float(values[image_key])
        meta[f"{image_key}_calibration"] = (
            f"lowest image score reached by at most {result['fpr']:.0%} of {result['num_images']} lesion-free images "
            f"of {data} (score >= it: anomalous), rounded up to {_IMAGE_THRESHOLD_DECIMALS} decimals; score: "
            f"{result.get('image_score', 'the image score of the method')}{provenance}"
        )
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=4)
        f.write("\n")
    return {name: float(value) for name, value in values.items()}


def _root_value_error(error: BaseException | None) -> ValueError | None:
    """The ``ValueError`` behind MONAI's ``RuntimeError("applying transform ...")`` wrappers, if any."""
    while error is not None:
        if isinstance(error, ValueError):
            return error
        error = error.__cause__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_diffad.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="method/bundle name, e.g. thor")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset_dir", help="folder of healthy scans (any geometry), or one with a datalist.json; see --datalist"
    )
    source.add_argument("--datalist", help="decathlon datalist JSON of healthy scans (the --split list is used)")
    source.add_argument("--data", help="built-in development set npz (or its datalist) to take lesion-free slices of")
    source.add_argument(
        "--from-results", metavar="RESULTS_JSON", help="take the threshold a benchmark run measured (no new run)"
    )
    parser.add_argument("--split", default="validation", help="datalist list to use with --dataset_dir/--datalist")
    parser.add_argument("--checkpoint", default=None, help="weights to calibrate (default: the bundle's)")
    parser.add_argument(
        "--step_stride", type=int, default=None,
        help="the bundle's step_stride (every k-th reverse step: k times faster, a coarser map); calibrate with the "
        "stride you detect with",
    )
    parser.add_argument("--fpr", type=float, default=CALIBRATION_FPR)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--bundles_dir", default="bundles")
    parser.add_argument("--overlay", action="append", default=[], metavar="FILE", help="config merged over the bundle's")
    parser.add_argument(
        "--write", action="store_true",
        help="store the label threshold and the image threshold in the bundle (inference.json and metadata.json)",
    )
    args = parser.parse_args(argv)
    if args.write and args.overlay:
        parser.error(
            "--write stores the bundle's own thresholds; with --overlay, put the printed values in your config."
        )
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint '{args.checkpoint}' does not exist.")
    if args.from_results:
        if args.overlay or args.checkpoint:
            parser.error("--from-results takes the run's threshold as measured; --overlay/--checkpoint do not apply.")
        try:
            result = threshold_from_results(args.from_results, args.bundle, args.bundles_dir)
        except ValueError as e:
            parser.error(str(e))
        if not np.isclose(result["fpr"], args.fpr):
            parser.error(f"the run calibrated at fpr {result['fpr']}, not {args.fpr}.")
    elif args.data:
        overrides = {"checkpoint": os.path.abspath(args.checkpoint)} if args.checkpoint else {}
        if args.step_stride is not None:
            overrides["step_stride"] = args.step_stride
        result = calibrate_bundle(
            args.bundle, args.data, args.fpr, args.limit, args.seed, device=args.device, overrides=overrides,
            bundles_dir=args.bundles_dir, overlays=args.overlay,
        )
    else:
        dataset_dir = args.dataset_dir or os.path.dirname(os.path.abspath(args.datalist))
        try:
            result = calibrate_on_images(
                args.bundle, dataset_dir, args.datalist, args.split, args.fpr, args.checkpoint, args.limit, args.seed,
                device=args.device, bundles_dir=args.bundles_dir, overlays=args.overlay,
                overrides=None if args.step_stride is None else {"step_stride": args.step_stride},
            )
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            cause = e if isinstance(e, FileNotFoundError) else _root_value_error(e)
            if cause is None:
                raise
            parser.error(str(cause))
    # the per-scan scores on one line after the summary, not one line each (a cohort may hold hundreds of scans)
    print(json.dumps({k: v for k, v in result.items() if k != "image_scores"}, indent=2))
    if "image_scores" in result:
        print("image scores, one per scan in order:", json.dumps([round(v, 6) for v in result["image_scores"]]))
    if not _is_finite(result.get("image_threshold")):
        print(
            f"'{args.from_results}' records no image threshold for '{args.bundle}' (a run from before it was "
            "recorded): only the label threshold is taken; rerun the benchmark to calibrate the image threshold too."
            if args.from_results
            else f"no image threshold was measured for '{args.bundle}': only the label threshold is taken."
        )
    if args.write:
        from monai_diffad.methods import method_spec

        # a variant (thor_simplex) keeps its thresholds in its base bundle, under its own keys
        spec = method_spec(args.bundle)
        key, image_key = spec.threshold_key, image_threshold_key(spec.threshold_key)
        bundle_dir = os.path.join(args.bundles_dir, spec.bundle)
        if _is_finite(result.get("image_threshold")) and not bundle_config_has_key(bundle_dir, image_key):
            print(
                f"{bundle_dir}/inference.json has no \"{image_key}\" key: only the label threshold is written (add "
                f"\"{image_key}\": null to it to store the image threshold too)."
            )
            result = {**result, "image_threshold": None}
        written = write_threshold(bundle_dir, result, key, image_key)
        values = ", ".join(f"{k} = {v:g}" for k, v in written.items())
        print(
            f"{values} written to {bundle_dir}/inference.json (the bundle labels with the threshold, and the MONAI "
            f"Label app calls an image anomalous at score >= the image threshold, from now on) and metadata.json "
            f"({', '.join(k + '_calibration' for k in written)} record how they were measured)."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
