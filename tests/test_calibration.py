# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Threshold calibration at a healthy-pixel false-positive rate."""

from __future__ import annotations

import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_UNET, tiny_diffusion_unet

from monai_diffad.calibration import write_threshold
from monai_diffad.metrics import healthy_fpr_threshold

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _oracle(maps: np.ndarray, masks: np.ndarray, fpr: float) -> float:
    for k in range(1000):
        th = k / 1000
        shares = [(m[b > 0] > th).mean() for m, b in zip(maps, masks)]
        if np.mean(shares) <= fpr:
            return th
    return 0.999


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_threshold_matches_loop_oracle(fpr):
    rng = np.random.default_rng(0)
    maps = rng.beta(2, 8, size=(5, 1, 16, 16)).astype(np.float32)
    masks = (rng.random((5, 1, 16, 16)) > 0.3).astype(np.uint8)
    th = healthy_fpr_threshold(torch.from_numpy(maps), torch.from_numpy(masks), fpr)
    assert th == pytest.approx(_oracle(maps, masks, fpr))
    flagged = np.mean([(m[b > 0] > th).mean() for m, b in zip(maps, masks)])
    assert flagged <= fpr


def test_pixels_outside_the_mask_are_ignored():
    maps = torch.zeros(1, 1, 4, 4)
    maps[..., 0, 0] = 1.0  # a hot pixel outside the foreground
    masks = torch.ones(1, 1, 4, 4)
    masks[..., 0, 0] = 0
    # every foreground pixel is 0: labels (map >= t) are empty from the first grid threshold above 0
    assert healthy_fpr_threshold(maps, masks, 0.01) == 0.001
    assert healthy_fpr_threshold(maps, None, 0.01) > 0.99


