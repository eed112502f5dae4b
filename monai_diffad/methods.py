# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The methods this package offers: one registry, and building a method from its bundle.

Every method is one :class:`MethodSpec` in the registry: its name, the label tables show, the bundle that defines it
(``<bundles>/<bundle>/inference.json``: ``network``, ``checkpoint``, ``inferer`` and the geometry contract), the
bundle keys that make a variant of a shared bundle (``thor_simplex`` is the THOR bundle with
``noise_type="simplex"``), the config key of its label threshold and its per-request options. Evaluation,
calibration, the MONAI Label app and the tests all iterate :func:`get_available_methods`, so adding a method is one
inferer file, one bundle and one :func:`register_method` call (``CONTRIBUTING.md``).

A method is only ever built from its bundle (:func:`build_method`). Weights are read like the bundle's
``CheckpointLoader`` does (a state dict, possibly wrapped under ``model``/``state_dict``/``network``, loaded strictly)
but only through :func:`~monai_diffad.networks.load_state_dict_safely`, which never unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_diffad.inferers import DiffusionAnomalyInferer
from monai_diffad.inferers.perceptual_term import PerceptualTerm
from monai_diffad.networks import load_matching_state_dict, load_state_dict_safely

__all__ = [
    "HARMONIZATION_STEPS",
    "NOISE_LEVEL",
    "MethodOption",
    "MethodSpec",
    "register_method",
    "unregister_method",
    "get_available_methods",
    "method_spec",
    "method_label",
    "MethodUnavailable",
    "BuiltMethod",
    "build_method",
    "method_config_file",
    "parse_overrides",
    "describe_inferer",
]


@dataclass(frozen=True)
class MethodOption:
    """A setting of a method that a user may change per run (the MONAI Label panel, request parameters).

    Args:
        name: the request parameter.
        kind: ``"int"``, ``"float"``, ``"optional_float"`` (``None``/empty allowed), ``"int_list"`` (a list or a
            comma-separated string, e.g. ``"300,150,50"``), ``"bool"`` or ``"choice"``.
        default: the value when not set; ``None`` takes the bundle's (the inferer's) value.
        help: one line for users.
        low, high: inclusive bounds of numbers (and of every list item).
        target: the keyword of the bundle's ``inferer`` that receives the value.
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    target: str | None = None


#: the partial-noising level L of the DDPM-based methods
NOISE_LEVEL = MethodOption(
    "noise_level", "int", None,
    "Diffusion steps: the image is noised to this level and restored (about one network call per level).",
    1, 999, target="noise_level",
)  # fmt: skip
#: THOR's harmonization steps
HARMONIZATION_STEPS = MethodOption(
    "harmonization_steps", "int_list", None,
    "Steps at which THOR blends the restoration with the input, each <= noise_level, e.g. '300,150,50'; "
    "empty for none.",
    0, 999, target="harmonization_steps",
)  # fmt: skip


@dataclass(frozen=True)
class MethodSpec:
    """One method of the registry.

    Args:
        name: the method's name everywhere (``--methods``, ``--bundle``, MONAI Label ``--conf models``).
        label: its name in tables and figures.
        bundle: the bundle folder that defines it.
        summary: one line for users (shown in 3D Slicer).
        overrides: bundle keys that make this variant of a shared bundle.
        threshold_key: the bundle key of its calibrated label threshold.
        options: its per-request settings beyond the common ones (threshold, seed, ...).
        conf_prefix: prefix of the MONAI Label ``--conf`` keys that replace its weights and network
            (``"<prefix>checkpoint"``, ``"<prefix>network"``): methods sharing a network share a prefix.
    """

    name: str
    label: str
    bundle: str
    summary: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    threshold_key: str = "threshold"
    options: tuple[MethodOption, ...] = ()
    conf_prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (after those already there) and return it.

    Raises:
        ValueError: a method of that name is already registered.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"A method named '{spec.name}' is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (e.g. a plugin's, in its tests)."""
    method_spec(name)
    del _REGISTRY[name]


