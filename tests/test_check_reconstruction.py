# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The weights quality check: partial-noise reconstruction report, architecture choice, figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_diffad.networks import diffusion_unet
from monai_diffad.training.check_reconstruction import main, reconstruction_report


@pytest.fixture
def dev_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((6, 16, 16)).astype(np.float32)
    masks = np.zeros((6, 16, 16), dtype=np.uint8)
    masks[3:, 4:8, 4:8] = 1
    path = tmp_path / "dev.npz"
    np.savez(
        path,
        images=images,
        masks=masks,
        brain_masks=np.ones((6, 16, 16), dtype=np.uint8),
        split=np.array(["validation"] * 3 + ["test"] * 3),
    )
    return str(path)


@pytest.fixture
def demo_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(diffusion_unet().state_dict(), path)
    return str(path)


def test_report_keys_and_ranges(dev_npz, demo_weights, tmp_path):
    report = reconstruction_report(demo_weights, dev_npz, levels=(2,), num=2, png=str(tmp_path / "r.png"))
    row = report["L=2"]
    assert set(row) == {
        "healthy_mse", "healthy_mse_brain", "healthy_ssim", "lesion_change_inside", "lesion_change_outside"
    }
    assert 0 <= row["healthy_mse"] <= 1 and -1 <= row["healthy_ssim"] <= 1
    assert (tmp_path / "r.png").stat().st_size > 0


def test_lesion_slices_alone(dev_npz, demo_weights):
    """``--num 0``: a lesion-removal report without healthy metrics; nothing picked at all is a clear error."""
    row = reconstruction_report(demo_weights, dev_npz, levels=(2,), num=0, num_lesion=2)["L=2"]
    assert set(row) == {"lesion_change_inside", "lesion_change_outside"}
    assert row["lesion_change_inside"] > 0
    with pytest.raises(ValueError, match="Nothing to reconstruct"):
        reconstruction_report(demo_weights, dev_npz, levels=(2,), num=0, num_lesion=0)


def test_ssim_between_two_draws(dev_npz, demo_weights, capsys):
    """Two reconstructions from independent noise differ; from the same noise seeds they are identical."""
    plain = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=3, num_lesion=0)["L=3"]
    row = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=3, num_lesion=0, second_seed=100)["L=3"]
    assert {k: row[k] for k in plain} == plain  # the second draw changes nothing else
    assert -1 <= row["healthy_ssim_between_draws"] < 0.999
    same = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=3, num_lesion=0, second_seed=0)["L=3"]
    assert same["healthy_ssim_between_draws"] == pytest.approx(1.0, abs=1e-5)
    args = ["--weights", demo_weights, "--dev-npz", dev_npz, "--levels", "3", "--num", "1", "--second-seed", "9"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "healthy_ssim_between_draws" in json.loads(out[out.index("{") :])["L=3"]


def test_architecture_must_match_the_weights(dev_npz, demo_weights):
    with pytest.raises(ValueError, match=r"network must be one of \['demo', 'demo128', 'paper'\], got 'large'"):
        reconstruction_report(demo_weights, dev_npz, levels=(2,), num=1, network="large")
    for network in ("paper", "demo128"):
        with pytest.raises(ValueError, match="does not match|resized|missing"):
            reconstruction_report(demo_weights, dev_npz, levels=(2,), num=1, network=network)


def test_cli_prints_json(dev_npz, demo_weights, capsys):
    assert main(["--weights", demo_weights, "--dev-npz", dev_npz, "--levels", "1", "--num", "1"]) == 0
    out = capsys.readouterr().out
    assert "L=1" in json.loads(out[out.index("{"):])


def test_simplex_noise_check_runs_and_differs_from_gaussian(dev_npz, demo_weights):
    gaussian = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=1)["L=3"]
    simplex = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=1, noise_type="simplex")["L=3"]
    assert simplex["healthy_mse"] != gaussian["healthy_mse"]
    again = reconstruction_report(demo_weights, dev_npz, levels=(3,), num=1, noise_type="simplex")["L=3"]
    assert again == simplex
    with pytest.raises(ValueError, match="simplex"):
        reconstruction_report(demo_weights, dev_npz, levels=(3,), num=1, noise_type="perlin")


def test_compare_at_another_resolution(tmp_path):
    """--compare-npz scores the reconstructions on another grid: on the set's own grid it repeats healthy_ssim/mse;
    on a 2x coarser copy it adds the _at_16 keys and changes nothing else; other slices are refused."""
    from conftest import nonzero_init_

    weights = tmp_path / "seeded.pt"
    torch.save(nonzero_init_(diffusion_unet(), seed=1).state_dict(), weights)
    rng = np.random.default_rng(1)
    images = rng.random((4, 32, 32)).astype(np.float32)
    fine = {"images": images, "masks": np.zeros((4, 32, 32), np.uint8), "brain_masks": np.ones((4, 32, 32), np.uint8),
            "split": np.array(["validation"] * 4), "z": np.arange(4)}
    coarse = {k: (v.reshape(4, 16, 2, 16, 2).mean((2, 4)).astype(v.dtype) if v.ndim == 3 else v)
              for k, v in fine.items()}
    paths = {}
    for name, arrays in (("fine", fine), ("coarse", coarse), ("other", {**coarse, "z": np.arange(4)[::-1]})):
        paths[name] = str(tmp_path / f"{name}.npz")
        np.savez(paths[name], **arrays)
    run = lambda other: reconstruction_report(  # noqa: E731
        str(weights), paths["fine"], levels=(5,), num=None, num_lesion=0, compare_npz=other
    )["L=5"]
    own = run(paths["fine"])
    assert own["healthy_ssim_at_32"] == pytest.approx(own["healthy_ssim"], abs=1e-6)
    assert own["healthy_mse_at_32"] == pytest.approx(own["healthy_mse"], rel=1e-6)
    low = run(paths["coarse"])
    assert {k: low[k] for k in ("healthy_ssim", "healthy_mse")} == {k: own[k] for k in ("healthy_ssim", "healthy_mse")}
    assert 0 < low["healthy_mse_at_16"] < low["healthy_mse"]  # averaging 2x2 pixels removes part of the error
    assert -1 <= low["healthy_ssim_at_16"] <= 1 and low["healthy_ssim_at_16"] != pytest.approx(low["healthy_ssim"])
    with pytest.raises(ValueError, match="does not hold the slices"):
        run(paths["other"])
