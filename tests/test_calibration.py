# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Threshold calibration at a healthy-pixel false-positive rate."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

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
