# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Building a method (network with its weights + inferer) from its bundle's ``inference.json``.

A method is a bundle folder ``<bundles>/<name>/inference.json`` with the keys ``network``, ``checkpoint`` and
``inferer`` (the layout every bundle of this project shares), or a named variant of one (``thor_simplex`` is the
THOR bundle with ``noise_type="simplex"``). Weights are read like the bundle's ``CheckpointLoader`` does (a state
dict, possibly wrapped under ``model``/``state_dict``/``network``, loaded strictly) but only through
:func:`~monai_diffad.networks.load_state_dict_safely`, which never unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_diffad.inferers import DiffusionAnomalyInferer
from monai_diffad.inferers.disyre import DISYREInferer
from monai_diffad.inferers.perceptual_term import PerceptualTerm
from monai_diffad.networks import load_state_dict_safely

__all__ = [
    "METHOD_VARIANTS",
    "METHOD_LABELS",
    "DEFAULT_METHODS",
    "MethodUnavailable",
    "BuiltMethod",
    "build_method",
    "method_config_file",
    "parse_overrides",
    "describe_inferer",
]

#: methods that are a bundle run with other settings: name -> (bundle folder, config overrides)
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"thor_simplex": ("thor", {"noise_type": "simplex"})}
#: names shown in tables (others are shown as given)
METHOD_LABELS: dict[str, str] = {
    "ddpm": "DDPM",
    "anoddpm": "AnoDDPM",
    "thor": "THOR",
    "thor_simplex": "THOR",
    "autoddpm": "AutoDDPM",
    "disyre": "DISYRE",
}
#: the papers' comparison: Gaussian methods, then Simplex ones, then DISYRE
DEFAULT_METHODS = ("ddpm", "autoddpm", "thor", "anoddpm", "thor_simplex", "disyre")


class MethodUnavailable(RuntimeError):
    """The method cannot run yet because its bundle or its weights do not exist (reported as skipped)."""


@dataclass
class BuiltMethod:
    """A method ready to run.

    Attributes:
        name: method name (e.g. ``"thor_simplex"``).
        inferer: the bundle's inferer.
        network: the bundle's network with its weights, in eval mode.
        image_size: the bundle's ``image_size`` (input side length it was trained for), ``None`` if not stated.
        settings: what was built, for reports (bundle, config file, checkpoint and its SHA-256, overrides).
        config: the bundle's parser with the overrides applied, for the rest of the bundle (e.g. its
            ``preprocessing`` and ``postprocessing``, the geometry contract).
    """

    name: str
    inferer: DiffusionAnomalyInferer
    network: torch.nn.Module
    image_size: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    config: ConfigParser | None = None


def method_config_file(name: str, bundles_dir: str) -> str:
    """Path of the ``inference.json`` that defines method ``name`` (whether it exists or not)."""
    bundle = METHOD_VARIANTS.get(name, (name, {}))[0]
    return os.path.join(bundles_dir, bundle, "inference.json")


def _parse_value(text: str) -> Any:
    """JSON value when ``text`` is one (numbers, lists, true/false/null), the raw string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse ``METHOD.KEY=VALUE`` config overrides.

    ``KEY`` is a config id of the method's ``inference.json`` (nested ids use ``#``, e.g. ``inferer#progress``);
    ``VALUE`` is read as JSON when possible (``100``, ``[300, 150]``, ``null``), else as a string. ``METHOD`` is one
    of ``methods`` or ``all``. Example: ``thor.noise_level=100`` (applies to ``thor`` only, not ``thor_simplex``).

    Returns:
        ``{"all": {key: value}, method: {key: value}, ...}`` with an entry for ``all`` and for every method.

    Raises:
        ValueError: a malformed item or an unknown method.
    """
    parsed: dict[str, dict[str, Any]] = {m: {} for m in ("all", *methods)}
    for item in items:
        target, sep, text = item.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(f"Override '{item}' must look like METHOD.KEY=VALUE, e.g. thor.noise_level=100.")
        if method not in parsed:
            raise ValueError(f"Override '{item}' names method '{method}', which is not among {list(methods)} or 'all'.")
        parsed[method][key] = _parse_value(text)
    return parsed


