# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Outputs are written atomically: a writer interrupted mid-file leaves nothing under the final name."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import SaveImage

from monai_diffad.handlers import AnomalyResultsWriter
from monai_diffad.pipelines import inference_transforms
from monai_diffad.transforms.io import AtomicNibabelWriter, atomic_path


class _Interrupted(Exception):
    pass


def _half_then_fail(real_write_bytes: bytes = b"\x5c\x01\x00\x00" + b"\x00" * 200):
    """A stand-in for a writer killed mid-file: it writes the start of a file to the given path, then fails."""

    def write(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike)))
        with open(target, "wb") as f:
            f.write(real_write_bytes)
        raise _Interrupted("killed while writing")

    return write


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- the helper


def test_atomic_path_moves_into_place_and_keeps_suffix(tmp_path):
    target = tmp_path / "map.nii.gz"
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".nii.gz")
        assert os.path.basename(tmp).startswith(".") and not target.exists()
        with open(tmp, "w") as f:
            f.write("complete")
    assert target.read_text() == "complete" and _listing(tmp_path) == ["map.nii.gz"]


def test_atomic_path_failure_leaves_old_version_and_no_partial(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    with pytest.raises(_Interrupted):
        with atomic_path(target) as tmp:
            _half_then_fail()(tmp)
    assert target.read_text() == "old" and _listing(tmp_path) == ["scores.json"]
    with pytest.raises(_Interrupted):
        with atomic_path(tmp_path / "new.csv") as tmp:
            raise _Interrupted
    assert _listing(tmp_path) == ["scores.json"]


# ---------------------------------------------------------------- NIfTI outputs of the bundles


@pytest.fixture
def processed_item(tmp_path):
    """A pre-processed 2D NIfTI slice and a stacked (map, pseudo-healthy) prediction carrying its metadata."""
    data = np.zeros((40, 36, 1), np.float32)
    data[8:32, 6:30] = np.linspace(10, 100, 24 * 24).reshape(24, 24, 1)
    source = tmp_path / "inputs" / "case.nii.gz"
    source.parent.mkdir()
    nib.save(nib.Nifti1Image(data, np.diag([1.2, 1.2, 3.0, 1.0])), source)
    pre, post = inference_transforms("thor", image_size=16, output_dir=str(tmp_path / "out"), threshold=0.5)
    item = pre({"image": str(source)})
    image = item["image"]
    pred = torch.cat([image.as_tensor().clamp(0, 1), image.as_tensor()], dim=0)
    item["pred"] = MetaTensor(pred, meta=image.meta, applied_operations=image.applied_operations)
    return post, item, source


def test_bundle_outputs_are_written_and_valid(tmp_path, processed_item):
    post, item, source = processed_item
    out_dir = tmp_path / "out"
    post(item)
    names = _listing(out_dir)
    assert names == ["case_anomaly_label.nii.gz", "case_anomaly_map.nii.gz", "case_pseudo_healthy.nii.gz"]
    for name in names:
        assert nib.load(out_dir / name).shape[:2] == nib.load(source).shape[:2]


def test_interrupted_nifti_write_leaves_no_file_with_the_final_name(tmp_path, processed_item, monkeypatch):
    post, item, _ = processed_item
    out_dir = tmp_path / "out"
    monkeypatch.setattr(nib, "save", _half_then_fail())
    with pytest.raises(RuntimeError):  # MONAI's SaveImage reports the writer's failure
        post(dict(item))
    assert _listing(out_dir) == []  # neither the final name nor a partial temporary file


def test_plain_save_image_would_leave_a_half_file(tmp_path, processed_item, monkeypatch):
    """Control: the same interruption through MONAI's default writer leaves a truncated file that looks like output,
    so the test above can fail."""
    image = processed_item[1]["image"]
    monkeypatch.setattr(nib, "save", _half_then_fail())
    for writer, leftover in [(NibabelWriter, ["case_seg.nii.gz"]), (AtomicNibabelWriter, [])]:
        folder = tmp_path / writer.__name__
        saver = SaveImage(
            output_dir=folder, output_postfix="seg", separate_folder=False, print_log=False, writer=writer
        )
        with pytest.raises(RuntimeError):
            saver(image)
        assert _listing(folder) == leftover


# ---------------------------------------------------------------- score tables and overlays


def _engine_with(item) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(output=[item]))


def _result_item() -> dict:
    meta = {"filename_or_obj": "/data/case7.nii.gz"}
    return {
        "image": MetaTensor(torch.rand(1, 16, 16), meta=meta),
        "pred_pseudo_healthy": torch.rand(1, 16, 16),
        "pred_anomaly_map": torch.rand(1, 16, 16),
        "anomaly_label": torch.zeros(1, 16, 16, dtype=torch.uint8),
    }


def test_results_writer_tables_are_complete_or_absent(tmp_path, monkeypatch):
    writer = AnomalyResultsWriter(str(tmp_path), threshold=0.5, png=False)
    writer.iteration_completed(_engine_with(_result_item()))

    def interrupted_dump(obj, f, **kwargs):
        f.write('[{"image": "ca')
        raise _Interrupted("killed while writing")

    monkeypatch.setattr(json, "dump", interrupted_dump)
    with pytest.raises(_Interrupted):
        writer.completed(None)
    assert _listing(tmp_path) == ["scores.csv"]  # written before the interruption, complete
    assert "case7" in (tmp_path / "scores.csv").read_text()
    monkeypatch.undo()
    writer.completed(None)
    assert json.loads((tmp_path / "scores.json").read_text())[0]["image"] == "case7"
    assert _listing(tmp_path) == ["scores.csv", "scores.json"]


def test_results_writer_png_is_complete_or_absent(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    writer = AnomalyResultsWriter(str(tmp_path), threshold=0.5, png=True)
    monkeypatch.setattr(Figure, "savefig", lambda self, fname, **kw: _half_then_fail()(fname))
    with pytest.raises(_Interrupted):
        writer.iteration_completed(_engine_with(_result_item()))
    assert _listing(tmp_path) == []
    monkeypatch.undo()
    writer.iteration_completed(_engine_with(_result_item()))
    assert _listing(tmp_path) == ["case7_overlay.png"]
    assert (tmp_path / "case7_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
