# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label task configs pick the weights and the calibrated threshold of their noise type."""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("monailabel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "monailabel_app"))


from lib.configs import task_configs  # noqa: E402
from monai_diffad import THORInferer  # noqa: E402
from monai_diffad.networks import ddpm_scheduler  # noqa: E402


def _config(cls):
    config = cls()
    config.init(cls.method, "", {}, None, repo_root=REPO)
    return config


def _threshold(config, noise_type):
    options, source = config._options(THORInferer(ddpm_scheduler(), noise_type=noise_type))
    return next(o.default for o in options if o.name == "threshold"), source, options


def test_simplex_variants_use_the_simplex_weights():
    assert _config(task_configs()["thor"]).checkpoint.endswith(os.path.join("models", "model.pt"))
    assert _config(task_configs()["thor_simplex"]).checkpoint.endswith("model_simplex.pt")
    assert _config(task_configs()["anoddpm"]).checkpoint.endswith("model_simplex.pt")


def test_thor_simplex_reads_only_its_own_threshold_from_the_thor_bundle():
    with open(os.path.join(REPO, "bundles", "thor", "inference.json")) as f:
        bundle = json.load(f)
    threshold, source, options = _threshold(_config(task_configs()["thor_simplex"]), "simplex")
    assert threshold == pytest.approx(bundle["threshold_simplex"]) and source.endswith("inference.json")
    # the Gaussian variant's noise level must not leak into the Simplex variant (L = 250 by default)
    assert next(o.default for o in options if o.name == "noise_level") == 250
    assert _threshold(_config(task_configs()["thor"]), "gaussian")[0] == pytest.approx(bundle["threshold"])
