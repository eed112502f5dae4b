# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label infer task: a diffusion anomaly detector served as a pre-annotation for 3D Slicer.

Pipeline of one request (``BasicInferTask.__call__`` runs the stages in this order):

1. Request options are validated first (:meth:`AnomalyInferTask.__call__`), so a bad request fails before any work.
   A ``<name>_brain_mask<ext>`` file beside the image is added to the request as its brain mask.
2. Pre-transforms: the method bundle's own ``preprocessing`` (the geometry contract): load (NIfTI, NRRD, DICOM
   series) the image and the brain mask, channel first, RAS, in-plane resampling to ``pixel_size_mm`` (slices kept),
   the brain mask (given, or the image's foreground with holes filled), masked percentile normalisation, the
   ``field_of_view_mm`` square around the brain centroid, resize to the network's ``image_size``.
3. Inference: the method's ``detect()`` on the server's device; 3D volumes run slice-wise in batches of
   ``slice_batch_size`` slices; progress is logged per network call.
4. Inversion of every invertible pre-transform on the float map, and of the brain mask from where the contract made
   it (at ``pixel_size_mm``, nearest interpolation), so both are on the input's grid.
5. Post-transforms: the map is zeroed outside the brain mask (``mask_background``, on by default as in the bundles),
   kept as ``anomaly_map`` (on the ``calibrated`` scale by default: the bundle's threshold at 0.5) and binned into
   a uint8 label (``anomaly`` from ``threshold``, ``anomaly_high`` from ``high_threshold``, both on the raw map),
   optional removal of regions under ``min_size`` mm³ (MONAI's ``RemoveSmallObjects``), channel squeeze and
   ``Restored`` (the input's original affine for the writer).
6. Writer: the label (what Slicer shows) or, with ``output="map"``, the float map as NIfTI; ``save_map`` also stores
   the float map in the datastore (label tag ``anomaly_map_<model>``). The image score is the bundle's: the mean of
   the top values of the raw final map; ``pred_label`` and the per-slice maxima come with it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import CopyItemsd, InvertibleTransform, Lambdad, MaskIntensityd, RemoveSmallObjects, SqueezeDimd
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored
from monailabel.transform.writer import Writer
from monailabel.utils.others.generic import file_ext, name_to_device

from lib.infers.params import InvalidInferRequest, Option, parse_options
from lib.infers.progress import ProgressLoggedNetwork
from monai_diffad.bundles import brain_mask_beside
from monai_diffad.maps import rescale_to_threshold
from monai_diffad.maps.scoring import top_fraction_mean
from monai_diffad.metrics.healthy_fpr import CALIBRATION_FPR
from monai_diffad.transforms import ANOMALY_LABELS, AnomalyMapToLabeld, BrainMaskd, atomic_path

__all__ = ["AnomalyInferTask", "TASK_OPTIONS", "OPTIONS_KEY", "map_tag"]

logger = logging.getLogger(__name__)

#: key under which the validated options travel through the task's stages
OPTIONS_KEY = "_anomaly_options"
_MAP_KEY = "anomaly_map"
#: the map before any rescaling, for the image-level score and decision
_RAW_MAP_KEY = "_anomaly_map_raw"
#: share of the highest map values averaged into the image score (the inferer's, recorded per request)
_SCORE_FRACTION_KEY = "_anomaly_score_fraction"
#: the brain mask as ``BrainMaskd`` made it (before the frame and the resize), for masking on the input's grid
_INFERER_CACHE_SIZE = 8

#: Options every anomaly task has; methods add their own (noise level, harmonization steps, ...).
TASK_OPTIONS: tuple[Option, ...] = (
    Option("threshold", "float", 0.5, "Map value from which a voxel is labelled 'anomaly', in [0, 1].", 0.0, 1.0),
    Option(
        "high_threshold", "optional_float", None,
        "Optional map value from which a voxel is labelled 'anomaly_high', in (threshold, 1]; empty for none.",
        0.0, 1.0,
    ),
    Option("seed", "int", 0, "Seed of the diffusion noise; the same seed gives the same result.", 0, 2**63 - 1),
    Option(
        "slice_batch_size", "int", None, "Slices processed together (bounds GPU/CPU memory).", 1, 4096,
        target="max_batch_size",
    ),
    Option(
        "mask_background", "bool", True,
        "Zero the map outside the brain mask (the <name>_brain_mask file beside the image, else the image's "
        "foreground with holes filled) and score it there, as the bundles do; false keeps the map over the "
        "whole frame around the brain (to check the mask).",
    ),
    Option(
        "min_size", "float", 0.0,
        "Remove labelled regions (fully connected) smaller than this volume in mm^3 (area in mm^2 for 2D images); "
        "0 keeps all.",
        0.0, 1e9,
    ),
    Option(
        "output", "choice", "label", "'label' returns the uint8 label map, 'map' the float anomaly map (NIfTI).",
        choices=("label", "map"),
    ),
    Option(
        "map_scale", "choice", "calibrated",
        "'calibrated': the float map rescaled so that the bundle's calibrated threshold is 0.5 (one colour window "
        "for every method); 'raw': the method's own map values.",
        choices=("calibrated", "raw"),
    ),
    Option(
        "save_map", "bool", False,
        "Also store the float map in the datastore (label tag anomaly_map_<model>), for Slicer's heat-map overlay.",
    ),
)  # fmt: skip

_REQUIRED_OPTIONS = {o.name for o in TASK_OPTIONS}


def _remove_small_regions(label: MetaTensor, min_size_mm: float) -> MetaTensor:
    """Zero anomalous regions (label > 0, ``anomaly`` and ``anomaly_high`` together, full connectivity) smaller than
    ``min_size_mm`` mm³ (mm² for 2D), measured with the label's own voxel size (its affine on the input's grid).

    ``independent_channels=False`` makes a region of both segments one object, as a reader sees it; the connectivity
    counts the channel axis too, so ``label.ndim`` hops is full connectivity over the spatial axes.
    """
    remove = RemoveSmallObjects(
        min_size=min_size_mm, connectivity=label.ndim, independent_channels=False, by_measure=True
    )
    with warnings.catch_warnings():
        # scikit-image 0.26 deprecates the min_size that MONAI passes; one warning per request says nothing new
        warnings.filterwarnings("ignore", message=".*min_size.*deprecated", category=FutureWarning)
        return remove(label)


def map_tag(model: str) -> str:
    """The datastore label tag under which ``save_map`` stores a model's float map."""
    return f"anomaly_map_{model}"


def _input_mask_key(transforms: Sequence[Callable]) -> str:
    """Key of the brain mask that the contract's ``BrainMaskd`` keeps on the input's own grid (its ``copy_key``).

    Raises:
        ValueError: the preprocessing has no such step (a bundle that does not follow the geometry contract).
    """
    for transform in transforms:
        if isinstance(transform, BrainMaskd) and transform.copy_key is not None:
            return transform.copy_key
    raise ValueError("the bundle's preprocessing has no BrainMaskd step with a copy_key (see docs/geometry.md).")


def _invert(data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
    """``data`` through the inverses of the invertible ``transforms``, last first; each key by its own trace."""
    for transform in reversed(transforms):
        if isinstance(transform, InvertibleTransform):
            data = transform.inverse(data)
    return data


def _image_id(image_path: str) -> str:
    name = os.path.basename(os.path.normpath(image_path))
    ext = file_ext(name)
    return name[: -len(ext)] if ext else name


class AnomalyInferTask(BasicInferTask):
    """Unsupervised anomaly detection with one diffusion method, returning a uint8 label map and a result JSON.

    The label values are :data:`monai_diffad.transforms.ANOMALY_LABELS` (``anomaly`` = 1, ``anomaly_high`` = 2).
    The result JSON holds ``method``, the image-level ``score``, the ``threshold``/``high_threshold`` used and where
    the threshold came from, the effective ``options``, voxel counts per label, ``timing`` and the perceptual term in
    use (real LPIPS or its offline fallback).

    Args:
        method: method name reported in results (``"thor"``, ``"ddpm"``, ...).
        inferer_factory: builds the method's inferer from keyword options (the inferer class with its scheduler bound).
        checkpoint: network weights file; the task is not offered (``is_valid()`` False) while it does not exist.
        load_network: reads ``checkpoint`` into a network (safe loading, legacy checkpoint conversion).
        options: every request option (``TASK_OPTIONS`` and the method's), with their defaults.
        preprocessing: builds the bundle's ``preprocessing`` transforms (the geometry contract), run as MONAI
            Label's pre-transforms and inverted on the map; built per request, so concurrent requests share no
            transform or image reader.
        brain_mask_key: the key under which ``preprocessing`` reads and writes the brain mask.
        calls_per_batch: network calls an inferer makes per batch of slices, for the progress log.
        threshold_source: where the default threshold came from (reported in results).
        calibration_threshold: the bundle's calibrated threshold ``t``; the ``calibrated`` map scale puts it at 0.5
            (:func:`monai_diffad.maps.rescale_to_threshold`) and the image decision without an image threshold
            counts brain voxels at or above it. 0.5 (no rescaling) for a bundle without one.
        image_threshold: the bundle's image-level threshold on ``score`` (``None`` when it has none: the pixel rule
            of :meth:`image_decision` decides instead).
        map_dir: the datastore's labels folder; ``save_map`` writes to its ``anomaly_map_<model>`` tag folder
            (``None`` refuses ``save_map``).
        description: shown by MONAI Label clients.
        preload: load the network on every device at start-up.

    Raises:
        ValueError: ``options`` lacks one of the task options.
    """

    def __init__(
        self,
        method: str,
        inferer_factory: Callable[..., Any],
        checkpoint: str,
        load_network: Callable[[str], torch.nn.Module],
        options: Sequence[Option],
        preprocessing: Callable[[], Sequence[Callable]],
        brain_mask_key: str = "brain_mask",
        calls_per_batch: Callable[[Any], int | None] | None = None,
        threshold_source: str = "default",
        calibration_threshold: float = 0.5,
        image_threshold: float | None = None,
        map_dir: str | None = None,
        description: str = "",
        preload: bool = False,
    ) -> None:
        missing = _REQUIRED_OPTIONS - {o.name for o in options}
        if missing:
            raise ValueError(f"options lack the task options {sorted(missing)}.")
        self.method = method
        self.inferer_factory = inferer_factory
        self.load_network = load_network
        self.options = tuple(options)
        self.preprocessing = preprocessing
        self.brain_mask_key = brain_mask_key
        self.calls_per_batch = calls_per_batch or (lambda inferer: None)
        self.threshold_source = threshold_source
        self.calibration_threshold = float(calibration_threshold)
        self.image_threshold = image_threshold
        self.map_dir = map_dir
        self._inferers: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        labels = {name: value for name, value in ANOMALY_LABELS.items() if value > 0}
        super().__init__(
            path=checkpoint,
            network=None,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            config={o.name: o.panel_value() for o in self.options},
            preload=preload,
        )

    # ------------------------------------------------------------------ request validation
    def inferer_kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Inferer keys the validated request ``values`` set over the bundle's."""
        return {o.target: values[o.name] for o in self.options if o.target is not None}

    def _inferer(self, kwargs: Mapping[str, Any]) -> Any:
        """The inferer for these options; a few are cached because building one may load LPIPS weights."""
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
        with self._lock:
            if key in self._inferers:
                self._inferers.move_to_end(key)
                return self._inferers[key]
        try:
            inferer = self.inferer_factory(**kwargs)
        except (TypeError, ValueError) as e:
            raise InvalidInferRequest(f"invalid {self.method} options: {e}") from e
        with self._lock:
            self._inferers[key] = inferer
            while len(self._inferers) > _INFERER_CACHE_SIZE:
                self._inferers.popitem(last=False)
        return inferer

    def validate_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Check a request's options (before any image is read) and return their values.

        Raises:
            InvalidInferRequest: unknown options, invalid values, inconsistent thresholds, an unknown device, or
                ``save_map`` without a local studies folder.
        """
        values = parse_options(request, self.options, extra_allowed=self._config.keys())
        high = values["high_threshold"]
        if high is not None and not values["threshold"] < high:
            raise InvalidInferRequest(f"'high_threshold' ({high}) must be above 'threshold' ({values['threshold']}).")
        if values["save_map"] and self.map_dir is None:
            raise InvalidInferRequest("'save_map' needs a local studies folder; use output='map' instead.")
        if "device" in request:
            try:
                torch.device(name_to_device(request["device"]))
            except (RuntimeError, TypeError, ValueError, AttributeError):
                raise InvalidInferRequest(f"unknown device {request['device']!r}.") from None
        self._inferer(self.inferer_kwargs(values))
        return values

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict]:
        """Validate the request options, then run the standard MONAI Label pipeline with them.

        Raises:
            InvalidInferRequest: the request cannot be run as asked (see :meth:`validate_request`), or the image
                cannot be processed (e.g. it is empty or has several channels).
        """
        values = self.validate_request(request)
        request = {**request, OPTIONS_KEY: values}
        # validated first: a client cannot name a mask file itself, only place one beside its image
        image = request.get("image")
        mask = brain_mask_beside(image) if isinstance(image, str) else None
        if mask is not None:
            logger.info(f"{self.method}: brain mask {mask}")
            request[self.brain_mask_key] = mask
        return super().__call__(request, callbacks)

    # ------------------------------------------------------------------ stages
    def pre_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing``: image and brain mask as ``(1, image_size, image_size[, D])``, image in
        [0, 1], and the brain mask as given (or found) on the input's grid. The loader's MetaTensors carry the
        original affine and shape that ``Restored`` writes back."""
        return list(self.preprocessing())

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """MONAI Label's pre-processing, with unusable image content reported as a client error.

        ``image_path`` (MONAI Label's copy of the image's path) is held back meanwhile: ``Spacingd`` takes every
        ``image_*`` key for a meta dict of the image and fails on a string.
        """
        prefix = f"{self.input_key}_"
        held = {k: data.pop(k) for k in [k for k in data if k.startswith(prefix) and isinstance(data[k], str)]}
        try:
            data = super().run_pre_transforms(data, transforms)
        except ValueError as e:  # our transforms raise ValueError for unusable content (empty image, NaN, ...)
            raise InvalidInferRequest(f"the image cannot be processed: {e}") from e
        finally:
            data.update(held)
        return data

    def inverse_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """``[]``: every invertible pre-transform (resize, frame, spacing, orientation) is inverted on the map."""
        return []

    def run_invert_transforms(self, data: dict[str, Any], pre_transforms: Sequence[Callable], names: Any) -> dict:
        """MONAI Label's inversion of the pre-transforms on the map (``pred``), by the image's trace.

        The brain mask the post-transforms restrict the map to needs no inversion: ``BrainMaskd`` keeps a copy on the
        input's grid (:func:`_input_mask_key`).
        """
        if names is None:
            return data
        frame = {self.input_key: data[self.output_label_key], self.brain_mask_key: data[self.brain_mask_key]}
        data[self.output_label_key] = _invert(frame, pre_transforms)[self.input_key]
        data[self.brain_mask_key] = data[_input_mask_key(pre_transforms)]
        return data

    def post_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """Keep the float map, bin it into the label, drop small regions, squeeze the channel, set the affine."""
        values = data[OPTIONS_KEY]
        post: list[Callable] = [
            # interpolation back to the input grid may overshoot [0, 1] slightly
            Lambdad(keys="pred", func=partial(torch.clamp, min=0.0, max=1.0)),
        ]
        if values["mask_background"]:
            post.append(MaskIntensityd(keys="pred", mask_key=self.brain_mask_key))
        post += [
            # the raw map is kept for the image-level statistics, the returned one may be rescaled
            CopyItemsd(keys="pred", times=2, names=[_MAP_KEY, _RAW_MAP_KEY]),
            AnomalyMapToLabeld(
                keys="pred", threshold=values["threshold"], high_threshold=values["high_threshold"], label_key="pred"
            ),
        ]
        if values["min_size"] > 0:
            post.append(Lambdad(keys="pred", func=partial(_remove_small_regions, min_size_mm=values["min_size"])))
        if values["map_scale"] == "calibrated":
            post.append(
                Lambdad(keys=_MAP_KEY, func=partial(rescale_to_threshold, threshold=self.calibration_threshold))
            )
        # Restored only squeezes the channel of 3D results: squeeze here for 2D and 3D alike, then set the affine
        post.append(SqueezeDimd(keys=["pred", _MAP_KEY], dim=0))
        post.append(Restored(keys=["pred", _MAP_KEY], ref_image="image", has_channel=False))
        return post

    def _get_network(self, device: str, data: Mapping[str, Any] | None) -> torch.nn.Module:
        """The network on ``device``, loaded safely with ``load_network`` and reloaded when the checkpoint changes."""
        path = self.get_path()
        if path is None:
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, f"Checkpoint {self.path} does not exist.")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached is not None and cached[1] == mtime:
            return cached[0]
        logger.info(f"{self.method}: loading {path} on {device}")
        network = self.load_network(path).to(torch.device(device)).eval()
        self._networks[device] = (network, mtime)
        return network

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """Run ``detect()`` on ``device`` (volumes slice-wise in batches); store the map as ``pred`` and the result.

        Raises:
            InvalidInferRequest: the image's channel count does not match the network.
        """
        values = data[OPTIONS_KEY]
        kwargs = self.inferer_kwargs(values)
        inferer = self._inferer(kwargs)
        network = self._get_network(device, data)
        image = data[self.input_key]
        channels = getattr(network, "in_channels", image.shape[0])
        if image.shape[0] != channels:
            raise InvalidInferRequest(f"the model expects {channels}-channel images, got {image.shape[0]} channels.")

        inputs = torch.as_tensor(image.as_tensor() if isinstance(image, MetaTensor) else image)[None].float()
        inputs = inputs.to(torch.device(device))
        slices = inputs.shape[-1] if inputs.ndim == 5 else 1
        batches = math.ceil(slices / values["slice_batch_size"])
        per_batch = self.calls_per_batch(inferer)
        label = f"{self.method} on {os.path.basename(str(data.get('image_path', 'image')))}"
        logged = ProgressLoggedNetwork(network, per_batch * batches if per_batch else None, label, logger)
        logger.info(f"{label}: {slices} slice(s) of {tuple(inputs.shape[2:4])} in {batches} batch(es) on {device}")

        start = time.perf_counter()
        # as the bundle's evaluator: the whole frame is restored; the brain mask applies on the input's grid
        out = inferer.detect(inputs, logged, generator=torch.Generator().manual_seed(values["seed"]), progress=False)
        amap = out.anomaly_map[0].float().cpu()
        elapsed = time.perf_counter() - start
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()

        # the map carries the image's metadata and transform trace so the pre-transforms can be inverted on it
        data["pred"] = MetaTensor(
            amap, meta=copy.deepcopy(image.meta), applied_operations=copy.deepcopy(image.applied_operations)
        )
        perceptual = getattr(inferer, "perceptual", None)
        data[_SCORE_FRACTION_KEY] = getattr(inferer, "score_top_fraction", 0.01)
        data[self.output_json_key] = {
            "method": self.method,
            "threshold": values["threshold"],
            "high_threshold": values["high_threshold"],
            "threshold_source": self.threshold_source,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
            "perceptual": getattr(perceptual, "description", None),
            "timing": {
                "detect_s": round(elapsed, 3),
                "network_calls": logged.calls,
                "slices": slices,
                "batches": batches,
                "device": str(device),
            },
        }
        logger.info(f"{label}: done in {elapsed:.1f}s ({logged.calls} network calls)")
        return data

    # ------------------------------------------------------------------ output
    def image_decision(self, raw_map: torch.Tensor, brain_mask: Any, score: float) -> dict[str, Any]:
        """The image-level call that comes with the score: ``pred_label`` 1 (anomalous) or 0, and the rule used.

        With an image-level threshold in the bundle (``image_threshold``, ``image_threshold_simplex`` for THOR-Simplex:
        the lowest score that at most 5 % of healthy images reached when it was calibrated), the call is
        ``score >= image_threshold``. Without one (the key ``null``), it is a pixel rule: anomalous when the share of
        brain voxels at or above the calibrated pixel threshold exceeds the share of healthy brain that threshold was
        calibrated to allow (:data:`CALIBRATION_FPR`, 5 %). That share is a mean over healthy images, so about half of
        healthy images may exceed it; it is a ranking aid, not an operating point at a known image-level error rate.

        Args:
            raw_map: the map before rescaling, ``(1, *spatial)`` on the input's grid.
            brain_mask: the brain mask on the same grid.
            score: the image score of ``raw_map``.
        """
        brain = torch.as_tensor(np.asarray(brain_mask)) > 0
        flagged = raw_map[brain] >= self.calibration_threshold
        share = float(flagged.float().mean()) if flagged.numel() else 0.0
        if self.image_threshold is not None:
            pred = score >= self.image_threshold
            rule = f"score >= image threshold {self.image_threshold:g} (the bundle's, calibrated on healthy images)"
        else:
            pred = share > CALIBRATION_FPR
            rule = (
                f"pixel rule: brain share at or above the calibrated threshold {self.calibration_threshold:g} > "
                f"{CALIBRATION_FPR:g} (the healthy share it was calibrated to; the bundle has no calibrated image "
                "threshold)"
            )
        return {"pred_label": int(pred), "pred_label_rule": rule, "flagged_brain_share": round(share, 6)}

    def _write(self, data: Mapping[str, Any], key: str, extension: str, dtype: str) -> str:
        """Write ``data[key]`` (restored geometry) to a temporary file and return its path."""
        array = data[key].array if isinstance(data[key], MetaTensor) else np.asarray(data[key])
        if array.ndim == 2 and extension in (".nii", ".nii.gz"):
            # MONAI Label's writer drops the affine of 2D results (ITK) or fails on them (nibabel): write directly
            affine = to_affine_nd(3, np.asarray(data[f"{key}_meta_dict"]["affine"], dtype=np.float64))
            with tempfile.NamedTemporaryFile(suffix=extension, delete=False) as f:
                path = f.name
            nib.save(nib.Nifti1Image(array.astype(dtype), affine), path)
            return path
        request = {**data, "result_extension": extension, "result_dtype": dtype, "result_write_to_file": True}
        path, _ = Writer(label=key, json=self.output_json_key)(request)
        return path

    def writer(
        self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None
    ) -> tuple[str | None, dict]:
        """Write the label (or, with ``output="map"``, the float map); ``save_map`` keeps a copy of the map."""
        values = data[OPTIONS_KEY]
        result = data[self.output_json_key]
        label = np.asarray(data["pred"])
        # the bundle's image score (AnomalyResultsWriter): top values of the raw final map on the input's grid
        raw = torch.as_tensor(np.asarray(data[_RAW_MAP_KEY]), dtype=torch.float32)
        score = float(top_fraction_mean(raw, data[_SCORE_FRACTION_KEY])[0])
        result["score"] = score
        result["score_calibrated"] = rescale_to_threshold(score, self.calibration_threshold)
        result.update(self.image_decision(raw, data[self.brain_mask_key], score))
        amap = np.asarray(data[_MAP_KEY])
        # per axial slice (the last axis) of the returned map: where a reader should look first
        per_slice = amap.reshape(-1, amap.shape[-1]).max(0) if amap.ndim == 3 else [amap.max()]
        result["slice_max"] = [round(float(v), 6) for v in per_slice]
        result["map_scale"] = values["map_scale"]
        result["calibration_threshold"] = self.calibration_threshold
        result["label_voxels"] = {name: int((label == value).sum()) for name, value in self.labels.items()}
        map_file = None
        if values["output"] == "map" or values["save_map"]:
            map_file = self._write(data, _MAP_KEY, ".nii.gz", "float32")
        if values["save_map"]:
            # a label tag of MONAI Label's datastore: served at /datastore/label?label=<image id>&tag=<this tag>
            target_dir = os.path.join(self.map_dir, map_tag(str(data.get("model", self.method))))
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, f"{_image_id(str(data['image_path']))}.nii.gz")
            with atomic_path(target) as tmp:  # a saved map beside the studies is complete or absent
                shutil.copyfile(map_file, tmp)
            result["map_file"] = target
        if values["output"] == "map":
            return map_file, result
        if map_file is not None:
            os.remove(map_file)
        extension = extension or data.get("result_extension") or file_ext(str(data.get("image_path", ""))) or ".nrrd"
        return self._write(data, "pred", extension, dtype or data.get("result_dtype") or "uint8"), result
