# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Shared MONAI Label ``TaskConfig`` of the anomaly methods: weights, network, defaults and the bundle's threshold.

A method's config file only names its inferer and its method options; this base turns the app's ``--conf`` values
into an :class:`~lib.infers.anomaly.AnomalyInferTask`. Server options (``--conf key value``):

- ``checkpoint``: DDPM weights shared by the DDPM-based methods (default ``bundles/ddpm/models/model.pt``, and
  ``model_simplex.pt`` for the Simplex-noise methods where it is shipped).
- ``network``: JSON object of :func:`monai_diffad.networks.diffusion_unet` options matching the weights
  (default: the demo network, ``monai_diffad.networks.DEMO_UNET``).
- ``image_size``: in-plane size the network was trained at, ``64`` or ``64,64`` (default 64).
- ``lpips_backbone``: path of the LPIPS backbone weights (otherwise the torch hub cache, else the offline fallback).
- ``preload``: ``true`` loads the networks at start-up.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.utils.others.generic import strtobool

from lib.infers.anomaly import TASK_OPTIONS, AnomalyInferTask
from lib.infers.params import InvalidInferRequest, Option
from monai_diffad.bundles import shared_ddpm_checkpoint
from monai_diffad.networks import DEMO_UNET, ddpm_scheduler, diffusion_unet, load_diffusion_unet

__all__ = ["AnomalyTaskConfig", "NOISE_LEVEL", "read_bundle_defaults"]

logger = logging.getLogger(__name__)

#: the partial-noising level L of the DDPM-based methods; its default is the inferer's (paper) default
NOISE_LEVEL = Option(
    "noise_level", "int", None,
    "Diffusion steps: the image is noised to this level and restored (about one network call per level).",
    1, 999, target="noise_level",
)  # fmt: skip


