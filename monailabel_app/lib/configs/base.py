# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared MONAI Label ``TaskConfig`` of the anomaly methods: everything comes from the method's bundle.

A method is built only from its bundle's ``inference.json`` (read with :func:`monai_diffad.bundles.bundle_config`):
its ``preprocessing`` (the geometry contract), ``network_def``, ``checkpoint``, ``inferer`` (scheduler, perceptual
term, ``step_stride``, ``precision``, ``record_interval``, ``noise_type``, ...), the label threshold of its own
postprocessing and its image threshold (``image_threshold``, ``image_threshold_simplex`` for THOR-Simplex; ``null``:
none). The app adds nothing of its own; a request's options are applied over the bundle's ``inferer`` keys.
A method's config file names its bundle, its variant keys and its request options.

Server options (``--conf key value``), each an override of a bundle key:

- ``checkpoint``: weights of the DDPM-based methods (bundle key ``checkpoint``; default: the bundle's, i.e.
  ``bundles/ddpm/models/model.pt``, or ``model_simplex.pt`` for the Simplex-noise methods).
- ``network``: JSON object of :func:`monai_diffad.networks.diffusion_unet` options matching those weights (replaces
  the bundle's ``network_def``; a ``_target_`` entry names another constructor).
- ``image_size``: in-plane size the network was trained at, ``64`` or ``64,64`` (bundle key ``image_size``; the
  contract's frame is square).
- ``lpips_backbone``: path of the LPIPS backbone weights (the inferer's ``lpips_backbone_path`` where it has one).
- ``preload``: ``true`` loads the networks at start-up (an app option, not a bundle key).

The bundles are found as by ``monai.bundle run``: ``$MONAI_DIFFAD_BUNDLES/<name>``, ``./bundles/<name>``, then the
source checkout (:func:`monai_diffad.bundles.bundle_root`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.config import TaskConfig
from monailabel.utils.others.generic import strtobool

from lib.infers.anomaly import TASK_OPTIONS, AnomalyInferTask
from lib.infers.params import Option
from monai_diffad.bundles import bundle_config
from monai_diffad.calibration import image_threshold_key
from monai_diffad.methods import method_spec
from monai_diffad.networks import load_diffusion_unet

__all__ = ["AnomalyTaskConfig", "BundleMethod"]

logger = logging.getLogger(__name__)


#: the key under which MONAI Label hands the image to the pre-transforms
_IMAGE_KEY = "image"
#: the diffusion network constructor ``--conf network`` options belong to
_UNET_TARGET = "monai_diffad.networks.diffusion_unet"


def _import_failed(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) says that a class of the bundle cannot be imported."""
    while error is not None:
        if isinstance(error, (ImportError, AttributeError)):
            return True
        error = error.__cause__
    return False


class BundleMethod:
    """A method's bundle config, read once, from which every piece the app needs is parsed afresh.

    Each :meth:`parse` starts from a copy of the config as read (with the server's overrides), so requests with
    different options never share, or change, a parser; this is what makes building inferers thread-safe.

    Args:
        name: the bundle name.
        overrides: bundle keys to set (``"a#b"`` paths allowed) before anything is parsed.

    Raises:
        FileNotFoundError: the bundle or its ``inference.json`` does not exist.
    """

    def __init__(self, name: str, overrides: Mapping[str, Any]) -> None:
        parser = bundle_config(name, overrides=overrides)
        self.name = name
        self.root = str(parser["bundle_root"])
        self.config_file = os.path.join(self.root, "inference.json")
        self._config = parser.get()

    def raw(self, key: str) -> Any:
        """The unparsed config at ``key`` (``None`` where absent)."""
        return ConfigParser(copy.deepcopy(self._config)).get(key)

    def parse(self, key: str, overrides: Mapping[str, Any] | None = None) -> Any:
        """The parsed (instantiated) content at ``key`` with further ``overrides`` set first."""
        parser = ConfigParser(copy.deepcopy(self._config))
        for k, v in (overrides or {}).items():
            parser[k] = v
        return parser.get_parsed_content(key)

    def component_key(self, pipeline: str, target_suffix: str) -> str | None:
        """The id of the first transform of ``pipeline`` (``"preprocessing"``, ...) whose ``_target_`` ends with
        ``target_suffix``, so a piece is found by what it is, not by its position."""
        for index, transform in enumerate((self.raw(pipeline) or {}).get("transforms", [])):
            if isinstance(transform, Mapping) and str(transform.get("_target_", "")).endswith(target_suffix):
                return f"{pipeline}#transforms#{index}"
        return None


class AnomalyTaskConfig(TaskConfig):
    """Base ``TaskConfig`` of an anomaly method; subclasses set the class attributes.

    Attributes:
        method: method name, also the ``--conf models`` entry and the bundle folder name (unless ``bundle`` is set).
        method_options: the method's request options (their targets are keys of the bundle's ``inferer``; a
            ``None`` default means the bundle inferer's value).
        summary: one-line description shown in Slicer.
        bundle: bundle folder under ``bundles/``, when it is not ``method``.
        bundle_overrides: bundle keys that make this variant (e.g. THOR-Simplex: ``{"noise_type": "simplex"}``, which
            also picks the bundle's Simplex weights and Simplex threshold).
        checkpoint_key: ``--conf`` key that overrides the bundle's ``checkpoint``.
        network_key: ``--conf`` key that overrides the bundle's ``network_def``.
        threshold_key: the bundle key of its calibrated label threshold (e.g. ``threshold_simplex``); empty: the
            registered method's (:attr:`monai_diffad.methods.MethodSpec.threshold_key`), else ``threshold``. Its
            image threshold is the key ``image_<threshold_key>``.
    """

    method: str = ""
    method_options: tuple[Option, ...] = ()
    summary: str = ""
    bundle: str | None = None
    bundle_overrides: Mapping[str, Any] = {}
    checkpoint_key: str = "checkpoint"
    network_key: str = "network"
    threshold_key: str = ""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        """Read the method's bundle with the server options applied.

        Args:
            name: task name.
            model_dir: the app's model folder (unused: weights live with the bundles).
            conf: ``--conf`` values.
            planner: unused.
            kwargs: ``repo_root`` (relative ``--conf`` paths start there) and ``map_dir`` (folder for saved maps or
                ``None``).

        Raises:
            ValueError: an invalid ``image_size``, ``network`` or ``preload`` value.
            FileNotFoundError: the method's bundle does not exist.
        """
        super().init(name, model_dir, conf, planner, **kwargs)
        self.repo_root = kwargs["repo_root"]
        self.map_dir = kwargs.get("map_dir")
        self.preload = bool(strtobool(conf.get("preload", "false")))
        self.bundle_method = BundleMethod(self.bundle or self.method, self.server_overrides())
        self.checkpoint = str(self.bundle_method.parse("checkpoint"))

    # ------------------------------------------------------------------ server options -> bundle keys
    def server_overrides(self) -> dict[str, Any]:
        """This variant's bundle keys and the ``--conf`` options, as bundle-key overrides.

        Raises:
            ValueError: an invalid ``image_size`` or ``network`` value.
        """
        # MONAI Label hands the image to the pre-transforms under "image", whatever the bundle calls it
        overrides: dict[str, Any] = {**self.bundle_overrides, "image_key": _IMAGE_KEY}
        if self.checkpoint_key in self.conf:
            path = self.conf[self.checkpoint_key]
            overrides["checkpoint"] = path if os.path.isabs(path) else os.path.join(self.repo_root, path)
        if self.network_key in self.conf:
            overrides["network_def"] = self._network_def(self.conf[self.network_key])
        if "image_size" in self.conf:
            overrides["image_size"] = self._image_size(self.conf["image_size"])
        return overrides

    def _network_def(self, value: str) -> dict[str, Any]:
        try:
            kwargs = json.loads(value)
        except ValueError as e:
            raise ValueError(f"--conf {self.network_key} must be a JSON object of diffusion_unet options: {e}") from e
        if not isinstance(kwargs, dict):
            raise ValueError(f"--conf {self.network_key} must be a JSON object, got {value!r}.")
        return {"_target_": _UNET_TARGET, **kwargs}

    @staticmethod
    def _image_size(value: str) -> int:
        sizes = [s.strip() for s in str(value).split(",") if s.strip()]
        if len(sizes) not in (1, 2) or not all(s.isdigit() and int(s) > 0 for s in sizes) or len(set(sizes)) != 1:
            raise ValueError(
                f"--conf image_size must be 'N' or 'N,N' with a positive integer N (the bundles' field of view is "
                f"square), got {value!r}."
            )
        return int(sizes[0])

    def request_overrides(self, inferer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Bundle-key overrides that set the inferer's keywords; only validated numbers arrive here (a string
        starting with ``$`` would be evaluated by the config parser)."""
        overrides = {f"inferer#{k}": list(v) if isinstance(v, tuple) else v for k, v in inferer_kwargs.items()}
        lpips = self.conf.get("lpips_backbone")
        if lpips and "lpips_backbone_path" in (self.bundle_method.raw("inferer") or {}):
            overrides["inferer#lpips_backbone_path"] = lpips
        return overrides

    # ------------------------------------------------------------------ pieces from the bundle
    def build_inferer(self, **inferer_kwargs: Any) -> Any:
        """The bundle's inferer with ``inferer_kwargs`` (request options) set over its own keys.

        Raises:
            TypeError, ValueError: the inferer refuses the options (e.g. a harmonization step above the noise level).
        """
        try:
            inferer = self.bundle_method.parse("inferer", self.request_overrides(inferer_kwargs))
        except RuntimeError as e:  # the config parser wraps the constructor's own error
            if isinstance(e.__cause__, (TypeError, ValueError)):
                raise e.__cause__ from None
            raise
        # what detection checks against the scheduler (e.g. noise_level >= T) is refused now, before any image is read
        inferer.validate_settings()
        return inferer

    def load_network(self, path: str) -> torch.nn.Module:
        """The bundle's ``network_def`` with the weights of ``path`` (weights-only; legacy checkpoints converted)."""
        return load_diffusion_unet(path, model=self.bundle_method.parse("network_def"))

    def calls_per_batch(self, inferer: Any) -> int | None:
        """Network calls one batch of slices costs (progress log): every inferer states it."""
        return int(inferer.num_network_calls)

    def _label_setting(self, name: str) -> tuple[Any, bool]:
        """``name`` (``threshold``, ``high_threshold``) of the ``AnomalyMapToLabeld`` in the bundle's postprocessing:
        the value the bundle labels with (e.g. THOR's ``active_threshold`` of its noise type), and whether found."""
        key = self.bundle_method.component_key("postprocessing", "AnomalyMapToLabeld")
        if key is None or name not in (self.bundle_method.raw(key) or {}):
            return None, False
        return self.bundle_method.parse(f"{key}#{name}"), True

    def image_threshold_key(self) -> str:
        """The bundle key of this method's image-level threshold: ``image_`` + its label-threshold key, as
        ``monai-diffad calibrate --write`` stores it (``image_threshold``; ``image_threshold_simplex`` for
        THOR-Simplex, which shares the THOR bundle)."""
        return image_threshold_key(self.threshold_key or self._registered_threshold_key())

    def _registered_threshold_key(self) -> str:
        try:
            return method_spec(self.method).threshold_key
        except ValueError:  # a config class made by hand for a method that is not registered
            return "threshold"

    def image_threshold(self) -> float | None:
        """The bundle's image-level threshold on the image score (:meth:`image_threshold_key`), calibrated at a
        healthy false-positive rate; ``None`` where the key is absent or ``null`` (then the pixel rule decides).

        Raises:
            ValueError: the value is not a number.
        """
        key = self.image_threshold_key()
        if self.bundle_method.raw(key) is None:
            return None
        value = self.bundle_method.parse(key)
        if value is None:  # an expression may give null too
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{self.name}: {key} in {self.bundle_method.config_file} must be a number or null, got {value!r}."
            )
        return float(value)

    def _options(self, default_inferer: Any) -> tuple[tuple[Option, ...], str]:
        """All request options with their defaults, and where the threshold came from.

        Defaults: the bundle inferer's values (``default_inferer``) for options that set inferer keys, the bundle's
        ``seed`` and label thresholds; a bundle without a threshold gets 0.5 with a warning.
        """
        options = [
            o.with_default(getattr(default_inferer, o.target)) if o.default is None and o.target else o
            for o in TASK_OPTIONS + tuple(self.method_options)
        ]
        defaults: dict[str, Any] = {}
        threshold, found = self._label_setting("threshold")
        if found and threshold is not None:
            defaults["threshold"] = threshold
        high, found_high = self._label_setting("high_threshold")
        if found_high:
            defaults["high_threshold"] = high
        seed = self.bundle_method.raw("seed")
        if isinstance(seed, int):
            defaults["seed"] = seed
        options = [o.with_default(defaults[o.name]) if o.name in defaults else o for o in options]
        logger.info(f"{self.name}: defaults from {self.bundle_method.config_file}: {defaults}")
        if "threshold" in defaults:
            path = os.path.abspath(self.bundle_method.config_file)
            root = os.path.abspath(self.repo_root)
            source = os.path.relpath(path, root) if path.startswith(root + os.sep) else path
        else:
            source = "default"
            logger.warning(
                f"{self.name}: no calibrated label threshold in {self.bundle_method.config_file}; using "
                f"{next(o.default for o in options if o.name == 'threshold')} "
                "(override it per request with params {'threshold': ...})."
            )
        return tuple(options), source

    # ------------------------------------------------------------------ task
    def infer(self) -> AnomalyInferTask | None:
        """Build the infer task, or ``None`` (with a warning) when the method is not part of this installation.

        Raises:
            ValueError: the bundle's network or inferer cannot be built.
        """
        try:
            default_inferer = self.build_inferer()
            self.bundle_method.parse("network_def")  # fail at start-up, not at the first request, on a bad network
        except Exception as e:
            if not _import_failed(e):
                raise ValueError(f"{self.name}: cannot build the method from {self.bundle_method.config_file}: {e}") from e
            logger.warning(f"{self.name}: method not available ({e}); task skipped.")
            return None
        options, source = self._options(default_inferer)
        # the calibrated map scale is anchored at the bundle's threshold (0.5, i.e. no rescaling, without one)
        calibration = next(o.default for o in options if o.name == "threshold") if source != "default" else 0.5
        if not os.path.isfile(self.checkpoint):
            logger.warning(f"{self.name}: checkpoint {self.checkpoint} not found; the model is hidden until it exists.")
        return AnomalyInferTask(
            method=self.method,
            inferer_factory=self.build_inferer,
            checkpoint=self.checkpoint,
            load_network=self.load_network,
            options=options,
            preprocessing=lambda: self.bundle_method.parse("preprocessing").transforms,
            brain_mask_key=str(self.bundle_method.raw("brain_mask_key") or "brain_mask"),
            calls_per_batch=self.calls_per_batch,
            threshold_source=source,
            calibration_threshold=calibration,
            image_threshold=self.image_threshold(),
            map_dir=self.map_dir,
            description=f"{self.summary} Runs 2D slice-wise on volumes; label 1 = anomaly, 2 = anomaly_high.",
            preload=self.preload,
        )

    def trainer(self) -> None:
        return None
