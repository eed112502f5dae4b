# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Bundles: metadata verifies offline, configs parse in a user's script, and the user's command writes results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFERENCE_BUNDLES = ["thor", "ddpm", "anoddpm", "autoddpm", "disyre"]
DEMO_WEIGHTS = os.path.join(ROOT, "bundles", "ddpm", "models", "model.pt")
with open(os.path.join(ROOT, "bundles", "thor", "inference.json")) as _f:
    THOR_THRESHOLD = float(json.load(_f)["threshold"])
PAPER_OVERLAY = "bundles/ddpm/inference_paper.json"


@pytest.mark.parametrize("name", INFERENCE_BUNDLES)
def test_metadata_verifies_offline(name):
    from monai.bundle import verify_metadata

    verify_metadata(
        meta_file=os.path.join(ROOT, "bundles", name, "metadata.json"),
        filepath=os.path.join(ROOT, "bundles", "meta_schema.json"),
    )
    for required in ("LICENSE", "inference.json", "evaluate.json", os.path.join("docs", "README.md")):
        assert os.path.isfile(os.path.join(ROOT, "bundles", name, required)), required


@pytest.mark.parametrize("name", INFERENCE_BUNDLES)
def test_bundle_run_finds_its_logging_conf(name, monkeypatch):
    """``monai.bundle run`` applies the ``logging.conf`` next to the config (no missing-file warning); copies match."""
    import logging.config

    from monai.bundle import ConfigWorkflow, workflows

    monkeypatch.chdir(ROOT)
    applied = []
    monkeypatch.setattr(workflows, "_apply_logging_file", applied.append)  # keep the test process's logging as is
    for config in ("inference.json", "evaluate.json"):
        ConfigWorkflow(config_file=os.path.join("bundles", name, config), workflow_type=None)
    path = os.path.join("bundles", name, "logging.conf")
    assert applied == [path, path]
    with open(path) as f, open(os.path.join("bundles", "thor", "logging.conf")) as ref:
        assert f.read() == ref.read()
    workflows._reject_executable_logging_config(path)  # what MONAI checks before fileConfig
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        logging.config.fileConfig(path, disable_existing_loggers=False)
        assert root.level == logging.INFO
        assert [type(h) for h in root.handlers] == [logging.StreamHandler] and root.handlers[0].stream is sys.stderr
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


@pytest.mark.parametrize("name", INFERENCE_BUNDLES)
def test_bundle_parses_in_a_users_script(name, monkeypatch):
    """The README's "reuse in your own pipeline" example, line for line."""
    monkeypatch.chdir(ROOT)
    from monai.bundle import ConfigParser

    import monai_diffad

    parser = ConfigParser()
    parser.read_config(f"bundles/{name}/inference.json")
    parser["noise_level"] = 4
    if name == "thor":
        parser["harmonization_steps"] = [2]
    if name == "autoddpm":
        parser["resample_level"], parser["resample_passes"] = 2, 1
    inferer = parser.get_parsed_content("inferer")
    network = parser.get_parsed_content("network_def")  # random weights: the plumbing is what is tested here
    assert isinstance(inferer, monai_diffad.DiffusionAnomalyInferer)
    out = inferer.detect(torch.rand(2, 1, 64, 64), network, generator=torch.Generator().manual_seed(0))
    assert out.anomaly_map.shape == (2, 1, 64, 64)


def test_bundle_root_resolves_from_elsewhere(tmp_path, monkeypatch):
    from monai_diffad.bundles import bundle_root

    monkeypatch.chdir(tmp_path)
    assert bundle_root("thor") == os.path.join(ROOT, "bundles", "thor")
    with pytest.raises(FileNotFoundError, match="not found"):
        bundle_root("no_such_method")