def _has_target(parser: ConfigParser, key: str) -> bool:
    """Whether setting ``key`` can change the config: an existing top-level id (a new one would never be
    referenced), or any id under an existing parent (e.g. a new ``inferer#option``)."""
    parent, _, _ = key.rpartition("#")
    return (parent or key) in parser


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_inferer(inferer: DiffusionAnomalyInferer) -> dict[str, Any]:
    """The inferer's class, noise and perceptual term as used, for reports.

    ``noise`` is ``"gaussian"``/``"simplex"`` for the partial-noising methods and ``"none"`` for DISYRE, which
    restores synthetic corruptions without noise (its base-class noise level is a placeholder).
    """
    info: dict[str, Any] = {"inferer": type(inferer).__name__}
    if isinstance(inferer, DISYREInferer):
        info["noise"] = "none"
        info["step_size"] = inferer.step_size
    else:
        info["noise"] = inferer.noise_type
        info["noise_level"] = inferer.noise_level
    for attr in ("harmonization_steps", "resample_level", "resample_passes"):
        if getattr(inferer, attr, None) is not None:
            value = getattr(inferer, attr)
            info[attr] = list(value) if isinstance(value, (tuple, list)) else value
    term = getattr(inferer, "perceptual", None)
    if isinstance(term, PerceptualTerm) and getattr(inferer, "perceptual_weighting", True):
        info["perceptual"] = term.description
    return info


def build_method(
    name: str,
    bundles_dir: str = "bundles",
    overrides: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    shared_overrides: Mapping[str, Any] | None = None,
    overlays: Sequence[str] = (),
) -> BuiltMethod:
    """Build method ``name`` from its bundle config with ``monai.bundle.ConfigParser``.

    The config's ``bundle_root`` (when present) is set to the folder read and ``device`` to ``device``; then come
    the ``overlays`` that fit the config, ``shared_overrides`` where the config has the id, then the variant's and
    ``overrides``, before ``checkpoint``, ``network`` and ``inferer`` are parsed.

    Args:
        name: a bundle folder name under ``bundles_dir`` or a key of :data:`METHOD_VARIANTS`.
        bundles_dir: folder holding the bundles.
        overrides: ``{config id: value}`` for this method; every id must exist (nested ids: their parent).
        device: device of the network; default CUDA when available, else CPU.
        shared_overrides: ``{config id: value}`` given to every method, applied only where the id exists.
        overlays: config files merged over the bundle's as ``monai.bundle run --config_file "[base, overlay]"``
            merges them (e.g. ``bundles/ddpm/inference_paper.json``); one applies only to a config that has every
            id it sets (ids starting with ``_`` aside), so the DDPM overlay leaves DISYRE alone.

    Returns:
        The built method.

    Raises:
        MethodUnavailable: the bundle config or the checkpoint file does not exist.
        ValueError: an override names an id the config lacks; the checkpoint is unsafe or does not match the network.
        TypeError: the config's inferer is not a :class:`~monai_diffad.inferers.DiffusionAnomalyInferer`.
    """
    config_file = method_config_file(name, bundles_dir)
    if not os.path.isfile(config_file):
        raise MethodUnavailable(f"no bundle yet: '{config_file}' does not exist")
    variant = METHOD_VARIANTS.get(name, (name, {}))[1]
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    parser = ConfigParser()
    parser.read_config(config_file)
    if "bundle_root" in parser:
        parser["bundle_root"] = os.path.abspath(os.path.dirname(config_file))
    parser["device"] = device
    applied = {}
    for overlay in overlays:
        settings = {k: v for k, v in ConfigParser.load_config_file(overlay).items() if not k.startswith("_")}
        if all(_has_target(parser, k) for k in settings):
            applied.update(settings)
    applied.update({k: v for k, v in (shared_overrides or {}).items() if _has_target(parser, k)})
    for key in {**variant, **(overrides or {})}:
        if not _has_target(parser, key):
            raise ValueError(f"override '{key}': '{config_file}' has no such config id.")
    applied.update({**variant, **(overrides or {})})
    for key, value in applied.items():
        parser[key] = value
    checkpoint = os.path.abspath(str(parser.get_parsed_content("checkpoint")))
    if not os.path.isfile(checkpoint):
        raise MethodUnavailable(f"no weights yet: checkpoint '{checkpoint}' does not exist")
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_state_dict_safely(checkpoint), strict=True)
    network.to(device).eval()
    inferer = parser.get_parsed_content("inferer")
    if not isinstance(inferer, DiffusionAnomalyInferer):
        raise TypeError(f"'{config_file}' inferer must be a DiffusionAnomalyInferer, got {type(inferer).__name__}.")
    image_size = parser.get_parsed_content("image_size") if "image_size" in parser else None
    return BuiltMethod(
        name=name,
        inferer=inferer,
        network=network,
        image_size=None if image_size is None else int(image_size),
        settings={
            "bundle": os.path.basename(os.path.dirname(config_file)),
            "config_file": config_file,
            "overrides": applied,
            "checkpoint": checkpoint,
            "checkpoint_sha256": _sha256(checkpoint),
        },
        config=parser,
    )
