# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Running methods on a labelled set in batches and accumulating the papers' metrics with bounded memory.

Per method: best-threshold Dice, AUPRC and AUROC of the brain pixels pooled over the set and over each lesion-size
stratum; the share of lesion-free brain pixels flagged at the best threshold; the label and image thresholds at a
healthy false-positive rate (what a bundle's calibration stores); reconstruction SSIM/MSE/MAE on the lesion-free
slices; image-level AUROC of the scores (lesion vs lesion-free). Maps are reduced to histograms batch by
batch (``monai_diffad.metrics``), so memory does not grow with the set; only the maps of a few example slices are kept.
Under ``torchrun`` (an initialized ``torch.distributed`` process group) the items are split over the ranks and the
results equal a single process's: each image gets the same noise, and where a rank's batches hold other images than
the single process's, maps differ by float rounding only (see :mod:`monai_diffad.evaluate.distributed`).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import look_up_option
from tqdm.auto import tqdm

from monai_diffad.evaluate.dataset import (
    EvaluationSet,
    load_evaluation_set,
    resolve_data_path,
    select_items,
)
from monai_diffad.evaluate.distributed import (
    all_gather_objects,
    barrier,
    deal_items,
    process_rank,
    raise_if_any_rank_failed,
)
from monai_diffad.evaluate.report import run_metadata, run_provenance, write_report
from monai_diffad.inferers import AnomalyOutput, DiffusionAnomalyInferer
from monai_diffad.methods import (
    MethodUnavailable,
    build_method,
    describe_inferer,
    method_config_file,
    method_label,
)
from monai_diffad.metrics import (
    AUPRCMetric,
    AUROCMetric,
    BestDiceMetric,
    ImageAUROCMetric,
    PooledHistogramMetric,
    ReconstructionMetric,
    StratifiedMetric,
)
from monai_diffad.metrics.healthy_fpr import CALIBRATION_FPR, HealthyFPRThresholdMetric, image_threshold_at_fpr

__all__ = [
    "REPORTED_STRATA",
    "STATUSES",
    "MethodMetrics",
    "MethodResult",
    "evaluate_method",
    "evaluate_bundle_method",
    "run_evaluation",
    "run_bundle_evaluation",
]

logger = logging.getLogger(__name__)

#: strata in the papers' column order ("all" is their "Average": every slice pooled)
REPORTED_STRATA = ("all", "small", "medium", "large")
#: outcome of a method: ran, skipped (bundle or weights missing) or failed (an error, in ``reason``)
STATUSES = ("ok", "skipped", "failed")
#: example slices drawn per size class in this order: large, medium, small, lesion-free
_EXAMPLE_ORDER = (3, 2, 1, 0)


class MethodMetrics:
    """Every metric of one method over a set, accumulated batch by batch in fixed memory.

    Args:
        n_bins: histogram bins of the AUPRC/AUROC metrics (see :class:`~monai_diffad.metrics.AUPRCMetric`).
        calibration_fpr: share of lesion-free brain pixels the calibrated threshold may label, and of lesion-free
            images the image threshold may call anomalous.
    """

    def __init__(self, n_bins: int = 100_000, calibration_fpr: float = CALIBRATION_FPR) -> None:
        self.dice = StratifiedMetric(partial(BestDiceMetric, return_threshold=True))
        self.auprc = StratifiedMetric(partial(AUPRCMetric, n_bins))
        self.auroc = StratifiedMetric(partial(AUROCMetric, n_bins))
        self.reconstruction = ReconstructionMetric(spatial_dims=2, data_range=1.0)
        self.image_auroc = ImageAUROCMetric()
        # the label threshold the bundle's calibration would pick, from the lesion-free maps computed here anyway
        self.healthy_fpr = HealthyFPRThresholdMetric(calibration_fpr)

    def update(self, output: AnomalyOutput, batch: Mapping[str, torch.Tensor]) -> None:
        """Add one batch.

        Args:
            output: the method's result for ``batch["image"]``: ``anomaly_map`` (B, 1, H, W) in [0, 1],
                ``pseudo_healthy`` (B, 1, H, W) and ``score`` (B,).
            batch: ``image`` (B, 1, H, W) in [0, 1], binary ``label`` and ``brain_mask`` (B, 1, H, W) and
                ``size_class`` (B,).
        """
        maps = output.anomaly_map.detach().float().cpu()
        labels, brain = batch["label"].cpu(), batch["brain_mask"].cpu()
        size_class = batch["size_class"].cpu()
        if maps.shape != labels.shape:
            raise ValueError(f"anomaly_map has shape {tuple(maps.shape)}, the labels {tuple(labels.shape)}.")
        for metric in (self.dice, self.auprc, self.auroc):
            metric(maps, labels, size_class=size_class, mask=brain)
        # an item with a painted lesion is abnormal even if pooling to a coarser grid left no lesion pixel
        lesion_free = size_class == 0
        if bool(lesion_free.any()):
            healthy = output.pseudo_healthy.detach().float().cpu()
            self.reconstruction(healthy[lesion_free], batch["image"].cpu()[lesion_free])
            self.healthy_fpr(maps[lesion_free], brain[lesion_free])
        self.image_auroc(output.score.detach().float().cpu(), (~lesion_free).long())

    @staticmethod
    def item_groups(size_class: np.ndarray) -> list[np.ndarray]:
        """Items that add rows to the per-image metrics: all (image AUROC, whose scores also give the image threshold)
        and the lesion-free ones (reconstruction, label threshold).

        A distributed run gives each rank at least one item of each group: MONAI all-gathers a metric's buffers
        from every rank, and a rank without rows would skip that collective (see
        :func:`~monai_diffad.evaluate.distributed.deal_items`).

        Args:
            size_class: (N,) size class of the items, in processing order.

        Returns:
            Boolean (N,) masks.
        """
        size_class = np.asarray(size_class).reshape(-1)
        return [np.ones(len(size_class), dtype=bool), size_class == 0]

    def add_empty_histograms(self) -> None:
        """Add an all-zero histogram to every pixel metric, leaving the counts unchanged.

        Before a distributed :meth:`aggregate`: a rank whose items miss a lesion-size stratum then still takes part
        in MONAI's gathering of that stratum's counts.
        """
        for stratified in (self.dice, self.auprc, self.auroc):
            for metric in stratified.metrics.values():
                if isinstance(metric, PooledHistogramMetric):
                    metric.extend(torch.zeros(1, 2, metric.edges.numel() + 1, dtype=torch.int64))

    def image_threshold(self) -> float:
        """The image threshold at ``calibration_fpr`` over the scores of the lesion-free items so far; ``nan`` without.

        The scores come from the image AUROC's buffer, which MONAI gathers from every rank in a distributed run (the
        lesion-free items are its rows with label 0), so every rank returns the threshold of the whole set; the
        threshold depends on the sorted scores only, not on the order in which the ranks deliver them.
        """
        buffers = self.image_auroc.get_buffer()
        if buffers is None:
            return float("nan")
        scores, labels = buffers
        healthy = scores[labels == 0]
        return image_threshold_at_fpr(healthy, self.healthy_fpr.fpr) if healthy.numel() else float("nan")

    def aggregate(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics so far.

        Returns:
            ``(metrics, curves)``. ``metrics`` maps ``dice_<s>``, ``threshold_<s>``, ``auprc_<s>``, ``auroc_<s>`` for
            ``s`` in :data:`REPORTED_STRATA` (each stratum's max-Dice at its own best threshold),
            ``dice_<s>_at_global`` (small, medium, large at ``threshold_all``), ``flagged_fraction`` (lesion-free
            brain pixels with map >= the best "all" threshold), ``calibrated_threshold`` (lowest threshold flagging at
            most ``calibration_fpr`` of the lesion-free brain pixels,
            :func:`~monai_diffad.metrics.healthy_fpr_threshold`), ``image_threshold`` (lowest image-score threshold
            reached by at most ``calibration_fpr`` of the lesion-free items,
            :func:`~monai_diffad.metrics.image_threshold_at_fpr`), ``calibration_fpr``, ``image_auroc``,
            ``ssim``, ``mse``, ``mae`` (lesion-free slices) to floats, ``nan``
            where undefined (e.g. a stratum without items). ``curves`` holds ``precision``, ``recall`` (pooled "all"
            pixels) and ``dice`` (101 thresholds) as float64 arrays.
        """
        with warnings.catch_warnings():
            # undefined values (a stratum without items or positives) become nan, reported as "n/a"
            warnings.simplefilter("ignore", RuntimeWarning)
            dice, auprc, auroc = self.dice.aggregate(), self.auprc.aggregate(), self.auroc.aggregate()
            metrics: dict[str, float] = {}
            for s in REPORTED_STRATA:
                metrics[f"dice_{s}"], metrics[f"threshold_{s}"] = dice[s]
                metrics[f"auprc_{s}"], metrics[f"auroc_{s}"] = auprc[s], auroc[s]
            threshold = metrics["threshold_all"]
            # each stratum at the one global threshold (its max-Dice above picks its own on its test labels)
            for s in REPORTED_STRATA[1:]:
                curve = self.dice.metrics[s].dice_curve()
                metrics[f"dice_{s}_at_global"] = (
                    float(curve[round(threshold * 100)]) if not math.isnan(threshold) else float("nan")
                )
            none_dice = self.dice.metrics["none"]
            metrics["flagged_fraction"] = (
                none_dice.flagged_fraction(threshold) if not math.isnan(threshold) else float("nan")
            )
            metrics["calibrated_threshold"] = self.healthy_fpr.aggregate()
            metrics["image_threshold"] = self.image_threshold()
            metrics["calibration_fpr"] = self.healthy_fpr.fpr
            metrics["image_auroc"] = self.image_auroc.aggregate()
            metrics.update(self.reconstruction.aggregate())
            precision, recall = self.auprc.metrics["all"].curve()
            curves = {
                "precision": precision.cpu().numpy(),
                "recall": recall.cpu().numpy(),
                "dice": self.dice.metrics["all"].dice_curve().cpu().numpy(),
            }
        return {k: float(v) for k, v in metrics.items()}, curves


@dataclass
class MethodResult:
    """Outcome of one method on the set.

    Attributes:
        name: method name.
        status: one of :data:`STATUSES`.
        reason: why a method was skipped or failed.
        label: display name.
        noise: ``gaussian``, ``simplex`` or ``none`` (DISYRE).
        metrics: see :meth:`MethodMetrics.aggregate` plus ``seconds_per_image``.
        curves: see :meth:`MethodMetrics.aggregate`.
        examples: ``{item index: (H, W) anomaly map}`` of the example slices.
        settings: how the method was built and configured.
    """

    name: str
    status: str = "ok"
    reason: str = ""
    label: str = ""
    noise: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[int, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = look_up_option(self.status, STATUSES)
        self.label = self.label or method_label(self.name)


def _invocation() -> str:
    """The running command line, as ``python -m package ...`` when started with ``-m`` (for reports)."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if os.path.basename(sys.argv[0]) == "__main__.py" and main_spec is not None and main_spec.name:
        return f"python -m {main_spec.name.removesuffix('.__main__')} " + shlex.join(sys.argv[1:])
    return "python " + shlex.join(sys.argv)


def _error_summary(error: BaseException) -> str:
    """One line naming the error and its root cause (config parsing wraps the real error in a RuntimeError)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = f"{type(error).__name__}: {error}"
    if root is not error:
        text += f" (caused by {type(root).__name__}: {root})"
    return " ".join(text.split())


def _batches(positions: Sequence[int], size: int) -> list[list[int]]:
    """Offsets into ``positions``, in batches of at most ``size`` whose positions are consecutive integers."""
    batches: list[list[int]] = []
    for offset, position in enumerate(positions):
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and positions[last[-1]] + 1 == position:
            last.append(offset)
        else:
            batches.append([offset])
    return batches


def evaluate_method(
    inferer: DiffusionAnomalyInferer,
    network: torch.nn.Module,
    dataset: EvaluationSet,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    name: str = "method",
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str | None = None,
    example_indices: Sequence[int] = (),
    progress: bool = False,
    n_bins: int = 100_000,
    noise_positions: Sequence[int] | None = None,
    calibration_fpr: float = CALIBRATION_FPR,
) -> MethodResult:
    """Run one method on items of a set and aggregate its metrics.

    Under an initialized ``torch.distributed`` process group every rank calls it with its own share of the items
    (see :func:`~monai_diffad.evaluate.distributed.deal_items`) and their positions in the whole set as
    ``noise_positions``; all ranks return the metrics of the whole set and all example maps.

    Args:
        inferer: the method; ``inferer.detect(images, network, mask=brain, generator=g)`` is called per batch.
        network: its network (on ``device``).
        dataset: the labelled set.
        indices: items to use (default all), processed in this order.
        name: method name, for the result and the progress bar.
        batch_size: images per ``detect`` call.
        seed: seed of the CPU generator every noise draw comes from (the same for every method).
        device: device of the inputs; default the network's.
        example_indices: items whose anomaly maps are kept for figures.
        progress: show a progress bar over images (and the inferer's own bars over steps).
        n_bins: histogram bins of AUPRC/AUROC.
        noise_positions: position of each item of ``indices`` in the seeded noise stream (default ``0, 1, ...``);
            a batch starting at position ``p`` skips the seeds of the ``p`` images before it, so a share of a set
            gets the noise a single pass over the whole set gives it. Batches never span a gap in positions.
        calibration_fpr: the false-positive rate of the ``calibrated_threshold`` (healthy pixels) and of the
            ``image_threshold`` (healthy images) measured on the lesion-free items.

    Returns:
        A :class:`MethodResult` with status ``"ok"``; ``seconds_per_image`` is wall-clock time over all ranks' images.

    Raises:
        ValueError: ``batch_size`` < 1, ``noise_positions`` negative or not one per item, or the inferer's own
            errors (e.g. inputs out of range).
        RuntimeError: distributed, when another rank failed.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    positions = list(range(len(indices))) if noise_positions is None else [int(p) for p in noise_positions]
    if len(positions) != len(indices) or any(p < 0 for p in positions):
        raise ValueError(
            f"noise_positions must hold one position >= 0 per item ({len(indices)}), got {len(positions)} values"
            + (f" with minimum {min(positions)}." if positions else ".")
        )
    if device is None:
        device = next(network.parameters(), torch.empty(0)).device
    generator = torch.Generator()
    next_position = None
    metrics = MethodMetrics(n_bins, calibration_fpr)
    wanted = set(int(i) for i in example_indices)
    examples: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    error: Exception | None = None
    try:
        with tqdm(total=len(indices), desc=name, unit="img", disable=not progress) as bar:
            for offsets in _batches(positions, int(batch_size)):
                chunk = [indices[o] for o in offsets]
                if positions[offsets[0]] != next_position:
                    # detect() draws one seed per image: skip the seeds of the images before this run
                    generator.manual_seed(int(seed))
                    inferer.draw_image_seeds(positions[offsets[0]], generator)
                next_position = positions[offsets[-1]] + 1
                batch = dataset.batch(chunk, device)
                output = inferer.detect(
                    batch["image"], network, mask=batch["brain_mask"], generator=generator, progress=progress
                )
                metrics.update(output, batch)
                for position, index in enumerate(chunk):
                    if index in wanted:
                        examples[index] = output.anomaly_map[position, 0].detach().float().cpu().numpy()
                bar.update(len(chunk))
    except Exception as e:  # noqa: BLE001 - re-raised below, once every rank knows (no rank is left waiting)
        error = e
    seconds = time.perf_counter() - start
    raise_if_any_rank_failed(error)
    if process_rank()[1] > 1:
        metrics.add_empty_histograms()
    values, curves = metrics.aggregate()
    parts = all_gather_objects((examples, seconds, len(indices)))
    examples = {index: amap for part, _, _ in parts for index, amap in part.items()}
    values["seconds_per_image"] = max(t for _, t, _ in parts) / max(sum(n for _, _, n in parts), 1)
    settings = describe_inferer(inferer, name)
    return MethodResult(
        name=name, status="ok", noise=settings["noise"], metrics=values, curves=curves, examples=examples,
        settings=settings,
    )


def evaluate_bundle_method(
    name: str,
    dataset: EvaluationSet,
    indices: Sequence[int],
    *,
    bundles_dir: str = "bundles",
    overrides: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    shared_overrides: Mapping[str, Any] | None = None,
    overlays: Sequence[str] = (),
    **kwargs: Any,
) -> MethodResult:
    """Build method ``name`` from its bundle and run :func:`evaluate_method`; never raises for one method's problem.

    Args:
        name: method name (see :func:`~monai_diffad.methods.build_method`).
        dataset: the labelled set.
        indices: items to use.
        bundles_dir: folder holding the bundles.
        overrides: config overrides of this method (each id must exist in its config).
        device: device to run on.
        shared_overrides: overrides given to every method, applied where the config has the id.
        overlays: config files merged over the bundle's where they fit (see
            :func:`~monai_diffad.methods.build_method`).
        kwargs: passed to :func:`evaluate_method` (``batch_size``, ``seed``, ``example_indices``, ``progress``).

    Returns:
        The result; ``status="skipped"`` when the bundle or weights do not exist, ``"failed"`` (with the error in
        ``reason``, traceback logged) for any other error, so one broken method does not stop a long benchmark.
    """
    try:
        built = build_method(name, bundles_dir, overrides, device, shared_overrides, overlays)
        size = built.image_size
        if size is not None and dataset.spatial_shape != (size, size):
            raise ValueError(
                f"the data is {dataset.spatial_shape[0]}x{dataset.spatial_shape[1]} but the bundle's network expects "
                f"{size}x{size} (image_size); use the matching dev set (dev_{size}.npz)"
            )
        result = evaluate_method(built.inferer, built.network, dataset, indices, name=name, device=device, **kwargs)
    except MethodUnavailable as e:
        logger.warning("%s skipped: %s", name, e)
        settings = {"config_file": method_config_file(name, bundles_dir)}
        return MethodResult(name=name, status="skipped", reason=str(e), settings=settings)
    except Exception as e:  # noqa: BLE001 - recorded in the report and the log, the other methods still run
        logger.error("%s failed:\n%s", name, traceback.format_exc())
        return MethodResult(name=name, status="failed", reason=_error_summary(e))
    result.settings = {**built.settings, **result.settings}
    return result


def run_evaluation(
    methods: Sequence[str],
    data: str,
    output_dir: str,
    *,
    bundles_dir: str = "bundles",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    overlays: Sequence[str] = (),
    limit: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_size: int = 16,
    n_examples: int = 4,
    command: str | None = None,
    progress: bool = True,
) -> list[MethodResult]:
    """Evaluate methods from their bundles on a labelled set and write the report folder.

    Under ``torchrun`` (an initialized ``torch.distributed`` process group) every rank calls it: each evaluates its
    share of the items (batches dealt in turn, :func:`~monai_diffad.evaluate.distributed.deal_items`) on its own
    device (``device`` ``"cuda"`` is the rank's current CUDA device), the metrics are merged across ranks, and rank 0
    writes the report; the results equal a single-process run.

    Args:
        methods: method names, in table order.
        data: ``.npz`` export or ``.json`` datalist of the set (see
            :func:`~monai_diffad.evaluate.dataset.load_evaluation_set`).
        output_dir: report folder (see :data:`~monai_diffad.evaluate.report.REPORT_FILES`).
        bundles_dir: folder holding the bundles.
        overrides: ``{method: {config id: value}}`` as :func:`~monai_diffad.methods.parse_overrides` returns;
            the ``"all"`` entry goes to every method whose config has the id.
        overlays: config files merged over each bundle's config they fit (e.g. ``bundles/ddpm/inference_paper.json``
            for the paper-size network; see :func:`~monai_diffad.methods.build_method`).
        limit: use only this many items, taken in turn from each size class; ``None`` for all.
        seed: noise seed, the same for every method.
        device: default CUDA when available, else CPU.
        batch_size: images per ``detect`` call.
        n_examples: example slices in ``examples.png`` (one per size class in turn: large, medium, small, lesion-free).
        command: the command line to record; default the running command line.
        progress: progress bars (rank 0's only).

    Returns:
        One result per method, in the given order (the same on every rank).

    Raises:
        ValueError: distributed, with fewer items or lesion-free items than processes (see
            :func:`~monai_diffad.evaluate.distributed.deal_items`).
    """
    provenance = run_provenance()  # the commit that runs, not whatever is checked out when the report is written
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = load_evaluation_set(data)
    indices = select_items(dataset.size_class, limit)
    example_indices = select_items(dataset.size_class[indices], n_examples, order=_EXAMPLE_ORDER) if n_examples else []
    example_indices = [indices[i] for i in example_indices]
    rank, world_size = process_rank()
    groups = MethodMetrics.item_groups(dataset.size_class[indices])
    positions = deal_items(len(indices), world_size, groups, chunk=int(batch_size))[rank]
    results = []
    for name in methods:
        results.append(
            evaluate_bundle_method(
                name, dataset, [indices[p] for p in positions], bundles_dir=bundles_dir,
                overrides=(overrides or {}).get(name), device=device, shared_overrides=(overrides or {}).get("all"),
                overlays=overlays, batch_size=batch_size, seed=seed,
                example_indices=example_indices, progress=progress and rank == 0, noise_positions=positions,
            )
        )
    metadata = run_metadata(
        command=command if command is not None else _invocation(),
        seed=seed,
        device=device,
        dataset=dataset,
        indices=indices,
        limit=limit,
        bundles_dir=bundles_dir,
        processes=world_size,
        provenance=provenance,
    )
    if rank == 0:
        write_report(output_dir, results, metadata, dataset, example_indices)
    barrier()  # every rank returns once the report is written
    return results


def run_bundle_evaluation(
    bundle_root: str,
    dataset_dir: str,
    output_dir: str,
    limit: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 16,
) -> list[MethodResult]:
    """Entry point of a bundle's ``evaluate.json``: evaluates its method as ``python -m monai_diffad.evaluate`` does.

    Args:
        bundle_root: the bundle folder (its name is the method unless ``method`` is given).
        dataset_dir: a data file, or a folder holding ``dev_<image_size>.npz``, ``datalist_<image_size>.json`` or
            ``datalist.json`` (``image_size`` from the bundle's ``inference.json``).
        output_dir: report folder.
        limit: use only this many items (``None``: all).
        seed: noise seed.
        device: default CUDA when available.
        method: a method defined by this bundle (e.g. ``"thor_simplex"`` for the THOR bundle).
        overrides: ``{config id: value}`` for the bundle's ``inference.json``.
        batch_size: images per ``detect`` call.

    Returns:
        The result list (one item).
    """
    bundle_root = os.path.abspath(bundle_root)
    method = method or os.path.basename(bundle_root)
    bundles_dir = os.path.dirname(bundle_root)
    config_file = method_config_file(method, bundles_dir)
    resolution = None
    if os.path.isfile(config_file):
        parser = ConfigParser()
        parser.read_config(config_file)
        resolution = parser.get("image_size")
    return run_evaluation(
        [method],
        resolve_data_path(dataset_dir, resolution if isinstance(resolution, int) else None),
        output_dir,
        bundles_dir=bundles_dir,
        overrides={method: dict(overrides or {})},
        limit=limit,
        seed=seed,
        device=device,
        batch_size=batch_size,
    )