def test_bad_arguments():
    with pytest.raises(ValueError, match="fpr"):
        healthy_fpr_threshold(torch.zeros(1, 1, 2, 2), fpr=0.0)
    with pytest.raises(ValueError, match="empty"):
        healthy_fpr_threshold(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_write_threshold_edits_config_and_metadata(tmp_path):
    (tmp_path / "inference.json").write_text('{\n    "seed": 0,\n    "threshold": 0.5,\n    "x": [1, 2]\n}\n')
    (tmp_path / "metadata.json").write_text('{"version": "0.1.0"}')
    write_threshold(str(tmp_path), {"threshold": 0.123456, "fpr": 0.05, "num_images": 7, "data": "/d/dev_64.npz"})
    text = (tmp_path / "inference.json").read_text()
    assert '"threshold": 0.1235,' in text and '"x": [1, 2]' in text
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["threshold"] == 0.1235 and "5%" in meta["threshold_calibration"]


def test_write_threshold_of_a_variant_key(tmp_path):
    (tmp_path / "inference.json").write_text('{\n    "threshold": 0.5,\n    "threshold_simplex": 0.4,\n    "y": 1\n}\n')
    (tmp_path / "metadata.json").write_text('{"version": "0.1.0"}')
    result = {"threshold": 0.25, "fpr": 0.05, "num_images": 3, "data": "dev_64.npz"}
    write_threshold(str(tmp_path), result, key="threshold_simplex")
    config = json.loads((tmp_path / "inference.json").read_text())
    assert config == {"threshold": 0.5, "threshold_simplex": 0.25, "y": 1}
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["threshold_simplex"] == 0.25 and "threshold" not in meta
    with pytest.raises(ValueError, match="threshold_gaussian"):
        write_threshold(str(tmp_path), result, key="threshold_gaussian")


def test_thor_bundle_uses_the_threshold_of_its_noise_type():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", "thor", "inference.json"))
    gaussian = parser.get_parsed_content("active_threshold")
    assert gaussian == parser["threshold"]
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", "thor", "inference.json"))
    parser["noise_type"] = "simplex"
    assert parser.get_parsed_content("active_threshold") == parser["threshold_simplex"] != gaussian
    assert parser.get_parsed_content("checkpoint").endswith("model_simplex.pt")


def test_flagged_share_curve_matches_a_threshold_by_threshold_count():
    from monai_diffad.metrics import flagged_share_curve

    rng = np.random.default_rng(3)
    maps = rng.random((3, 1, 8, 8)).astype(np.float32)
    maps[0, 0, :2] = np.arange(16).reshape(2, 8) / 10  # values exactly on the grid are labelled there (>=)
    maps = np.clip(maps, 0, 1)
    masks = rng.random((3, 1, 8, 8)) > 0.3
    shares = flagged_share_curve(maps, masks, num_thresholds=10)
    flat, valid = torch.from_numpy(maps).flatten(1), torch.from_numpy(masks).flatten(1)
    expected = torch.stack([((flat >= np.float32(k / 10)) & valid).sum(1) / valid.sum(1) for k in range(10)], 1)
    torch.testing.assert_close(shares, expected.double())


def test_threshold_metric_accumulates_batches_like_one_call():
    from monai_diffad.metrics import HealthyFPRThresholdMetric

    rng = np.random.default_rng(4)
    maps = torch.from_numpy(rng.random((7, 1, 6, 6)).astype(np.float32) ** 3)
    masks = torch.from_numpy(rng.random((7, 1, 6, 6)) > 0.2)
    metric = HealthyFPRThresholdMetric(fpr=0.1)
    assert np.isnan(metric.aggregate())
    metric(maps[:3], masks[:3])
    metric(maps[3:], masks[3:])
    assert metric.aggregate() == healthy_fpr_threshold(maps, masks, 0.1)
    with pytest.raises(ValueError, match="fpr"):
        HealthyFPRThresholdMetric(fpr=1.0)


# ------------------------------------------------------------------------------------- image threshold


def _bundle_files(folder, config_text: str) -> None:
    (folder / "inference.json").write_text(config_text)
    (folder / "metadata.json").write_text('{"version": "0.1.0"}')


def test_write_threshold_stores_the_image_threshold_rounded_up(tmp_path):
    text = (
        '{\n    "threshold": 0.5,\n    "_note_image_threshold": "image-level threshold",\n'
        '    "image_threshold": null,\n    "y": 1\n}\n'
    )
    _bundle_files(tmp_path, text)
    result = {
        "threshold": 0.25, "image_threshold": 0.1234561, "image_score": "mean of the top 1 % of the map",
        "fpr": 0.05, "num_images": 40, "data": "/d/dev_64.npz",
    }
    assert write_threshold(str(tmp_path), result) == {"threshold": 0.25, "image_threshold": 0.123457}
    config = json.loads((tmp_path / "inference.json").read_text())
    # rounded up: the stored value is never below the measured one, so the calibration images still meet the fpr
    assert config == {"threshold": 0.25, "_note_image_threshold": "image-level threshold", "image_threshold": 0.123457,
                      "y": 1}
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["image_threshold"] == 0.123457 and meta["threshold"] == 0.25
    record = meta["image_threshold_calibration"]
    assert "5%" in record and "40 lesion-free images of dev_64.npz" in record and "top 1 %" in record
    # a value exactly on the 6-decimal grid stays as it is
    assert write_threshold(str(tmp_path), {**result, "image_threshold": 0.5})["image_threshold"] == 0.5


def test_write_threshold_without_an_image_threshold_or_key(tmp_path):
    text = '{\n    "threshold": 0.5,\n    "image_threshold": null\n}\n'
    _bundle_files(tmp_path, text)
    result = {"threshold": 0.25, "fpr": 0.05, "num_images": 3, "data": "dev_64.npz"}
    # a result without one (a benchmark report from before it was recorded) writes the label threshold only
    for image_threshold in (None, float("nan")):
        assert write_threshold(str(tmp_path), {**result, "image_threshold": image_threshold}) == {"threshold": 0.25}
    assert json.loads((tmp_path / "inference.json").read_text()) == {"threshold": 0.25, "image_threshold": None}
    assert "image_threshold" not in json.loads((tmp_path / "metadata.json").read_text())
    # a bundle without the key: nothing is written, not even the label threshold
    _bundle_files(tmp_path, '{\n    "threshold": 0.5\n}\n')
    with pytest.raises(ValueError, match='"image_threshold"'):
        write_threshold(str(tmp_path), {**result, "image_threshold": 0.3})
    assert json.loads((tmp_path / "inference.json").read_text()) == {"threshold": 0.5}


@pytest.fixture
def thor_bundle_copy(tmp_path):
    """``<tmp>/bundles`` with a copy of the shipped THOR bundle and the shared DDPM weights it reads."""
    bundles = tmp_path / "bundles"
    shutil.copytree(os.path.join(REPO, "bundles", "thor"), bundles / "thor")
    (bundles / "ddpm" / "models").mkdir(parents=True)
    for name in ("model.pt", "model_simplex.pt"):
        shutil.copyfile(os.path.join(REPO, "bundles", "ddpm", "models", name), bundles / "ddpm" / "models" / name)
    return bundles


def _results_json(path, method: str, sha256: str, metrics: dict) -> str:
    report = {
        "metadata": {"data": {"source": "data_cache/dev_64.npz", "image_shape": [64, 64],
                              "items_per_stratum": {"none": 50, "small": 10}}},
        "methods": [{"name": method, "status": "ok", "metrics": {"calibration_fpr": 0.05, **metrics},
                     "settings": {"checkpoint_sha256": sha256}}],
    }
    path.write_text(json.dumps(report))
    return str(path)


def _changed_lines(before: str, after: str) -> dict[str, str]:
    """``{old line: new line}`` of two texts with the same number of lines."""
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new)
    return {a.strip().rstrip(","): b.strip().rstrip(",") for a, b in zip(old, new) if a != b}