def _write_inputs(folder: str) -> None:
    """A 2D slice of odd size and a small 3D volume, both from the shipped demo data's geometry conventions."""
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:90j, -1:1:75j]
    brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.float32)
    slice2d = brain * (0.6 + 0.1 * rng.random(brain.shape, dtype=np.float32))
    nib.save(nib.Nifti1Image(slice2d * 900.0, np.diag([1.2, 1.1, 1.0, 1.0])), os.path.join(folder, "a2d.nii.gz"))
    vol = np.stack([slice2d] * 3, axis=-1)
    nib.save(nib.Nifti1Image(vol, np.diag([1.2, 1.1, 2.0, 1.0])), os.path.join(folder, "b3d.nii.gz"))
    # the same slice through the ITK reader (NRRD), as a user with a non-NIfTI scan would run it
    import itk

    nrrd = itk.image_from_array(np.ascontiguousarray(slice2d.T * 900.0))  # ITK arrays are [y, x]
    nrrd.SetSpacing([1.2, 1.1])
    itk.imwrite(nrrd, os.path.join(folder, "c2d.nrrd"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(DEMO_WEIGHTS), reason="demo weights not built yet")
def test_thor_bundle_command_writes_results(tmp_path):
    data, out = str(tmp_path / "in"), str(tmp_path / "out")
    _write_inputs(data)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/thor/inference.json",
        "--dataset_dir", data, "--output_dir", out, "--noise_level", "6", "--harmonization_steps", "[4, 2]",
        "--record_interval", "2", "--perceptual", "ssim",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "results written to" in proc.stdout + proc.stderr  # logged by the bundle's logging.conf
    for name, shape, zooms in (("a2d", (90, 75), (1.2, 1.1)), ("b3d", (90, 75, 3), (1.2, 1.1, 2.0)), ("c2d", (90, 75), (1.2, 1.1))):
        for postfix in ("anomaly_map", "pseudo_healthy", "anomaly_label"):
            img = nib.load(os.path.join(out, f"{name}_{postfix}.nii.gz"))
            assert img.shape == shape, (name, postfix, img.shape)
            assert np.allclose(img.header.get_zooms()[: len(zooms)], zooms)
        label = np.asarray(nib.load(os.path.join(out, f"{name}_anomaly_label.nii.gz")).dataobj)
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2}
        amap = np.asarray(nib.load(os.path.join(out, f"{name}_anomaly_map.nii.gz")).dataobj)
        assert 0.0 <= amap.min() and amap.max() <= 1.0
        # the label is the saved map against the bundle's stored threshold, on the input's grid
        np.testing.assert_array_equal(label > 0, amap >= np.float32(THOR_THRESHOLD))
        assert amap.max() >= THOR_THRESHOLD, "no labelled voxel: the comparison above would be vacuous"
        assert os.path.getsize(os.path.join(out, f"{name}_overlay.png")) > 1000
    scores = json.load(open(os.path.join(out, "scores.json")))
    assert [s["image"] for s in scores] == ["a2d", "b3d", "c2d"] and all(0 <= s["score"] <= 1 for s in scores)


def test_missing_weights_error_names_the_file(tmp_path):
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/thor/inference.json",
        "--checkpoint", str(tmp_path / "nope.pt"), "--output_dir", str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Checkpoint not found" in proc.stderr and "nope.pt" in proc.stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_weights_of_another_network_size_error_names_the_file(tmp_path):
    """128x128 demo weights given to the 64x64 THOR bundle: a ValueError naming the file, before any image is read."""
    from monai_diffad.networks import DEMO_UNET_128, diffusion_unet

    weights = tmp_path / "demo128.pt"
    torch.save(diffusion_unet(**DEMO_UNET_128).state_dict(), weights)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/thor/inference.json",
        "--checkpoint", str(weights), "--output_dir", str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"ValueError: Checkpoint '{weights}' does not match the network architecture" in proc.stderr
    assert "THORInferer" not in proc.stderr  # failed at initialize, not inside the evaluator


