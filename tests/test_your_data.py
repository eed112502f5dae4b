# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""A user's own scans: foreign geometries through the geometry contract, calibration, detection, clear errors.

The cohort is built from the packaged anatomies and stored as scanners store scans (LPS, anisotropic spacing, a
large field of view, the brain off-centre), so every check knows the exact world geometry of each file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffad.bundles import image_datalist
from monai_diffad.calibration import calibrate_on_images
from monai_diffad.data.scanner import centred_affine, paint_ellipsoid_lesion, scanner_grid, store_as_scanned
from monai_diffad.data.slices import brain_centroid_xy, select_axial_slices
from monai_diffad.data.sources import load_source_volume, source_available
from monai_diffad.pipelines import inference_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not all(source_available(n) for n in ("mni152", "deepmriprep", "colin27")),
    reason="the packaged anatomies (nilearn, deepmriprep, mricron-data) are not installed",
)

#: axial slices kept per volume: enough for a 3D volume, few enough for a fast test
Z_SLICES = 6
#: what a scanner writes, one geometry per file: (spacing, orientation, field of view, offset of the head in mm)
GEOMETRIES = {
    "mni152": ((1.2, 1.2, 3.0), "LPS", 256.0, (20.0, -15.0, 0.0)),
    "deepmriprep": ((0.9, 0.9, 3.0), "RAS", 240.0, (-12.0, 18.0, 0.0)),
    "colin27": ((0.9, 0.9, 3.0), "LPS", 256.0, (25.0, -18.0, 0.0)),
}