def test_from_results_round_trip_writes_the_variant_keys(thor_bundle_copy, tmp_path, capsys):
    import hashlib

    from monai_diffad.calibration import main, threshold_from_results

    bundles = thor_bundle_copy
    config_file = bundles / "thor" / "inference.json"
    shipped = config_file.read_text()
    shipped_image_threshold = json.loads(shipped)["image_threshold"]
    sha = hashlib.sha256((bundles / "ddpm" / "models" / "model_simplex.pt").read_bytes()).hexdigest()
    results = _results_json(
        tmp_path / "results.json", "thor_simplex", sha, {"calibrated_threshold": 0.123, "image_threshold": 0.2345678}
    )
    result = threshold_from_results(results, "thor_simplex", str(bundles))
    assert result["threshold"] == 0.123 and result["image_threshold"] == 0.2345678 and result["num_images"] == 50
    assert main(["--bundle", "thor_simplex", "--from-results", results, "--bundles_dir", str(bundles), "--write"]) == 0
    out = capsys.readouterr().out
    assert "threshold_simplex = 0.123" in out and "image_threshold_simplex = 0.234568" in out
    # one line each, the Gaussian variant's keys and the rest of the hand-written layout untouched
    assert _changed_lines(shipped, config_file.read_text()) == {
        next(line.strip().rstrip(",") for line in shipped.splitlines() if '"threshold_simplex"' in line):
            '"threshold_simplex": 0.1230',
        next(line.strip().rstrip(",") for line in shipped.splitlines() if '"image_threshold_simplex"' in line):
            '"image_threshold_simplex": 0.234568',
    }
    meta = json.loads((bundles / "thor" / "metadata.json").read_text())
    assert meta["threshold_simplex"] == 0.123 and meta["image_threshold_simplex"] == 0.234568
    record = meta["image_threshold_simplex_calibration"]
    assert "50 lesion-free images of dev_64.npz" in record and results in record
    assert "64x64 development slice" in record and "approximate" in record  # a volume's score pools its slices
    # the THOR bundle reads each variant's own values
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    assert parser["image_threshold"] == shipped_image_threshold and parser["image_threshold_simplex"] == 0.234568

    # a report from before the image threshold was recorded: the label threshold only, and a message saying so
    old = _results_json(tmp_path / "old.json", "thor_simplex", sha, {"calibrated_threshold": 0.111})
    assert threshold_from_results(old, "thor_simplex", str(bundles))["image_threshold"] is None
    assert main(["--bundle", "thor_simplex", "--from-results", old, "--bundles_dir", str(bundles), "--write"]) == 0
    assert "records no image threshold" in capsys.readouterr().out
    written = json.loads(config_file.read_text())
    assert written["threshold_simplex"] == 0.111 and written["image_threshold_simplex"] == 0.234568


