# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label task configs pick the weights and the calibrated label and image thresholds of their noise type."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

pytest.importorskip("monailabel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "monailabel_app"))


from lib.configs import task_configs  # noqa: E402
from monai_diffad import THORInferer  # noqa: E402
from monai_diffad.methods import method_spec  # noqa: E402
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


def test_each_variant_reads_its_own_image_threshold(tmp_path, monkeypatch):
    # the shipped bundles: each task's image key exists (null until calibrated, then the pixel rule decides)
    for name, cls in task_configs().items():
        config = _config(cls)
        key = config.image_threshold_key()
        assert key == "image_" + method_spec(name).threshold_key
        with open(os.path.join(REPO, "bundles", method_spec(name).bundle, "inference.json")) as f:
            assert key in json.load(f), name
    assert _config(task_configs()["thor_simplex"]).image_threshold_key() == "image_threshold_simplex"

    # a copy of the THOR bundle with both calibrated: each variant reads its own value, null is none
    bundles = tmp_path / "bundles"
    shutil.copytree(os.path.join(REPO, "bundles", "thor"), bundles / "thor")
    config_file = bundles / "thor" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update({"image_threshold": 0.375, "image_threshold_simplex": 0.25})
    config_file.write_text(json.dumps(config, indent=1))
    monkeypatch.setenv("MONAI_DIFFAD_BUNDLES", str(bundles))
    assert _config(task_configs()["thor"]).image_threshold() == 0.375
    assert _config(task_configs()["thor_simplex"]).image_threshold() == 0.25
    config_file.write_text(json.dumps({**config, "image_threshold_simplex": None}, indent=1))
    assert _config(task_configs()["thor_simplex"]).image_threshold() is None
    assert _config(task_configs()["thor"]).image_threshold() == 0.375
    config_file.write_text(json.dumps({**config, "image_threshold": "high"}, indent=1))
    with pytest.raises(ValueError, match="must be a number or null"):
        _config(task_configs()["thor"]).image_threshold()


def test_image_decision_uses_the_image_threshold_else_the_pixel_rule():
    import torch

    from lib.infers.anomaly import TASK_OPTIONS, AnomalyInferTask

    def task(image_threshold):
        return AnomalyInferTask(
            "thor", lambda **kw: None, "missing.pt", lambda path: None, TASK_OPTIONS, lambda: [],
            calibration_threshold=0.5, image_threshold=image_threshold,
        )

    amap = torch.zeros(1, 10, 10)
    amap[0, :2] = 0.9  # 20 % of the brain at or above the pixel threshold
    brain = torch.ones(1, 10, 10)
    calibrated = task(0.3)
    assert calibrated.image_decision(amap, brain, 0.3)["pred_label"] == 1  # score >= threshold
    decision = calibrated.image_decision(amap, brain, 0.29)
    assert decision["pred_label"] == 0 and "image threshold 0.3" in decision["pred_label_rule"]
    decision = task(None).image_decision(amap, brain, 0.0)
    assert decision["pred_label"] == 1 and "pixel rule" in decision["pred_label_rule"]