@pytest.mark.skipif(not os.path.isfile(DEMO_WEIGHTS), reason="demo weights not built yet")
def test_documented_reuse_example(monkeypatch):
    """bundles/thor/docs/README.md § Reuse, executed as written (with a shorter schedule)."""
    monkeypatch.chdir(ROOT)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config("bundles/thor/inference.json")
    parser["device"] = "cpu"
    parser["noise_level"], parser["harmonization_steps"] = 6, [3]
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(parser.get_parsed_content("checkpoint"), weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    out = inferer.detect(torch.rand(2, 1, 64, 64), network)
    assert out.anomaly_map.shape == (2, 1, 64, 64) and out.score.shape == (2,)


@pytest.mark.parametrize("network_size, parameters", [("paper", 18.04e6), ("demo128", 1.508e6)])
@pytest.mark.parametrize("name", ["thor", "ddpm", "anoddpm", "autoddpm"])
def test_network_overlay_builds_the_network_its_train_overlay_trains(name, network_size, parameters, monkeypatch):
    """inference_<size>.json over a DDPM bundle: its train overlay's network and resolution, its weights file."""
    monkeypatch.chdir(ROOT)
    from monai.bundle import ConfigParser

    from monai_diffad.networks import DDPM_NETWORKS

    spec = DDPM_NETWORKS[network_size]
    overlay = spec.train_configs[-1].replace("train_", "inference_")
    inference = ConfigParser(ConfigParser.load_config_files([f"bundles/{name}/inference.json", overlay]))
    train = ConfigParser(ConfigParser.load_config_files(list(spec.train_configs)))
    assert inference.get("network_size") == network_size
    assert inference.get("network_def") == train.get("network_def")
    assert {k: inference.get("network_def")[k] for k in spec.architecture} == dict(spec.architecture)
    assert inference.get("image_size") == train.get("resolution") == spec.resolution == 128
    assert train.get_parsed_content("shipped_model_file").endswith(f"{spec.weights_stem}.pt")
    network = inference.get_parsed_content("network_def")
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(parameters, rel=1e-3)
    stem = spec.weights_stem
    checkpoint = inference.get_parsed_content("checkpoint")
    # no Simplex-trained network of this size: AnoDDPM falls back to the Gaussian weights (with a warning)
    expected = {f"{stem}_simplex.pt", f"{stem}.pt"} if name == "anoddpm" else {f"{stem}.pt"}
    assert os.path.basename(checkpoint) in expected
    assert os.path.dirname(checkpoint) == os.path.join(ROOT, "bundles", "ddpm", "models")


def test_paper_overlay_applies_where_it_fits(monkeypatch):
    """build_method with the overlay: the DDPM bundles ask for the (unshipped) paper weights; DISYRE is untouched."""
    monkeypatch.chdir(ROOT)
    from monai_diffad.methods import MethodUnavailable, build_method

    if not os.path.isfile(os.path.join(ROOT, "bundles", "ddpm", "models", "model_paper.pt")):
        with pytest.raises(MethodUnavailable, match="model_paper.pt"):
            build_method("thor", "bundles", device="cpu", overlays=[PAPER_OVERLAY])
    disyre = build_method("disyre", "bundles", device="cpu", overlays=[PAPER_OVERLAY])
    assert disyre.image_size == 64 and disyre.settings["overrides"] == {}


def test_demo128_overlay_runs_thor_at_128(tmp_path, monkeypatch):
    """THOR through inference_128.json: without weights it names model_128.pt and the command that trains them;
    with (seeded) 128x128 demo weights it detects on 128x128 slices, and the 64x64 weights are refused."""
    monkeypatch.chdir(ROOT)
    from conftest import nonzero_init_

    from monai_diffad.methods import MethodUnavailable, build_method
    from monai_diffad.networks import DEMO_UNET_128, diffusion_unet

    overlay = "bundles/ddpm/inference_128.json"
    if not os.path.isfile(os.path.join(ROOT, "bundles", "ddpm", "models", "model_128.pt")):
        with pytest.raises(MethodUnavailable, match="model_128.pt"):
            build_method("thor", "bundles", device="cpu", overlays=[overlay])
    weights = tmp_path / "demo128.pt"
    torch.save(nonzero_init_(diffusion_unet(**DEMO_UNET_128), seed=3).state_dict(), weights)
    steps = {"noise_level": 6, "harmonization_steps": [4], "record_interval": 2}
    thor = build_method("thor", "bundles", {"checkpoint": str(weights), **steps}, device="cpu", overlays=[overlay])
    assert thor.image_size == 128 and thor.settings["checkpoint"] == str(weights)
    out = thor.inferer.detect(torch.rand(2, 1, 128, 128), thor.network)
    assert out.anomaly_map.shape == (2, 1, 128, 128) and torch.isfinite(out.anomaly_map).all()
    assert out.anomaly_map.std() > 0  # seeded weights: the map is not the constant an all-zero network gives
    if os.path.isfile(DEMO_WEIGHTS):
        with pytest.raises(ValueError, match="does not match the network architecture"):
            build_method("thor", "bundles", {"checkpoint": DEMO_WEIGHTS}, device="cpu", overlays=[overlay])


def test_shared_ddpm_checkpoint_names(tmp_path):
    from monai_diffad.bundles import shared_ddpm_checkpoint

    models = tmp_path / "bundles" / "ddpm" / "models"
    models.mkdir(parents=True)
    assert shared_ddpm_checkpoint(str(tmp_path)) == str(models / "model.pt")
    assert shared_ddpm_checkpoint(str(tmp_path), "gaussian", "paper") == str(models / "model_paper.pt")
    assert shared_ddpm_checkpoint(str(tmp_path), "simplex", "paper") == str(models / "model_paper.pt")  # fallback
    (models / "model_paper_simplex.pt").touch()
    assert shared_ddpm_checkpoint(str(tmp_path), "simplex", "paper") == str(models / "model_paper_simplex.pt")
    with pytest.raises(ValueError, match="network"):
        shared_ddpm_checkpoint(str(tmp_path), "gaussian", "large")
    from monai_diffad.networks import load_state_dict_safely

    with pytest.raises(FileNotFoundError, match="model_paper.pt'. Train one .*train.json','bundles/ddpm/train_paper.json"):
        load_state_dict_safely(shared_ddpm_checkpoint(str(tmp_path), "gaussian", "paper"))
    assert shared_ddpm_checkpoint(str(tmp_path), "gaussian", "demo128") == str(models / "model_128.pt")
    with pytest.raises(FileNotFoundError, match="model_128_simplex.pt'. Train one .*train.json','bundles/ddpm/train_128.json"):
        load_state_dict_safely(str(models / "model_128_simplex.pt"))
    with pytest.raises(FileNotFoundError, match=r"nope.pt'. Train one .*config_file \"bundles/ddpm/train.json\""):
        load_state_dict_safely(str(models / "nope.pt"))
