# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Label app builds each method from its bundle and applies the bundle's geometry contract.

The tasks run in-process (no server) on a temporary copy of the THOR bundle whose settings differ from the shipped
ones, found through ``MONAI_DIFFAD_BUNDLES`` as ``monai.bundle run`` would find it: each changed setting has to show up
in the app's task. The input volume is stored as a scanner would store it (LPS, anisotropic voxels, a wide field of
view with the brain off-centre), with a brain mask file beside it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("monailabel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "monailabel_app"))

from monailabel.tasks.infer.basic_infer import CallBackTypes  # noqa: E402

from lib.configs import task_configs  # noqa: E402
from lib.infers.params import InvalidInferRequest  # noqa: E402
from monai_diffad.maps import rescale_to_threshold  # noqa: E402
from monai_diffad.networks import diffusion_unet  # noqa: E402

#: what the temporary THOR bundle changes, each to a value the shipped bundle does not have
TINY_NETWORK = {
    "_target_": "monai_diffad.networks.diffusion_unet",
    "channels": [8, 8], "attention_levels": [False, False], "num_head_channels": 8, "norm_num_groups": 4,
}  # fmt: skip
CHANGED = {
    "step_stride": 7,
    "threshold": 0.123,
    "image_threshold": None,  # no image threshold calibrated: the app's pixel rule decides pred_label
    "threshold_simplex": 0.0456,
    "record_interval": 3,
    "perceptual": "ssim",
    "max_batch_size": 5,
    "seed": 11,
    "image_size": 32,
    "network_def": TINY_NETWORK,
}
REQUEST = {"noise_level": 20, "harmonization_steps": "10", "device": "cpu"}
#: LPS storage (x and y flipped), anisotropic voxels, origin far from the centre
SPACING = (0.9, 1.2, 3.0)
LPS_AFFINE = np.array(
    [[-SPACING[0], 0, 0, 110.0], [0, -SPACING[1], 0, 140.0], [0, 0, SPACING[2], -12.0], [0, 0, 0, 1]]
)


@pytest.fixture
def changed_bundles(tmp_path, monkeypatch) -> str:
    """``<tmp>/bundles`` with a THOR bundle holding ``CHANGED`` and tiny DDPM weights where the bundle finds them
    (``bundles/ddpm/models/model*.pt`` next to it); ``MONAI_DIFFAD_BUNDLES`` points there."""
    bundles = tmp_path / "bundles"
    shutil.copytree(os.path.join(REPO, "bundles", "thor"), bundles / "thor")
    config_file = bundles / "thor" / "inference.json"
    config = json.loads(config_file.read_text())
    assert all(config[k] != v for k, v in CHANGED.items()), "the test must change every setting"
    config.update(CHANGED)
    config_file.write_text(json.dumps(config, indent=1))
    (bundles / "ddpm" / "models").mkdir(parents=True)
    torch.manual_seed(0)
    network = diffusion_unet(**{k: v for k, v in TINY_NETWORK.items() if k != "_target_"})
    for name in ("model.pt", "model_simplex.pt"):
        torch.save(network.state_dict(), bundles / "ddpm" / "models" / name)
    monkeypatch.setenv("MONAI_DIFFAD_BUNDLES", str(bundles))
    return str(bundles)


def _task(config_class):
    config = config_class()
    config.init(config_class.method, "", {}, None, repo_root=REPO, map_dir=None)
    return config, config.infer()


def _defaults(task) -> dict:
    return {o.name: o.default for o in task.options}


def test_changed_bundle_settings_reach_the_task(changed_bundles):
    config, task = _task(task_configs()["thor"])
    assert config.checkpoint == os.path.join(changed_bundles, "ddpm", "models", "model.pt")
    assert task.threshold_source == os.path.join(changed_bundles, "thor", "inference.json")
    defaults = _defaults(task)
    assert defaults["threshold"] == pytest.approx(CHANGED["threshold"])
    assert defaults["seed"] == CHANGED["seed"] and defaults["slice_batch_size"] == CHANGED["max_batch_size"]

    inferer = task._inferer(task.inferer_kwargs(defaults))
    assert inferer.step_stride == CHANGED["step_stride"] and inferer.record_interval == CHANGED["record_interval"]
    assert inferer.perceptual.description == "ssim"
    # request options go over the bundle's keys and leave the others as the bundle has them
    requested = task._inferer(task.inferer_kwargs({**defaults, "noise_level": 20, "harmonization_steps": (10,)}))
    assert (requested.noise_level, requested.harmonization_steps) == (20, (10,))
    assert requested.step_stride == CHANGED["step_stride"]

    network = task._get_network("cpu", None)
    assert [block.resnets[0].out_channels for block in network.down_blocks] == TINY_NETWORK["channels"]

    # the variant's switch (noise_type) picks the bundle's Simplex weights and Simplex threshold
    simplex_config, simplex_task = _task(task_configs()["thor_simplex"])
    assert simplex_config.checkpoint.endswith(os.path.join("ddpm", "models", "model_simplex.pt"))
    assert _defaults(simplex_task)["threshold"] == pytest.approx(CHANGED["threshold_simplex"])


def _scanner_volume(folder: str) -> tuple[str, np.ndarray]:
    """The demo brain (or a phantom) resampled to ``SPACING``, placed off-centre in a 250 mm field of view and stored
    in LPS, plus a brain mask file beside it that holds only one half of the brain; returns (image path, mask)."""
    files = sorted(glob.glob(os.path.join(REPO, "demo_data", "volumes", "*_image.nii.gz")))
    if files:
        ras = np.asarray(nib.load(files[0]).dataobj, dtype=np.float32)[..., 2:6]  # 1.5 x 1.5 x 3 mm
    else:
        xx, yy = np.meshgrid(np.linspace(-1, 1, 128), np.linspace(-1, 1, 128), indexing="ij")
        brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * (0.5 + 0.2 * np.sin(6 * xx) * np.cos(5 * yy))
        ras = np.repeat(brain[..., None], 4, axis=-1).astype(np.float32)
    ras = np.clip(ndimage.zoom(ras, (1.5 / SPACING[0], 1.5 / SPACING[1], 1.0), order=1), 0.0, None)
    canvas = np.zeros((278, 208, ras.shape[-1]), np.float32)  # 250 x 250 mm in-plane
    canvas[10 : 10 + ras.shape[0], 40 : 40 + ras.shape[1]] = ras  # far from the centre along x
    lps = np.ascontiguousarray(canvas[::-1, ::-1])
    path = os.path.join(folder, "scan.nii.gz")
    nib.save(nib.Nifti1Image(lps, LPS_AFFINE), path)
    filled = np.stack([ndimage.binary_fill_holes(lps[..., z] > 0) for z in range(lps.shape[-1])], axis=-1)
    mask = filled.copy()
    mask[: mask.shape[0] // 2 + 30] = False  # the given mask is only a part of the foreground
    assert 0 < mask.sum() < filled.sum() // 2
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), LPS_AFFINE), os.path.join(folder, "scan_brain_mask.nii.gz"))
    return path, mask