def get_available_methods() -> list[str]:
    """Names of the registered methods, in table order (the papers' comparison: Gaussian, Simplex, DISYRE)."""
    return list(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: an unknown method (the message lists the available ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown method '{name}'; available: {', '.join(_REGISTRY)}.") from None


for _spec in (
    MethodSpec("ddpm", "DDPM", "ddpm", "DDPM: noise the image partially, restore it, map the residual.",
               options=(NOISE_LEVEL,)),
    MethodSpec(
        "autoddpm", "AutoDDPM", "autoddpm",
        "AutoDDPM: reconstruction, automatic masking, stitching and re-sampling of the suspicious region.",
        options=(
            NOISE_LEVEL,
            MethodOption("resample_level", "int", None, "Level the masked region is re-sampled from.", 1, 999,
                         target="resample_level"),
            MethodOption("resample_passes", "int", None, "Re-sampling passes (RePaint-style jumps).", 1, 100,
                         target="resample_passes"),
        ),
    ),
    MethodSpec("thor", "THOR", "thor",
               "THOR (Gaussian noise): diffusion restoration harmonized with the input; map of what was restored.",
               options=(NOISE_LEVEL, HARMONIZATION_STEPS)),
    MethodSpec("anoddpm", "AnoDDPM", "anoddpm",
               "AnoDDPM: Simplex-noise partial diffusion, restore, map the squared residual.", options=(NOISE_LEVEL,)),
    # the THOR bundle's own switch: the Simplex-trained weights, the Simplex defaults of the inferer (L = 250,
    # H = 200/150/100/50) and the separately calibrated threshold_simplex
    MethodSpec("thor_simplex", "THOR", "thor",
               "THOR (Simplex noise): diffusion restoration harmonized with the input; map of what was restored.",
               overrides={"noise_type": "simplex"}, threshold_key="threshold_simplex",
               options=(NOISE_LEVEL, HARMONIZATION_STEPS)),
    MethodSpec(
        "disyre", "DISYRE", "disyre",
        "DISYRE: step-wise restoration of the image as if it were synthetically corrupted; map of the changes.",
        options=(MethodOption("step_size", "int", None,
                              "Restoration step s: the network is called at T, T - s, ... > 0.", 1, 1000,
                              target="step_size"),),
        conf_prefix="disyre_",
    ),
):  # fmt: skip
    register_method(_spec)


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
    """Path of the ``inference.json`` that defines method ``name`` (whether it exists or not).

    Raises:
        ValueError: an unknown method.
    """
    return os.path.join(bundles_dir, method_spec(name).bundle, "inference.json")


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


def method_label(name: str) -> str:
    """The table label of method ``name`` (the name itself for an unregistered one)."""
    return _REGISTRY[name].label if name in _REGISTRY else name


def describe_inferer(inferer: DiffusionAnomalyInferer, name: str | None = None) -> dict[str, Any]:
    """The inferer's class, noise, method settings and perceptual term as used, for reports.

    ``noise`` is ``"gaussian"``/``"simplex"`` for the partial-noising methods and ``"none"`` for an inferer without
    noise (DISYRE restores synthetic corruptions). The settings reported are the targets of the registered method's
    options (:attr:`MethodSpec.options`).
    """
    info: dict[str, Any] = {"inferer": type(inferer).__name__, "noise": getattr(inferer, "noise_type", None) or "none"}
    targets = [o.target for o in method_spec(name).options if o.target] if name in _REGISTRY else []
    for attr in targets:
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
        name: a registered method (:func:`get_available_methods`).
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
        ValueError: an unknown method.
        ValueError: an override names an id the config lacks; the checkpoint is unsafe or does not match the network.
        TypeError: the config's inferer is not a :class:`~monai_diffad.inferers.DiffusionAnomalyInferer`.
    """
    config_file = method_config_file(name, bundles_dir)
    if not os.path.isfile(config_file):
        raise MethodUnavailable(f"no bundle yet: '{config_file}' does not exist")
    variant = dict(method_spec(name).overrides)
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
    load_matching_state_dict(network, load_state_dict_safely(checkpoint), checkpoint)
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