def read_bundle_defaults(
    config_file: str, options: tuple[Option, ...], keys: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Plain top-level values of a bundle config whose keys are option names (e.g. ``threshold``, ``noise_level``).

    Expressions and references (``"$..."``, ``"@..."``, ``"%..."``) and values that fail the option's validation are
    skipped with a warning, so a bundle can never break the app.

    Args:
        config_file: the bundle's ``inference.json``.
        options: the task's options.
        keys: ``{option name: config key}``: read only these options, from these keys (a variant that shares a
            bundle, e.g. THOR-Simplex's ``threshold`` from the THOR bundle's ``threshold_simplex``). ``None``: every
            option from the key of its own name.

    Returns:
        ``{option name: validated value}``; empty when the file does not exist.
    """
    if not os.path.isfile(config_file):
        return {}
    try:
        with open(config_file) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning(f"Cannot read {config_file}: {e}; using the method defaults.")
        return {}
    found: dict[str, Any] = {}
    for option in options:
        if keys is not None and option.name not in keys:
            continue
        key = option.name if keys is None else keys[option.name]
        value = config.get(key) if isinstance(config, Mapping) else None
        if value is None or (isinstance(value, str) and value[:1] in "$@%"):
            continue
        try:
            found[option.name] = option.parse(value)
        except InvalidInferRequest as e:
            logger.warning(f"Ignoring '{key}' of {config_file}: {e}")
    return found


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class AnomalyTaskConfig(TaskConfig):
    """Base ``TaskConfig`` of an anomaly method; subclasses set the class attributes.

    Attributes:
        method: method name, also the ``--conf models`` entry and the bundle folder name (unless ``bundle`` is set).
        inferer_path: dotted path of the inferer class (imported when the task is built; a missing module skips
            the task with a warning instead of breaking the app).
        fixed_inferer_kwargs: inferer options of this variant that requests cannot change.
        method_options: the method's request options (their targets are inferer keywords).
        summary: one-line description shown in Slicer.
        bundle: bundle folder under ``bundles/`` whose ``inference.json`` provides the calibrated threshold.
        bundle_keys: ``{option name: config key}`` to read from that bundle instead of every option by its name.
        checkpoint_key: ``--conf`` key of the weights file.
        default_checkpoint: weights file relative to the repository root; ``None``: the shared DDPM weights trained
            with ``noise_type`` (:func:`monai_diffad.bundles.shared_ddpm_checkpoint`).
        noise_type: the noise the method restores from, which picks the shared DDPM weights.
        network_key: ``--conf`` key of the architecture (JSON object).
    """

    method: str = ""
    inferer_path: str = ""
    fixed_inferer_kwargs: Mapping[str, Any] = {}
    method_options: tuple[Option, ...] = ()
    summary: str = ""
    bundle: str | None = None
    bundle_keys: Mapping[str, str] | None = None
    checkpoint_key: str = "checkpoint"
    default_checkpoint: str | None = None
    noise_type: str = "gaussian"
    network_key: str = "network"

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        """Read the server options.

        Args:
            name: task name.
            model_dir: the app's model folder (unused: weights live with the bundles).
            conf: ``--conf`` values.
            planner: unused.
            kwargs: ``repo_root`` (folder holding ``bundles/``) and ``map_dir`` (folder for saved maps or ``None``).

        Raises:
            ValueError: an invalid ``image_size`` or ``preload`` value.
        """
        super().init(name, model_dir, conf, planner, **kwargs)
        self.repo_root = kwargs["repo_root"]
        self.map_dir = kwargs.get("map_dir")
        checkpoint = conf.get(self.checkpoint_key, self.default_checkpoint)
        if checkpoint is None:
            checkpoint = shared_ddpm_checkpoint(self.repo_root, self.noise_type)
        self.checkpoint = checkpoint if os.path.isabs(checkpoint) else os.path.join(self.repo_root, checkpoint)
        sizes = [s for s in str(conf.get("image_size", "64")).split(",") if s.strip()]
        if len(sizes) not in (1, 2) or not all(s.strip().isdigit() and int(s) > 0 for s in sizes):
            raise ValueError(
                f"--conf image_size must be 'N' or 'H,W' with positive integers, got {conf['image_size']!r}."
            )
        self.image_size = (int(sizes[0]), int(sizes[-1]))
        self.preload = bool(strtobool(conf.get("preload", "false")))
        self.lpips_backbone = conf.get("lpips_backbone")

    # ------------------------------------------------------------------ overridable pieces
    def default_network(self) -> dict[str, Any]:
        """Architecture of the default weights (options of :func:`monai_diffad.networks.diffusion_unet`)."""
        return dict(DEMO_UNET)

    def scheduler(self) -> Any:
        """The schedule the weights were trained with."""
        return ddpm_scheduler()

    def calls_per_batch(self, inferer: Any) -> int | None:
        """Network calls one batch of slices costs (progress log), ``None`` when unknown."""
        calls = getattr(inferer, "num_network_calls", None)
        if calls is None and hasattr(inferer, "reverse_schedule") and hasattr(inferer, "noise_level"):
            calls = len(inferer.reverse_schedule(inferer.noise_level))
        return None if calls is None else int(calls)

    def inferer_kwargs(self, inferer_class: type) -> dict[str, Any]:
        """Fixed constructor options of this variant (plus the LPIPS backbone path when configured and accepted)."""
        kwargs = dict(self.fixed_inferer_kwargs)
        if self.lpips_backbone and "lpips_backbone_path" in inspect.signature(inferer_class).parameters:
            kwargs["lpips_backbone_path"] = self.lpips_backbone
        return kwargs

    def network_kwargs(self) -> dict[str, Any]:
        """The architecture: ``--conf <network_key>`` (a JSON object) or :meth:`default_network`.

        Raises:
            ValueError: the value is not a JSON object of valid ``diffusion_unet`` options.
        """
        if self.network_key not in self.conf:
            return self.default_network()
        try:
            kwargs = json.loads(self.conf[self.network_key])
        except ValueError as e:
            raise ValueError(f"--conf {self.network_key} must be a JSON object of diffusion_unet options: {e}") from e
        if not isinstance(kwargs, dict):
            raise ValueError(f"--conf {self.network_key} must be a JSON object, got {self.conf[self.network_key]!r}.")
        diffusion_unet(**kwargs)  # fail at start-up, not at the first request, on a wrong architecture
        return kwargs

    # ------------------------------------------------------------------ task
    def _options(self, default_inferer: Any) -> tuple[tuple[Option, ...], str]:
        """All request options with their defaults (inferer defaults, then the bundle's values) and the threshold's
        source."""
        options = [
            o.with_default(getattr(default_inferer, o.target)) if o.default is None and o.target else o
            for o in TASK_OPTIONS + tuple(self.method_options)
        ]
        bundle_file = os.path.join(self.repo_root, "bundles", self.bundle or self.method, "inference.json")
        from_bundle = read_bundle_defaults(bundle_file, tuple(options), self.bundle_keys)
        if from_bundle:
            logger.info(f"{self.name}: defaults from {bundle_file}: {from_bundle}")
        options = [o.with_default(from_bundle[o.name]) if o.name in from_bundle else o for o in options]
        if "threshold" in from_bundle:
            source = os.path.relpath(bundle_file, self.repo_root)
        else:
            source = "default"
            logger.warning(
                f"{self.name}: no calibrated 'threshold' in {bundle_file}; using "
                f"{next(o.default for o in options if o.name == 'threshold')} "
                "(override it per request with params {'threshold': ...})."
            )
        return tuple(options), source

    def infer(self) -> AnomalyInferTask | None:
        """Build the infer task, or ``None`` (with a warning) when the method is not part of this installation.

        Raises:
            ValueError: an invalid ``--conf`` network architecture.
        """
        try:
            inferer_class = _import(self.inferer_path)
        except (ImportError, AttributeError) as e:
            logger.warning(f"{self.name}: method not available ({self.inferer_path}: {e}); task skipped.")
            return None
        network_kwargs = self.network_kwargs()
        fixed = self.inferer_kwargs(inferer_class)
        options, source = self._options(inferer_class(self.scheduler(), **fixed))
        if not os.path.isfile(self.checkpoint):
            logger.warning(f"{self.name}: checkpoint {self.checkpoint} not found; the model is hidden until it exists.")
        return AnomalyInferTask(
            method=self.method,
            inferer_factory=lambda **kw: inferer_class(self.scheduler(), **kw),
            checkpoint=self.checkpoint,
            load_network=partial(load_diffusion_unet, **network_kwargs),
            options=options,
            fixed_inferer_kwargs=fixed,
            calls_per_batch=self.calls_per_batch,
            image_size=self.image_size,
            threshold_source=source,
            map_dir=self.map_dir,
            description=f"{self.summary} Runs 2D slice-wise on volumes; label 1 = anomaly, 2 = anomaly_high.",
            preload=self.preload,
        )

    def trainer(self) -> None:
        return None