def test_scanner_volume_comes_back_on_its_grid_and_inside_its_brain_mask(changed_bundles, tmp_path):
    _, task = _task(task_configs()["thor"])
    image_path, mask = _scanner_volume(str(tmp_path))
    seen = {}

    def after_pre_transforms(data):
        seen["shape"], seen["mask"] = tuple(data["image"].shape), data.get("brain_mask")
        return data

    callbacks = {CallBackTypes.PRE_TRANSFORMS: after_pre_transforms}
    map_path, result = task({"image": image_path, **REQUEST, "output": "map", "map_scale": "raw"}, callbacks)
    scaled_path, scaled_result = task({"image": image_path, **REQUEST, "output": "map"})
    label_path, label_result = task({"image": image_path, **REQUEST}, callbacks)
    # the bundle's image_size reached the network; step_stride visits every 7th level of 20 (+1 final call)
    assert seen["shape"] == (1, 32, 32, mask.shape[-1])
    batches = -(-mask.shape[-1] // CHANGED["max_batch_size"])
    assert result["timing"]["network_calls"] == batches * len(range(0, 20, CHANGED["step_stride"])) + batches
    assert result["threshold"] == pytest.approx(CHANGED["threshold"])

    image = nib.load(image_path)
    for path in (map_path, label_path):
        out = nib.load(path)
        assert out.shape == image.shape
        np.testing.assert_allclose(out.affine, image.affine, atol=1e-4)
    amap = np.asarray(nib.load(map_path).dataobj)
    label = np.asarray(nib.load(label_path).dataobj)
    # the brain mask beside the image was used, and came back on the input's grid the right way round
    assert not amap[~mask].any() and not label[~mask].any()
    inside = amap[mask]
    assert (inside > 0).mean() > 0.9, "the map must cover the given brain mask"
    np.testing.assert_array_equal(label, (amap >= CHANGED["threshold"]).astype(np.uint8))
    assert label_result["score"] == pytest.approx(result["score"]) and result["score"] > 0
    # the default map scale is the bundle's threshold moved to 0.5, the same map otherwise (same seed)
    scaled = np.asarray(nib.load(scaled_path).dataobj)
    assert scaled_result["map_scale"] == "calibrated" and result["map_scale"] == "raw"
    assert scaled_result["calibration_threshold"] == pytest.approx(CHANGED["threshold"])
    np.testing.assert_allclose(scaled, rescale_to_threshold(amap, CHANGED["threshold"]), atol=1e-6)
    assert not np.allclose(scaled, amap)  # t = 0.123: the scale really changed (values below t grow about 4x)
    assert (scaled >= 0.5).sum() == (amap >= CHANGED["threshold"]).sum()
    assert scaled_result["score"] == pytest.approx(result["score"])
    assert scaled_result["score_calibrated"] == pytest.approx(rescale_to_threshold(result["score"], CHANGED["threshold"]))
    # one maximum per axial slice of the returned map; no image threshold in this bundle: the pixel rule decides
    assert scaled_result["slice_max"] == pytest.approx(scaled.max(axis=(0, 1)).tolist(), abs=1e-5)
    share = (amap[mask] >= CHANGED["threshold"]).mean()
    assert scaled_result["flagged_brain_share"] == pytest.approx(share, abs=1e-5)
    assert scaled_result["pred_label"] == int(share > 0.05) and "pixel rule" in scaled_result["pred_label_rule"]


def test_without_a_mask_file_the_filled_foreground_is_the_brain(changed_bundles, tmp_path):
    _, task = _task(task_configs()["thor"])
    image_path, _ = _scanner_volume(str(tmp_path))
    os.remove(os.path.join(str(tmp_path), "scan_brain_mask.nii.gz"))
    image = np.asarray(nib.load(image_path).dataobj)
    foreground = np.stack([ndimage.binary_fill_holes(image[..., z] > 0) for z in range(image.shape[-1])], axis=-1)
    map_path, _ = task({"image": image_path, **REQUEST, "output": "map"})
    amap = np.asarray(nib.load(map_path).dataobj)
    # the contract makes this mask on the image resampled to 1 mm, whose interpolated edge reaches one voxel further
    near = ndimage.binary_dilation(foreground, structure=np.ones((3, 3, 1), bool))
    assert not amap[~near].any()
    assert (amap[foreground] > 0).mean() > 0.9
    # mask_background=false keeps the map over the whole frame around the brain
    map_path, _ = task({"image": image_path, **REQUEST, "output": "map", "mask_background": False})
    assert np.asarray(nib.load(map_path).dataobj)[~foreground].any()


def test_a_brain_mask_of_another_shape_is_a_client_error(changed_bundles, tmp_path):
    _, task = _task(task_configs()["thor"])
    image_path, mask = _scanner_volume(str(tmp_path))
    mask_path = os.path.join(str(tmp_path), "scan_brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(mask[:-4].astype(np.uint8), LPS_AFFINE), mask_path)
    with pytest.raises(InvalidInferRequest, match="scan_brain_mask.nii.gz"):
        task({"image": image_path, **REQUEST})


def test_min_size_is_a_volume_in_mm3_measured_on_the_label_grid():
    """``min_size`` goes through MONAI's RemoveSmallObjects with by_measure: 2 x 2 x 3 mm voxels are 12 mm³ each.

    MONAI turns mm³ into ceil(min_size / voxel volume) voxels; scikit-image 0.26 then removes regions of at most
    that many voxels (measured here: its deprecated ``min_size`` acts as the new inclusive ``max_size``).
    """
    from monai.data import MetaTensor

    from lib.infers.anomaly import _remove_small_regions

    label = torch.zeros(1, 12, 12, 4, dtype=torch.uint8)
    label[0, 1, 1, 1] = label[0, 2, 2, 2] = 1  # 2 voxels touching at a corner: one region of 24 mm³
    label[0, 6:8, 6:8, 1] = 1  # 4 voxels, 48 mm³, one of them anomaly_high
    label[0, 6, 6, 1] = 2
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    kept = _remove_small_regions(MetaTensor(label, affine=affine), 30.0)  # 3 voxels
    assert int((kept > 0).sum()) == 4 and int(kept[0, 6, 6, 1]) == 2 and not kept[0, 1, 1, 1]
    # the same label on a 1 mm grid: 2 mm³ and 4 mm³, both under 30 mm³
    assert not _remove_small_regions(MetaTensor(label, affine=torch.eye(4, dtype=torch.float64)), 30.0).any()
    # 10 mm³ (1 voxel) keeps the corner-connected pair: full connectivity
    assert int((_remove_small_regions(MetaTensor(label, affine=affine), 10.0) > 0).sum()) == 6


def test_a_level_the_bundles_scheduler_cannot_reach_is_refused_before_any_image(changed_bundles):
    """The inferers construct with any scheduler (drop-in); what detection needs of it is checked per request."""
    config_file = os.path.join(changed_bundles, "thor", "inference.json")
    config = json.loads(open(config_file).read())
    config["scheduler"] = "$monai_diffad.networks.ddpm_scheduler(num_train_timesteps=100)"
    config.update({"noise_level": 50, "harmonization_steps": [25]})  # a bundle default the scheduler can reach
    with open(config_file, "w") as f:
        json.dump(config, f, indent=1)
    _, task = _task(task_configs()["thor"])
    assert task.validate_request({"noise_level": 50, "harmonization_steps": "25", "device": "cpu"})
    with pytest.raises(InvalidInferRequest, match="noise_level=150"):
        task.validate_request({"noise_level": 150, "harmonization_steps": "25", "device": "cpu"})
