# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end checks of the MONAI Label app: a real server on 127.0.0.1 and the REST calls 3D Slicer makes.

The server runs ``monailabel_app`` over a temporary studies folder (a 3D NIfTI volume, its NRRD copy and a 2D
slice, cut from the shipped demo data when present) with tiny random weights, so requests take about a second.
The volume is stored in LAS orientation with an empty band on one side, so a missing or wrong orientation
inversion would show up as anomaly values where the image is empty.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from scipy import ndimage

from monai_diffad.networks import diffusion_unet

pytestmark = pytest.mark.slow
monailabel_client = pytest.importorskip("monailabel.client")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_UNET = {"channels": [8, 8], "attention_levels": [False, False], "num_head_channels": 8, "norm_num_groups": 4}
THOR_FAST = {"noise_level": 10, "harmonization_steps": "5"}
DDPM_FAST = {"noise_level": 5}
DECLARED = {"anomaly": 1, "anomaly_high": 2}
STARTUP_TIMEOUT_S = 90
LAS_AFFINE = np.array([[-1.5, 0, 0, 90.0], [0, 1.5, 0, -100.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])


def _demo_or_phantom_volume() -> np.ndarray:
    """Four central slices of the demo volume, or a textured ellipse phantom when demo data is absent: (H, W, 4)."""
    files = sorted(glob.glob(os.path.join(REPO, "demo_data", "volumes", "*_image.nii.gz")))
    if files:
        volume = np.asarray(nib.load(files[0]).dataobj, dtype=np.float32)
        mid = volume.shape[-1] // 2
        return np.ascontiguousarray(volume[..., mid - 2 : mid + 2])
    xx, yy = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * (0.5 + 0.2 * np.sin(6 * xx) * np.cos(5 * yy))
    return np.stack([brain * (1 + 0.05 * k) for k in range(4)], axis=-1).astype(np.float32)


def _write_nrrd(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """NRRD with the same physical geometry as a NIfTI of ``array`` and RAS ``affine`` (ITK stores LPS)."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array.transpose()))  # ITK arrays are z, y, x
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]])
    image.SetDirection(itk.matrix_from_array(lps / spacing))
    itk.imwrite(image, path)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("studies"))
    volume = _demo_or_phantom_volume()
    volume[: volume.shape[0] // 3] = 0.0  # an empty band on one side: orientation errors become visible
    nib.save(nib.Nifti1Image(volume, LAS_AFFINE), os.path.join(folder, "volume.nii.gz"))
    _write_nrrd(volume, LAS_AFFINE, os.path.join(folder, "volume_nrrd.nrrd"))
    nib.save(nib.Nifti1Image(volume[..., 1], LAS_AFFINE), os.path.join(folder, "slice.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), LAS_AFFINE), os.path.join(folder, "empty.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("weights") / "tiny.pt")
    torch.save(diffusion_unet(**TINY_UNET).state_dict(), path)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(studies: str, conf: dict[str, str], log_path: str, env: dict[str, str] | None = None):
    """A MONAI Label server of ``monailabel_app`` over ``studies`` with ``--conf`` ``conf``, on a free port of
    127.0.0.1; yields ``{"url", "log", "proc"}`` once ``/info/`` answers and stops it with SIGTERM afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", os.path.join(REPO, "monailabel_app"), "--studies", studies,
        *[arg for key, value in conf.items() for arg in ("--conf", key, value)],
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
               **(env or {}))  # fmt: skip
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{open(log_path).read()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{open(log_path).read()[-4000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log_path, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(studies, checkpoint, tmp_path_factory):
    """A MONAI Label server with the thor and ddpm models (no triage: these tests are about inference)."""
    conf = {"models": "thor,ddpm", "checkpoint": checkpoint, "network": json.dumps(TINY_UNET), "triage": "none"}
    with running_server(studies, conf, str(tmp_path_factory.mktemp("server") / "server.log")) as running:
        yield running


@pytest.fixture
def client(server, tmp_path):
    return monailabel_client.MONAILabelClient(server["url"], tmpdir=str(tmp_path))


def _status(error: Exception) -> int:
    match = re.search(r"Status: (\d+)", str(error))
    assert match, f"no HTTP status in {error}"
    return int(match.group(1))


def _check_result_json(result: dict, method: str, threshold: float) -> None:
    assert result["method"] == method
    assert 0.0 <= result["score"] <= 1.0
    assert result["threshold"] == pytest.approx(threshold)
    assert result["timing"]["detect_s"] > 0 and result["timing"]["network_calls"] > 0
    assert set(result["label_names"]) == set(DECLARED)


def _check_label(path: str, reference: str, result: dict) -> np.ndarray:
    label, image = nib.load(path), nib.load(reference)
    data = np.asarray(label.dataobj)
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert data.dtype == np.uint8
    assert set(np.unique(data).tolist()) <= {0, *DECLARED.values()}
    assert result["label_voxels"] == {name: int((data == value).sum()) for name, value in DECLARED.items()}
    return data


def test_info_lists_the_selected_models(client):
    info = client.info()
    assert set(info["models"]) == {"thor", "ddpm"}
    for model in info["models"].values():
        assert model["type"] == "segmentation"
        assert model["labels"] == DECLARED
        config = model["config"]
        assert 0.0 <= config["threshold"] <= 1.0 and config["noise_level"] >= 1
        assert config["output"][0] == "label"  # Slicer preselects the first entry of a list
    assert info["models"]["thor"]["config"]["harmonization_steps"]


def test_volume_label_keeps_the_input_geometry(client, studies):
    params = {**THOR_FAST, "threshold": 0.05, "high_threshold": 0.2, "seed": 3}
    path, result = client.infer("thor", "volume", params)
    _check_result_json(result, "thor", 0.05)
    assert result["high_threshold"] == pytest.approx(0.2)
    assert result["options"]["harmonization_steps"] == [5]
    assert result["timing"]["slices"] == 4
    _check_label(path, os.path.join(studies, "volume.nii.gz"), result)


def test_float_map_matches_the_label_and_the_anatomy(client, studies):
    params = {**THOR_FAST, "threshold": 0.05, "high_threshold": 0.2, "seed": 3, "mask_background": True}
    label_path, label_result = client.infer("thor", "volume", params)
    label = np.asarray(nib.load(label_path).dataobj)
    map_path, map_result = client.infer("thor", "volume", {**params, "output": "map", "map_scale": "raw"})
    amap_image = nib.load(map_path)
    amap = np.asarray(amap_image.dataobj)
    image = nib.load(os.path.join(studies, "volume.nii.gz"))
    assert amap.dtype == np.float32 and amap.shape == image.shape
    np.testing.assert_allclose(amap_image.affine, image.affine, atol=1e-4)
    assert map_result["score"] == pytest.approx(label_result["score"])  # same seed, same result
    np.testing.assert_array_equal(label, (amap >= 0.05).astype(np.uint8) + (amap >= 0.2))
    assert amap.min() >= 0.0 and amap.max() <= 1.0
    # the map lives on the anatomy (background is masked): a flipped inversion would put it in the empty band
    foreground = np.asarray(image.dataobj) > 0
    near_foreground = ndimage.binary_dilation(foreground, iterations=3)
    assert amap[foreground].max() > 0
    assert not amap[~near_foreground].any()


def test_2d_slice_and_nrrd_volume(client, studies):
    path, result = client.infer("thor", "slice", {**THOR_FAST, "threshold": 0.05})
    _check_result_json(result, "thor", 0.05)
    assert result["timing"]["slices"] == 1
    _check_label(path, os.path.join(studies, "slice.nii.gz"), result)

    path, result = client.infer("ddpm", "volume_nrrd", {**DDPM_FAST, "threshold": 0.02, "min_size": 20.0})
    _check_result_json(result, "ddpm", 0.02)
    assert path.endswith(".nrrd")
    loader = LoadImage(image_only=True)
    label, image = loader(path), loader(os.path.join(studies, "volume_nrrd.nrrd"))
    assert tuple(label.shape) == tuple(image.shape)
    np.testing.assert_allclose(np.asarray(label.affine), np.asarray(image.affine), atol=1e-4)
    assert set(np.unique(np.asarray(label)).tolist()) <= {0, *DECLARED.values()}


def test_request_as_slicer_sends_it(client, studies):
    """Slicer sends every option of the model's panel: combo boxes as their selected text, empty cells as ''."""
    config = client.info()["models"]["thor"]["config"]
    params = {
        key: value[0] if isinstance(value, list) else "" if value is None else value for key, value in config.items()
    }
    params.update(THOR_FAST)  # what a user types in the Options table for a quick look
    path, result = client.infer("thor", "slice", params)
    assert result["options"]["high_threshold"] is None and result["options"]["output"] == "label"
    _check_label(path, os.path.join(studies, "slice.nii.gz"), result)


@pytest.mark.parametrize(
    "model, image, params, status, message",
    [
        ("thor", "no_such_image", THOR_FAST, 404, "no_such_image"),
        ("no_such_model", "volume", {}, 404, "no_such_model"),
        ("thor", "slice", {**THOR_FAST, "threshold": 1.5}, 422, "threshold"),
        ("thor", "slice", {**THOR_FAST, "seed": "abc"}, 422, "seed"),
        ("thor", "slice", {**THOR_FAST, "stepz": 5}, 422, "stepz"),
        ("thor", "slice", {**THOR_FAST, "threshold": 0.4, "high_threshold": 0.3}, 422, "high_threshold"),
        ("thor", "slice", {"noise_level": 0}, 422, "noise_level"),
        ("thor", "slice", {"noise_level": 10, "harmonization_steps": "50"}, 422, "harmonization"),
        ("thor", "slice", {**THOR_FAST, "output": "heatmap"}, 422, "output"),
        ("ddpm", "slice", {**DDPM_FAST, "device": "no_such_device"}, 422, "device"),
        ("ddpm", "empty", DDPM_FAST, 422, "cannot be processed"),
    ],
)
def test_bad_requests_get_a_clean_4xx(client, model, image, params, status, message):
    with pytest.raises(Exception) as error:
        client.infer(model, image, dict(params))
    assert _status(error.value) == status
    assert message in str(error.value)


def test_server_keeps_serving_after_errors(client, studies, server):
    for bad in ({"threshold": -1}, {"unknown": 1}):
        with pytest.raises(Exception):
            client.infer("ddpm", "slice", {**DDPM_FAST, **bad})
    assert set(client.info()["models"]) == {"thor", "ddpm"}
    path, result = client.infer("ddpm", "slice", dict(DDPM_FAST))
    _check_label(path, os.path.join(studies, "slice.nii.gz"), result)
    assert server["proc"].poll() is None
    log = open(server["log"]).read()
    assert re.search(r"network call \d+/\d+ \(100%\)", log), "progress lines missing from the server log"


def test_saved_map_is_served_by_the_datastore(client, server, studies, tmp_path):
    """The second output Slicer shows as a heat map: the float map as label tag anomaly_map_<model>, over REST."""
    _, result = client.infer("ddpm", "slice", {**DDPM_FAST, "save_map": True})
    saved = os.path.join(studies, "labels", "anomaly_map_ddpm", "slice.nii.gz")
    assert result["map_file"] == saved
    with urllib.request.urlopen(f"{server['url']}/datastore/label?label=slice&tag=anomaly_map_ddpm") as response:
        served = tmp_path / "served.nii.gz"
        served.write_bytes(response.read())
    amap = nib.load(str(served))
    assert amap.shape == nib.load(os.path.join(studies, "slice.nii.gz")).shape
    np.testing.assert_array_equal(np.asarray(amap.dataobj), np.asarray(nib.load(saved).dataobj))
    assert np.asarray(amap.dataobj).dtype == np.float32
