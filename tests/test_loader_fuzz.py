# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Fuzzing the image loaders: corrupted NIfTI/NRRD files through the shared inference pre-processing.

Every corrupted file must give either a valid result (finite, in [0, 1], at the network's size) or a ``ValueError``
that names the file, never a hang or a crash of the process. The cases run in a child process (run as a script:
``python tests/test_loader_fuzz.py <case_dir>``) so that a segmentation fault in a reader shows up as a failed test,
and each case has its own alarm so that a hang is reported with its case.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NUM_CASES = 30
SEED = 12
CASE_TIMEOUT_S = 60
IMAGE_SIZE = 16
SHAPE = (24, 20, 3)  # x, y, slices
NIFTI_HEADER_BYTES = 352  # 348-byte header + 4-byte extension flag


def _volume() -> np.ndarray:
    """A smooth positive "brain" with a dark background, float32, shape ``SHAPE``."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    return (np.clip(1.2 - x**2 - y**2, 0, None) * (1 + 0.1 * z) * 100).astype(np.float32)


def _nifti_bytes() -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(_volume(), np.diag([1.5, 1.5, 3.0, 1.0]))
    return image.to_bytes()


def _nrrd_bytes() -> bytes:
    header = (
        "NRRD0004\n"
        "type: float\n"
        "dimension: 3\n"
        f"sizes: {SHAPE[0]} {SHAPE[1]} {SHAPE[2]}\n"
        "space: left-posterior-superior\n"
        "space directions: (1.5,0,0) (0,1.5,0) (0,0,3)\n"
        "space origin: (0,0,0)\n"
        "encoding: raw\n"
        "endian: little\n\n"
    )
    return header.encode() + _volume().tobytes(order="F")


def _set_nifti_short(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 2] = struct.pack("<h", value)


def _mutate(kind: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corruption of a NIfTI (``kind`` "nii") or NRRD (``kind`` "nrrd") file: the bytes and a description."""
    data = bytearray(data)
    header_end = NIFTI_HEADER_BYTES if kind == "nii" else data.index(b"\n\n") + 2
    mutations = ["truncate", "truncate_header", "flip_header", "bad_field", "garbage", "empty"]
    mutation = rng.choices(mutations, weights=[2, 2, 4, 5, 1, 1])[0]
    if mutation == "truncate":
        cut = rng.randrange(header_end, len(data))
        return bytes(data[:cut]), f"truncated to {cut} bytes"
    if mutation == "truncate_header":
        cut = rng.randrange(0, header_end)
        return bytes(data[:cut]), f"truncated inside the header at {cut}"
    if mutation == "flip_header":
        positions = sorted(rng.randrange(0, header_end) for _ in range(rng.randint(1, 8)))
        for p in positions:
            data[p] ^= 1 << rng.randrange(8)
        return bytes(data), f"bit flips in the header at {positions}"
    if mutation == "bad_field" and kind == "nii":
        # (byte offset, struct format, value): dims, datatype, bitpix, pixdim, vox_offset of the NIfTI-1 header
        offset, fmt, value = rng.choice(
            [(40, "<h", 0), (40, "<h", 9), (40, "<h", -1), (42, "<h", 0), (44, "<h", -5), (46, "<h", 30000),
             (42, "<h", 32767), (46, "<h", 1), (70, "<h", 999), (70, "<h", 1), (72, "<h", 7), (76, "<f", float("nan")),
             (80, "<f", 0.0), (84, "<f", float("inf")), (108, "<f", 1e9), (108, "<f", -100.0)]
        )
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        return bytes(data), f"header field at byte {offset} set to {value}"
    if mutation == "bad_field":
        old_new = rng.choice(
            [("sizes: 24 20 3", "sizes: 24 20 300"), ("sizes: 24 20 3", "sizes: 0 20 3"),
             ("sizes: 24 20 3", "sizes: 24 20"), ("sizes: 24 20 3", "sizes: -4 20 3"),
             ("sizes: 24 20 3", "sizes: a b c"), ("dimension: 3", "dimension: 7"),
             ("type: float", "type: complex"), ("type: float", "type: double"), ("encoding: raw", "encoding: gzip"),
             ("endian: little", "endian: big"), ("(1.5,0,0)", "(0,0,0)"), ("(1.5,0,0)", "(nan,0,0)")]
        )
        return bytes(data.replace(old_new[0].encode(), old_new[1].encode())), f"{old_new[0]!r} -> {old_new[1]!r}"
    if mutation == "garbage":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))), "random bytes"
    return b"", "empty file"