def test_from_results_writes_the_image_threshold_of_the_gaussian_variant(thor_bundle_copy, tmp_path, capsys):
    import hashlib

    from monai_diffad.calibration import main

    bundles = thor_bundle_copy
    sha = hashlib.sha256((bundles / "ddpm" / "models" / "model.pt").read_bytes()).hexdigest()
    results = _results_json(
        tmp_path / "results.json", "thor", sha, {"calibrated_threshold": 0.2, "image_threshold": 0.3}
    )
    simplex_before = json.loads((bundles / "thor" / "inference.json").read_text())["image_threshold_simplex"]
    assert main(["--bundle", "thor", "--from-results", results, "--bundles_dir", str(bundles), "--write"]) == 0
    written = json.loads((bundles / "thor" / "inference.json").read_text())
    assert (written["threshold"], written["image_threshold"]) == (0.2, 0.3)
    assert written["image_threshold_simplex"] == simplex_before  # the Simplex variant's key is untouched
    # a bundle without the image key (e.g. a plugin's from before it existed): the label threshold, and a message
    config_file = bundles / "thor" / "inference.json"
    config_file.write_text("\n".join(line for line in config_file.read_text().splitlines()
                                     if not line.strip().startswith('"image_threshold":')))
    assert main(["--bundle", "thor", "--from-results", results, "--bundles_dir", str(bundles), "--write"]) == 0
    assert 'has no "image_threshold" key' in capsys.readouterr().out


#: a fast THOR: the tiny test network at 32x32, few steps, SSIM instead of LPIPS
TINY_THOR = {
    "network_def": {"_target_": "monai_diffad.networks.diffusion_unet", **{k: list(v) if isinstance(v, tuple) else v
                                                                           for k, v in TINY_UNET.items()}},
    "image_size": 32, "noise_level": 20, "harmonization_steps": [10], "step_stride": 7, "record_interval": 3,
    "perceptual": "ssim", "max_batch_size": 2,
}  # fmt: skip


def _healthy_volume(folder, name: str, seed: int) -> None:
    """A textured ellipsoid "brain" of 3 mm voxels, 60 x 56 x 3, stored in LPS, with its brain mask beside it."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.linspace(-1, 1, 60), np.linspace(-1, 1, 56), indexing="ij")
    brain = (xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1
    image = np.stack([brain * (0.5 + 0.2 * np.sin(6 * xx + z) * np.cos(5 * yy) + 0.05 * rng.random(brain.shape))
                      for z in range(3)], -1).astype(np.float32)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{name}.nii.gz")
    mask = np.repeat(brain[..., None], 3, -1).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), folder / f"{name}_brain_mask.nii.gz")


def test_calibrate_on_images_scores_each_scan_as_the_monailabel_app_does(tmp_path, monkeypatch):
    """The image score of a healthy volume in calibration equals the ``score`` the MONAI Label app returns for it
    (same bundle, weights and seed), and the image threshold is taken over those scores."""
    pytest.importorskip("monailabel")
    from monai_diffad.calibration import calibrate_on_images
    from monai_diffad.metrics import image_threshold_at_fpr

    bundles = tmp_path / "bundles"
    shutil.copytree(os.path.join(REPO, "bundles", "thor"), bundles / "thor")
    config = json.loads((bundles / "thor" / "inference.json").read_text())
    config.update(TINY_THOR)
    config["inferer"]["progress"] = False
    (bundles / "thor" / "inference.json").write_text(json.dumps(config, indent=1))
    (bundles / "ddpm" / "models").mkdir(parents=True)
    torch.save(tiny_diffusion_unet(seed=3).state_dict(), bundles / "ddpm" / "models" / "model.pt")
    healthy = tmp_path / "healthy"
    for seed, name in enumerate(("a", "b", "c")):
        _healthy_volume(healthy, name, seed)

    result = calibrate_on_images("thor", str(healthy), fpr=0.34, device="cpu", bundles_dir=str(bundles), seed=0)
    scores = result["image_scores"]
    assert result["num_images"] == 3 and len(set(scores)) == 3 and min(scores) > 0
    # 3 scans at 34 %: one may reach it, so the threshold is the highest score
    assert result["image_threshold"] == image_threshold_at_fpr(torch.tensor(scores), 0.34) == max(scores)
    assert "whole scan" in result["image_score"]

    # the app, on the first scan (which calibration ran with the generator fresh from the seed, as the app does)
    monkeypatch.setenv("MONAI_DIFFAD_BUNDLES", str(bundles))
    sys.path.insert(0, os.path.join(REPO, "monailabel_app"))
    from lib.configs import task_configs

    app_config = task_configs()["thor"]()
    app_config.init("thor", "", {}, None, repo_root=REPO, map_dir=None)
    task = app_config.infer()
    _, answer = task({"image": str(healthy / "a.nii.gz"), "device": "cpu", "seed": 0, "output": "map"})
    assert answer["score"] == pytest.approx(scores[0], rel=1e-5, abs=1e-7)
