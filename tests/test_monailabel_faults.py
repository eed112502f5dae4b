# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Label server under load and faults, on 127.0.0.1 only, with bounded loops.

Concurrent infer requests, clients that disconnect mid-request and corrupt study files: the server keeps answering,
same-seed requests stay identical under concurrency, no partial file is left in the studies folder and the server's
memory stays bounded. Reuses the server fixture of ``test_monailabel_app.py`` over its own studies folder.
"""

from __future__ import annotations

import gzip
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("monailabel.client")

from test_monailabel_app import (  # noqa: E402  (fixtures are used by name)
    DDPM_FAST,
    LAS_AFFINE,
    _demo_or_phantom_volume,
    _status,
    checkpoint,  # noqa: F401
    client,  # noqa: F401
    server,  # noqa: F401
)

CONCURRENT_REQUESTS = 6
WORKERS = 3
DISCONNECTS = 3
MEMORY_ROUNDS = 6
MEMORY_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> str:
    """A valid 2D slice plus corrupt studies: truncated gzip NIfTI, a header with no voxels, garbage NRRD."""
    folder = str(tmp_path_factory.mktemp("fault_studies"))
    slice2d = _demo_or_phantom_volume()[..., 1]
    good = os.path.join(folder, "slice.nii.gz")
    nib.save(nib.Nifti1Image(slice2d, LAS_AFFINE), good)
    raw = gzip.decompress(open(good, "rb").read())
    with open(os.path.join(folder, "truncated.nii.gz"), "wb") as f:
        f.write(gzip.compress(raw)[: len(raw) // 8])
    header = bytearray(raw)
    header[42:44] = (0).to_bytes(2, "little", signed=True)  # dim[1] = 0: a valid-looking file with no voxels
    with open(os.path.join(folder, "novoxels.nii"), "wb") as f:
        f.write(bytes(header))
    with open(os.path.join(folder, "garbage.nrrd"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(700))
    return folder


def _snapshot(folder: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found")


@pytest.mark.parametrize("image", ["truncated", "novoxels", "garbage"])
def test_corrupt_study_gets_a_clean_4xx(client, server, image):
    with pytest.raises(Exception) as error:
        client.infer("ddpm", image, dict(DDPM_FAST))
    assert _status(error.value) == 422
    assert "cannot be processed" in str(error.value) and image in str(error.value)
    assert server["proc"].poll() is None


def test_concurrent_requests_are_all_answered_identically(client, server):
    def run(seed: int) -> float:
        _, result = client.infer("ddpm", "slice", {**DDPM_FAST, "seed": seed})
        return result["score"]

    seeds = [k % 2 for k in range(CONCURRENT_REQUESTS)]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        scores = list(pool.map(run, seeds, timeout=600))
    by_seed = {s: {score for seed, score in zip(seeds, scores) if seed == s} for s in set(seeds)}
    assert all(len(values) == 1 for values in by_seed.values()), by_seed  # concurrency does not change results
    assert server["proc"].poll() is None


def _raw_infer_request(url: str, body_bytes_sent: int | None) -> None:
    """Send a multipart infer request by hand and hang up: mid-body (``body_bytes_sent``) or right after sending."""
    boundary = "monaidiffadfault"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
        f'{{"noise_level": 5}}\r\n--{boundary}--\r\n'
    ).encode()
    parsed = urlparse(url)
    head = (
        f"POST /infer/ddpm?image=slice HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(head + (body if body_bytes_sent is None else body[:body_bytes_sent]))
        time.sleep(0.2)
    # leaving the block closes the socket before any answer is read


def test_clients_disconnecting_mid_request_do_not_hurt_the_server(client, server):
    for _ in range(DISCONNECTS):
        _raw_infer_request(server["url"], body_bytes_sent=20)  # gone while the body is still incomplete
        _raw_infer_request(server["url"], body_bytes_sent=None)  # gone while the result is being computed
    time.sleep(1.0)
    assert server["proc"].poll() is None
    assert set(client.info()["models"]) == {"thor", "ddpm"}
    _, result = client.infer("ddpm", "slice", dict(DDPM_FAST))
    assert 0.0 <= result["score"] <= 1.0


def test_memory_stays_bounded_and_no_partial_files(client, server, studies):
    client.infer("ddpm", "slice", dict(DDPM_FAST))  # warm-up: network, caches
    before_files, before_mb = _snapshot(studies), _rss_mb(server["proc"].pid)
    for round_ in range(MEMORY_ROUNDS):
        client.infer("ddpm", "slice", {**DDPM_FAST, "seed": round_})
        with pytest.raises(Exception):
            client.infer("ddpm", "truncated", dict(DDPM_FAST))
    client.infer("ddpm", "slice", {**DDPM_FAST, "save_map": True})
    growth = _rss_mb(server["proc"].pid) - before_mb
    assert growth < MEMORY_GROWTH_LIMIT_MB, f"server memory grew by {growth:.0f} MB over {MEMORY_ROUNDS} rounds"
    new_files = _snapshot(studies) - before_files
    assert new_files <= {os.path.join("labels", "anomaly_map_ddpm", "slice.nii.gz")}, new_files
    assert not [f for f in _snapshot(studies) if "partial" in f or f.startswith(".") and f.endswith(".nii.gz")]
    assert server["proc"].poll() is None