def _middle_slab(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    source = load_source_volume(name)
    selected = select_axial_slices(source["mask"])
    z0 = int(selected[len(selected) // 2]) - Z_SLICES * 3 // 2
    # every third 1 mm slice: the 3 mm slices of the stored copy keep the same anatomy
    slab = {"image": source["image"][..., z0 : z0 + 3 * Z_SLICES], "brain_mask": source["mask"][..., z0 : z0 + 3 * Z_SLICES]}
    return slab, centred_affine(slab["image"].shape)


def _store(volumes: dict[str, np.ndarray], affine: np.ndarray, geometry: tuple, paths: dict[str, str]) -> None:
    spacing, axcodes, fov, offset = geometry
    grid_affine, shape = scanner_grid(np.asarray(volumes["image"].shape, float), spacing, axcodes, fov, offset)
    store_as_scanned(volumes, affine, paths, grid_affine, shape)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, str]:
    """Two healthy scans (one without a brain mask file) and one Colin27 scan with two lesions, foreign geometries."""
    root = tmp_path_factory.mktemp("cohort")
    healthy = root / "healthy"
    for name in ("mni152", "deepmriprep"):
        volumes, affine = _middle_slab(name)
        paths = {"image": str(healthy / f"{name}.nii.gz")}
        if name == "mni152":  # the other one gets the filled-foreground mask of the contract
            paths["brain_mask"] = str(healthy / f"{name}_brain_mask.nii.gz")
        _store({k: v for k, v in volumes.items() if k in paths}, affine, GEOMETRIES[name], paths)
    volumes, affine = _middle_slab("colin27")
    cx, cy = brain_centroid_xy(volumes["brain_mask"])
    image, label = volumes["image"], np.zeros(volumes["image"].shape, bool)
    for (dx, dy), kind in (((-35, 20), "tumour"), ((30, -25), "stroke")):
        image, lesion = paint_ellipsoid_lesion(image, volumes["brain_mask"], (cx + dx, cy + dy, 9), (12, 10, 8), kind)
        label |= lesion
    lesion_dir = root / "lesion"
    _store(
        {"image": image, "brain_mask": volumes["brain_mask"], "label": label},
        affine,
        GEOMETRIES["colin27"],
        {
            "image": str(lesion_dir / "images" / "colin27.nii.gz"),
            "brain_mask": str(lesion_dir / "images" / "colin27_brain_mask.nii.gz"),
            "label": str(lesion_dir / "labels" / "colin27.nii.gz"),
        },
    )
    return {"healthy": str(healthy), "lesion": str(lesion_dir)}


def test_folder_listing_pairs_brain_masks(cohort):
    items = image_datalist(cohort["healthy"])
    assert [os.path.basename(i["image"]) for i in items] == ["deepmriprep.nii.gz", "mni152.nii.gz"]
    assert "brain_mask" not in items[0] and items[1]["brain_mask"].endswith("mni152_brain_mask.nii.gz")


def test_contract_brings_foreign_geometries_to_the_training_frame(cohort):
    """Each scan reaches the network as the training slices do: 64 x 64 axial planes, 3 mm, the brain centred."""
    pre, _ = inference_transforms("thor", save_outputs=False)
    for item in image_datalist(cohort["healthy"]):
        out = pre(dict(item))
        image, mask = out["image"], out["brain_mask"]
        assert tuple(image.shape) == (1, 64, 64, Z_SLICES)
        assert float(image.max()) == pytest.approx(1.0) and float(image.min()) >= 0.0
        assert np.allclose(image.pixdim[:2].numpy(), 3.0)
        rows, cols = torch.nonzero(mask[0].amax(-1) > 0, as_tuple=True)
        # the brain centroid lands within a pixel or two of the frame's centre, whatever the scan's offset
        assert abs(float(rows.float().mean()) - 31.5) < 2.5 and abs(float(cols.float().mean()) - 31.5) < 2.5
        # skull-stripped: only the area-averaged rim of the brain lies outside the (nearest-resized) mask
        assert float(image[mask == 0].sum()) < 0.05 * float(image.sum())


@pytest.mark.slow
def test_calibrate_and_detect_on_a_scanner_geometry(cohort, tmp_path):
    """Calibrate on the healthy scans, run the THOR bundle on the lesion scan: outputs on the input grid, the label
    is the map against the stored threshold, nothing outside the brain, the lesions score above healthy brain."""
    result = calibrate_on_images(
        "thor", cohort["healthy"], fpr=0.05, device="cpu", overrides={"step_stride": 25, "inferer#progress": False},
        bundles_dir=os.path.join(ROOT, "bundles"),
    )
    threshold = result["threshold"]
    assert result["num_images"] == 2 and 0.0 < threshold < 1.0
    out_dir = tmp_path / "out"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(ROOT, "bundles/thor/inference.json"),
        "--dataset_dir", os.path.join(cohort["lesion"], "images"), "--output_dir", str(out_dir),
        "--step_stride", "25", "--threshold", str(threshold), "--save_png", "False",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = nib.load(os.path.join(cohort["lesion"], "images", "colin27.nii.gz"))
    outputs = {k: nib.load(out_dir / f"colin27_{k}.nii.gz") for k in ("anomaly_map", "pseudo_healthy", "anomaly_label")}
    for name, img in outputs.items():
        assert img.shape == source.shape, name
        assert np.allclose(img.affine, source.affine, atol=1e-4), name
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    amap = outputs["anomaly_map"].get_fdata()
    label = outputs["anomaly_label"].get_fdata()
    brain = nib.load(os.path.join(cohort["lesion"], "images", "colin27_brain_mask.nii.gz")).get_fdata() > 0
    lesion = nib.load(os.path.join(cohort["lesion"], "labels", "colin27.nii.gz")).get_fdata() > 0
    np.testing.assert_array_equal(label > 0, amap >= np.float32(threshold))
    assert amap[~brain].max() == 0.0 and label[~brain].max() == 0
    healthy_brain = brain & ~lesion
    assert amap[lesion].mean() > 2.0 * amap[healthy_brain].mean()
    scores = json.loads((out_dir / "scores.json").read_text())
    assert scores[0]["threshold"] == pytest.approx(threshold)


def test_same_anatomy_in_two_geometries_gives_nearly_the_same_map(cohort, tmp_path):
    """DISYRE (deterministic) on one anatomy stored in two geometries: the maps agree after resampling."""
    volumes, affine = _middle_slab("deepmriprep")
    paths = {}
    for name, geometry in {"ras": ((1.0, 1.0, 3.0), "RAS", 192.0, (0.0, 0.0, 0.0)), "lps": GEOMETRIES["mni152"]}.items():
        paths[name] = {"image": str(tmp_path / name / "scan.nii.gz")}
        _store({"image": volumes["image"]}, affine, geometry, paths[name])
    pre, post = inference_transforms("disyre", save_outputs=False)
    from monai_diffad.methods import build_method

    method = build_method("disyre", os.path.join(ROOT, "bundles"), device="cpu")
    maps, brains = {}, {}
    for name, item in paths.items():
        d = pre(dict(item))
        d["pred"] = method.inferer(d["image"][None], method.network)[0]
        out = post(d)
        maps[name], brains[name] = out["pred_anomaly_map"], out["brain_mask"]
    # bring the LPS map onto the RAS grid and compare inside the brain
    from monai.transforms import SpatialResample

    lps_on_ras = SpatialResample(mode="bilinear")(maps["lps"], dst_affine=maps["ras"].affine, spatial_size=maps["ras"].shape[1:])
    brain = brains["ras"].as_tensor() > 0
    a, b = maps["ras"].as_tensor()[brain], lps_on_ras.as_tensor()[brain]
    assert a.std() > 0 and b.std() > 0
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    # measured 0.79 with DISYRE's default (reference evaluation) settings, whose map is more textured than with the
    # paper's settings
    assert corr > 0.7, corr


# ---------------------------------------------------------------- bad input


def _error_text(excinfo) -> str:
    parts, error = [], excinfo.value
    while error is not None:
        parts.append(str(error))
        error = error.__cause__
    return " <- ".join(parts)


def test_mask_of_another_shape_is_named(cohort, tmp_path):
    pre, _ = inference_transforms("thor", save_outputs=False)
    image = os.path.join(cohort["healthy"], "mni152.nii.gz")
    wrong = tmp_path / "wrong_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 3), np.uint8), np.diag([1.2, 1.2, 3.0, 1.0])), wrong)
    with pytest.raises(RuntimeError) as excinfo:
        pre({"image": image, "brain_mask": str(wrong)})
    assert "wrong_mask.nii.gz" in _error_text(excinfo) and "shape" in _error_text(excinfo)


def test_a_head_rather_than_a_brain_gets_one_warning_naming_the_file(cohort, tmp_path, caplog):
    """A scan with a noisy background (as an image that was not skull-stripped has): the foreground is the whole
    field of view, more than any brain's axial section."""
    pre, _ = inference_transforms("thor", save_outputs=False)
    source = nib.load(os.path.join(cohort["healthy"], "deepmriprep.nii.gz"))
    noisy = source.get_fdata() + np.random.default_rng(0).uniform(0.01, 0.05, source.shape)
    path = tmp_path / "unstripped.nii.gz"
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), source.affine), path)
    with caplog.at_level("WARNING", logger="monai_diffad.transforms.geometry"):
        pre({"image": str(path)})
    warnings = [r.getMessage() for r in caplog.records if r.name == "monai_diffad.transforms.geometry"]
    assert len(warnings) == 1 and "unstripped.nii.gz" in warnings[0] and "skull-strip" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_diffad.transforms.geometry"):
        pre({"image": os.path.join(cohort["healthy"], "deepmriprep.nii.gz")})  # the skull-stripped scan: none
    assert not [r for r in caplog.records if r.name == "monai_diffad.transforms.geometry"]


def test_multichannel_image_is_named(tmp_path):
    pre, _ = inference_transforms("thor", save_outputs=False)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 4, 3)).astype(np.float32), np.eye(4)), path)
    with pytest.raises(RuntimeError) as excinfo:
        pre({"image": str(path)})
    assert "series.nii.gz" in _error_text(excinfo) and "channel" in _error_text(excinfo)


def test_folder_without_images_and_datalist_with_missing_file(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="No images"):
        image_datalist(str(tmp_path))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"validation": [{"image": "missing_scan.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match="missing_scan.nii.gz"):
        image_datalist(str(tmp_path), split="validation")


def test_calibration_command_names_a_bad_file(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    proc = subprocess.run(
        [sys.executable, "-m", "monai_diffad.calibration", "--bundle", "thor", "--dataset_dir", str(tmp_path),
         "--device", "cpu", "--bundles_dir", os.path.join(ROOT, "bundles")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2 and "broken.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
