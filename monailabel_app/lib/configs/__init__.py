# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""One MONAI Label ``TaskConfig`` per registered method (:mod:`monai_diffad.methods`), by ``--conf models`` name."""

from __future__ import annotations

import dataclasses

from lib.configs.base import AnomalyTaskConfig
from lib.infers.params import Option
from monai_diffad.methods import MethodSpec, get_available_methods, method_spec

__all__ = ["AnomalyTaskConfig", "task_config", "task_configs"]

#: the app's default model, listed first
DEFAULT_MODEL = "thor"


def task_config(spec: MethodSpec) -> type[AnomalyTaskConfig]:
    """The ``TaskConfig`` class of a registered method: its bundle, variant keys, options and ``--conf`` keys."""
    return type(
        f"{spec.name.title().replace('_', '')}Config",
        (AnomalyTaskConfig,),
        {
            "method": spec.name,
            "bundle": spec.bundle,
            "bundle_overrides": dict(spec.overrides),
            "method_options": tuple(Option(**dataclasses.asdict(o)) for o in spec.options),
            "summary": spec.summary,
            "checkpoint_key": f"{spec.conf_prefix}checkpoint",
            "network_key": f"{spec.conf_prefix}network",
        },
    )


def task_configs() -> dict[str, type[AnomalyTaskConfig]]:
    """``--conf models`` names and their ``TaskConfig`` classes, for every method registered now, in the order the
    models are listed (THOR first: the default)."""
    names = get_available_methods()
    ordered = ([DEFAULT_MODEL] if DEFAULT_MODEL in names else []) + [n for n in names if n != DEFAULT_MODEL]
    return {name: task_config(method_spec(name)) for name in ordered}