def make_cases(case_dir: Path, num_cases: int = NUM_CASES, seed: int = SEED) -> list[dict[str, str]]:
    """Write ``num_cases`` seeded corrupted files (NIfTI, gzipped NIfTI, NRRD) to ``case_dir``."""
    rng = random.Random(seed)
    sources = {"nii": _nifti_bytes(), "nrrd": _nrrd_bytes()}
    cases = []
    for i in range(num_cases):
        suffix = rng.choice([".nii", ".nii.gz", ".nrrd"])
        kind = "nrrd" if suffix == ".nrrd" else "nii"
        data, description = _mutate(kind, sources[kind], rng)
        if suffix == ".nii.gz":
            data = gzip.compress(data, mtime=0)
            if rng.random() < 0.3:  # also a truncated gzip stream
                data = data[: rng.randrange(0, len(data))]
                description += ", gzip stream truncated"
        path = case_dir / f"case{i:02d}{suffix}"
        path.write_bytes(data)
        cases.append({"path": str(path), "description": description})
    return cases


# ---------------------------------------------------------------- the child process


class _CaseTimeout(Exception):
    pass


def _exception_chain(error: BaseException) -> str:
    parts = []
    while error is not None:
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


def _run_cases(case_dir: str) -> None:
    """Child process: run every case through the THOR bundle's preprocessing and print one JSON line per case."""
    import torch

    torch.set_num_threads(1)
    from monai_diffad.pipelines import inference_transforms

    def on_alarm(signum, frame):
        raise _CaseTimeout(f"no answer within {CASE_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    preprocessing = inference_transforms("thor", image_size=IMAGE_SIZE)[0]
    cases = json.loads(Path(case_dir, "cases.json").read_text())
    for i, case in enumerate(cases):
        print(json.dumps({"index": i, "status": "started"}), flush=True)
        signal.alarm(CASE_TIMEOUT_S)
        try:
            image = preprocessing({"image": case["path"]})["image"]
            result = {
                "status": "ok",
                "shape": list(image.shape),
                "dtype": str(image.dtype),
                "finite": bool(torch.isfinite(image).all()),
                "min": float(image.min()),
                "max": float(image.max()),
            }
        except _CaseTimeout as e:
            result = {"status": "hang", "message": str(e)}
        except Exception as e:  # what is raised is judged by the parent
            result = {"status": "error", "message": _exception_chain(e)}
        finally:
            signal.alarm(0)
        print(json.dumps({"index": i, **result}), flush=True)


# ---------------------------------------------------------------- the test


def test_corrupted_headers_give_a_result_or_a_clear_error(tmp_path):
    cases = make_cases(tmp_path)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=NUM_CASES * CASE_TIMEOUT_S,
        cwd=ROOT,
        env=env,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    finished = {r["index"]: r for r in lines if r["status"] != "started"}
    started = [r["index"] for r in lines if r["status"] == "started"]
    crashed = [cases[i] for i in started if i not in finished]
    assert proc.returncode == 0 and not crashed, f"died (rc {proc.returncode}) on {crashed}: {proc.stderr[-2000:]}"
    assert len(finished) == NUM_CASES
    outcomes = {"ok": 0, "error": 0}
    for i, result in sorted(finished.items()):
        case = cases[i]
        assert result["status"] != "hang", f"hang on {case}"
        outcomes[result["status"]] += 1
        if result["status"] == "ok":
            # a corrupted file that still loads must give a usable, in-range image at the network's size
            assert result["finite"] and 0.0 <= result["min"] and result["max"] <= 1.0, (case, result)
            assert result["shape"][:3] == [1, IMAGE_SIZE, IMAGE_SIZE], (case, result)
            assert result["dtype"] == "torch.float32", (case, result)
        else:
            # one error type for "unusable input" (the MONAI Label app maps it to a client error), naming the file
            assert "ValueError: " in result["message"], f"not a ValueError: {case} {result}"
            assert os.path.basename(case["path"]) in result["message"], f"error does not name the file: {case} {result}"
    # the corpus really exercises both outcomes (a fuzz pass where everything loads or nothing does proves little)
    assert outcomes["error"] > 0


if __name__ == "__main__":
    _run_cases(sys.argv[1])
