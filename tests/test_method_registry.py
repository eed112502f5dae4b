# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Adding a method is one inferer, one bundle and one ``register_method`` call (CONTRIBUTING.md).

A toy method, registered the way a plugin would register it, must show up wherever methods are listed: the
registry, the benchmark, calibration (its threshold key) and the MONAI Label app.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_UNET, tiny_diffusion_unet
from test_evaluate import SIZE, synthetic_arrays

from monai_diffad.calibration import main as calibration_main
from monai_diffad.evaluate import run_evaluation
from monai_diffad.methods import (
    NOISE_LEVEL,
    MethodSpec,
    build_method,
    get_available_methods,
    method_spec,
    register_method,
    unregister_method,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = MethodSpec("toy", "Toy", "toy", "Toy: the DDPM baseline under another name.", options=(NOISE_LEVEL,))

torch.set_num_threads(1)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """``<tmp>/bundles/toy``: the DDPM bundle with a tiny network and its weights, registered as method ``toy``."""
    bundles = tmp_path / "bundles"
    shutil.copytree(os.path.join(REPO, "bundles", "ddpm"), bundles / "toy", ignore=shutil.ignore_patterns("models"))
    weights = bundles / "toy" / "model.pt"
    torch.save(tiny_diffusion_unet(0).state_dict(), weights)
    config_file = bundles / "toy" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update(
        {
            "bundle_root": str(bundles / "toy"), "checkpoint": str(weights), "image_size": SIZE, "noise_level": 3,
            "perceptual": "ssim", "network_def": {"_target_": "monai_diffad.networks.diffusion_unet", **TINY_UNET},
        }
    )  # fmt: skip
    config_file.write_text(json.dumps(config, indent=4))
    monkeypatch.setenv("MONAI_DIFFAD_BUNDLES", str(bundles))
    register_method(TOY)
    yield bundles
    unregister_method("toy")


def test_registry_lists_the_shipped_methods_once():
    names = get_available_methods()
    assert names == ["ddpm", "autoddpm", "thor", "anoddpm", "thor_simplex", "disyre"]
    for name in names:
        spec = method_spec(name)
        assert os.path.isfile(os.path.join(REPO, "bundles", spec.bundle, "inference.json"))
        config = json.loads(open(os.path.join(REPO, "bundles", spec.bundle, "inference.json")).read())
        assert spec.threshold_key in config and all(k in config for k in spec.overrides)
        assert all(o.target in config["inferer"] for o in spec.options), name
    with pytest.raises(ValueError, match="Unknown method 'nope'; available: ddpm"):
        method_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method(method_spec("thor"))


def test_a_registered_method_appears_in_evaluation_calibration_and_the_label_app(toy, tmp_path):
    assert "toy" in get_available_methods()
    assert type(build_method("toy", str(toy), device="cpu").inferer).__name__ == "DDPMAnomalyInferer"
    # the benchmark runs it and reports it under its label
    data = tmp_path / f"dev_{SIZE}.npz"
    np.savez(data, **synthetic_arrays())
    run_evaluation(["toy"], str(data), str(tmp_path / "out"), bundles_dir=str(toy), device="cpu", progress=False)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    (entry,) = report["methods"]
    assert entry["name"] == "toy" and entry["status"] == "ok" and entry["label"] == "Toy"
    assert entry["settings"]["noise_level"] == 3  # the settings its options name are reported
    # calibration stores its threshold under its threshold key, in its bundle
    results = str(tmp_path / "out" / "results.json")
    assert calibration_main(["--bundle", "toy", "--from-results", results, "--bundles_dir", str(toy), "--write"]) == 0
    stored = json.loads((toy / "toy" / "inference.json").read_text())[TOY.threshold_key]
    assert stored == round(entry["metrics"]["calibrated_threshold"], 4)
    # the MONAI Label app offers it, with its summary and its option
    pytest.importorskip("monailabel")
    sys.path.insert(0, os.path.join(REPO, "monailabel_app"))
    from lib.configs import task_configs

    config = task_configs()["toy"]()
    config.init("toy", "", {}, None, repo_root=REPO, map_dir=None)
    info = config.infer().info()
    assert TOY.summary in info["description"] and "noise_level" in info["config"]
