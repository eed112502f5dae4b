# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Training on a user's folder or datalist of healthy scans (issue 20, item 2): ``bundles/ddpm/train.json`` and
``bundles/disyre/train.json`` with ``dataset_dir``/``datalist``, the geometry contract, the split record,
``max_iterations``, the weights file, and bad inputs that must stop the run before anything is written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader

from monai_diffad.bundles import bundle_config
from monai_diffad.data.scanner import centred_affine, scanner_grid, store_as_scanned
from monai_diffad.data.sources import load_source_volume, source_available
from monai_diffad.networks import load_state_dict_safely
from monai_diffad.training import (
    RECORD_FILE,
    IterationLimit,
    cohort_slice_items,
    split_subjects,
    training_slices,
    uses_own_data,
)

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_mni152 = pytest.mark.skipif(not source_available("mni152"), reason="needs nilearn's MNI152 template")
#: a tiny network keeps the runs to seconds on two CPU cores (4 groups: GroupNorm needs channels divisible by groups)
TINY = {
    "network_def#channels": [8, 8, 8],
    "network_def#attention_levels": [False, False, False],
    "network_def#num_head_channels": 8,
    "network_def#norm_num_groups": 4,
}


def _save(array: np.ndarray, affine: np.ndarray, path: str) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


@pytest.fixture(scope="module")
def anatomy() -> dict[str, Any]:
    """MNI152 at 2 mm (x, y) and 4 mm (z): small enough to preprocess in a fraction of a second per scan."""
    volume = load_source_volume("mni152")
    step = (2, 2, 4)
    image = volume["image"][:: step[0], :: step[1], :: step[2]].astype(np.float32)
    brain = volume["mask"][:: step[0], :: step[1], :: step[2]]
    return {"image": image, "brain": brain, "affine": centred_affine(image.shape, step)}


@pytest.fixture(scope="module")
def cohort(anatomy, tmp_path_factory) -> str:
    """Three healthy scans in foreign geometries, as a user's folder would hold them.

    - ``a_lps``: stored LPS (both in-plane axes reversed on disk);
    - ``b_scanner``: 0.9 x 0.9 x 3 mm, a 256 mm field of view, the brain 30 mm off-centre (LPS, like a scanner);
    - ``c_masked``: RAS with a ``_brain_mask.nii.gz`` sibling, and a bright "scalp" outside the brain that only the
      given mask excludes.
    """
    folder = tmp_path_factory.mktemp("healthy")
    image, brain, affine = anatomy["image"], anatomy["brain"], anatomy["affine"]
    lps = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = affine[:3, :3] @ np.array([image.shape[0] - 1, image.shape[1] - 1, 0]) + affine[:3, 3]
    _save(image[::-1, ::-1].copy(), lps, str(folder / "a_lps.nii.gz"))
    grid, shape = scanner_grid(
        np.asarray(image.shape) * np.diag(affine)[:3], spacing=(0.9, 0.9, 3.0), offset_mm=(30.0, -20.0, 0.0)
    )
    store_as_scanned({"image": image}, affine, {"image": str(folder / "b_scanner.nii.gz")}, grid, shape)
    head = image + 0.3 * (~brain & (np.random.default_rng(0).random(image.shape) < 0.5))  # not skull-stripped
    _save(head.astype(np.float32), affine, str(folder / "c_masked.nii.gz"))
    _save(brain.astype(np.uint8), affine, str(folder / "c_masked_brain_mask.nii.gz"))
    return str(folder)


def _train_parser(bundle: str, output_dir: str, overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", bundle, "train.json"))
    parser.update({"output_dir": output_dir, "num_threads": 1, "batch_size": 4, "resolution": 64, **overrides})
    return parser


def _run(parser: ConfigParser) -> None:
    for section in ("initialize", "run"):  # what `python -m monai.bundle run` does
        parser.get_parsed_content(section, lazy=True)


def _written(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def _record(output_dir: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, RECORD_FILE)) as f:
        return json.load(f)


@needs_mni152
def test_ddpm_trains_on_a_folder_of_scans(cohort, tmp_path):
    out = str(tmp_path / "out")
    shipped = os.path.join(REPO, "bundles", "ddpm", "models", "model.pt")
    parser = _train_parser(
        "ddpm", out, {"dataset_dir": cohort, "max_iterations": 3, "epoch_length": 1, "val_interval": 2, **TINY}
    )
    # a run on the user's data writes its own weights, never the shipped demo weights
    assert parser.get_parsed_content("model_file") == os.path.join(out, "model.pt") != shipped
    _run(parser)
    assert parser.get_parsed_content("trainer").state.iteration == 3  # max_iterations stopped it, not max_epochs
    with open(os.path.join(out, "logs", "val_loss.csv")) as f:
        assert len(f.read().splitlines()) == 2  # header + one validation round (epoch 2; epoch 3 was cut short)
    record = _record(out)
    subjects = record["subjects"]
    assert len(subjects["train"]) == 2 and len(subjects["validation"]) == 1  # 3 subjects: one held out, seeded
    assert record["seed"] == 0 and record["split"].startswith("seeded hold-out")
    data = parser.get_parsed_content("training_data")
    assert record["slices"] == {"train": len(data["train"]), "validation": len(data["validation"])}
    assert sum(subjects["train"].values()) == len(data["train"])
    for item in data["train"]:
        assert item["image"].shape == item["mask"].shape == (1, 64, 64) and item["image"].dtype == np.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    # every subject went through one contract: similar slice counts whatever the geometry on disk (the 3 mm scan
    # has fewer slices than the 4 mm ones only by its z spacing, not by a lost brain)
    counts = {os.path.basename(k): v for part in subjects.values() for k, v in part.items()}
    assert counts["a_lps.nii.gz"] == counts["c_masked.nii.gz"] and counts["b_scanner.nii.gz"] >= counts["a_lps.nii.gz"]
    assert os.path.isfile(os.path.join(out, "checkpoints", "checkpoint_final_iteration=3.pt"))
    # the weights load safely, and into the DDPM inference bundle's network as its --checkpoint would
    weights = load_state_dict_safely(os.path.join(out, "model.pt"))
    ema = parser.get_parsed_content("ema_network").state_dict()
    assert all(torch.equal(weights[k], v.cpu()) for k, v in ema.items())  # the final EMA weights
    inference = bundle_config("ddpm", "inference.json", {"checkpoint": os.path.join(out, "model.pt"), **TINY})
    handler = inference.get_parsed_content("handlers")[0]
    assert isinstance(handler, CheckpointLoader)
    handler(Engine(lambda engine, batch: None))
    loaded = inference.get_parsed_content("network").state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in weights.items())


@needs_mni152
def test_disyre_trains_on_a_datalist_with_a_validation_list(cohort, tmp_path):
    datalist = tmp_path / "lists" / "healthy.json"
    datalist.parent.mkdir()
    rel = os.path.relpath(cohort, datalist.parent)  # paths relative to the datalist file
    datalist.write_text(json.dumps({
        "training": [
            {"image": f"{rel}/a_lps.nii.gz"},
            {"image": f"{rel}/c_masked.nii.gz", "brain_mask": f"{rel}/c_masked_brain_mask.nii.gz"},
        ],
        "validation": [{"image": f"{rel}/b_scanner.nii.gz"}],
    }))
    out = str(tmp_path / "out")
    parser = _train_parser(
        "disyre", out, {"datalist": str(datalist), "max_iterations": 2, "val_interval": 1, "time_limit_s": None, **TINY}
    )
    assert parser.get_parsed_content("model_file") == os.path.join(out, "model.pt")
    _run(parser)
    assert parser.get_parsed_content("trainer").state.iteration == 2
    record = _record(out)
    assert record["split"] == "the datalist's validation list"
    assert [os.path.basename(k) for k in record["subjects"]["validation"]] == ["b_scanner.nii.gz"]
    weights = load_state_dict_safely(os.path.join(out, "model.pt"))
    assert weights.keys() == parser.get_parsed_content("network").state_dict().keys()


@needs_mni152
def test_given_brain_mask_is_used_and_a_single_subject_splits_its_slices(anatomy, cohort, tmp_path):
    for name in ("c_masked.nii.gz", "c_masked_brain_mask.nii.gz"):
        os.symlink(os.path.join(cohort, name), tmp_path / name)
    split, record = cohort_slice_items(str(tmp_path), resolution=64, seed=3)
    # the bright scalp is outside the given mask, so it is not in the slices (the foreground mask would keep it)
    for item in split["train"] + split["validation"]:
        assert not item["image"][item["mask"] == 0].any()
    total = len(split["train"]) + len(split["validation"])
    assert record["split"].startswith("one subject") and total > 10
    assert len(split["validation"]) == len(range(5, total, 10))  # every 10th slice, as the built-in set holds out


@needs_mni152
def test_2d_slices_of_one_subject_stay_on_one_side_of_the_split(anatomy, tmp_path):
    items = []
    for i, z in enumerate((18, 22, 26, 30)):  # axial slices through the brain, 2D files as some exports give them
        name = f"slice{i}.nii.gz"
        _save(anatomy["image"][..., z], anatomy["affine"], str(tmp_path / name))
        items.append({"image": name, "subject": f"p{i // 2}"})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    split, record = cohort_slice_items(str(tmp_path), resolution=64, seed=0)
    assert record["source"].startswith("datalist") and len(split["train"]) == len(split["validation"]) == 2
    assert sorted(record["subjects"]["train"]) + sorted(record["subjects"]["validation"]) in (["p0", "p1"], ["p1", "p0"])
    assert all(item["image"].shape == item["mask"].shape == (1, 64, 64) for item in split["train"])


def test_split_subjects_is_seeded_and_keeps_training_subjects():
    names = [f"s{i}" for i in range(20)]
    assert split_subjects(names, 0.1, 0) == split_subjects(list(reversed(names)), 0.1, 0)
    assert len(split_subjects(names, 0.1, 0)) == 2 and split_subjects(names, 0.1, 0) != split_subjects(names, 0.1, 1)
    assert len(split_subjects(["a", "b"], 0.1, 0)) == 1  # at least one validation subject, one training subject
    assert len(split_subjects(["a", "b"], 0.9, 0)) == 1
    assert split_subjects(["a"], 0.1, 0) == set()
    with pytest.raises(ValueError, match="validation_fraction"):
        split_subjects(names, 1.0, 0)


def test_built_in_cache_stays_the_default(tmp_path):
    missing = str(tmp_path / "missing")
    assert not uses_own_data(missing, template_cache=missing)  # the cache folder: built on first use, as before
    with pytest.raises(FileNotFoundError, match="missing"):  # a mistyped folder of scans never trains on templates
        uses_own_data(missing, template_cache=str(tmp_path / "data_cache"))
    assert not uses_own_data(str(tmp_path))  # an empty folder: a fresh cache folder
    (tmp_path / "train_slices_64.npz").write_bytes(b"")
    assert not uses_own_data(str(tmp_path))
    assert uses_own_data(str(tmp_path), datalist="list.json")
    other = tmp_path / "scans"
    other.mkdir()
    (other / "notes.txt").write_text("no images here")
    assert uses_own_data(str(other))
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", "ddpm", "train.json"))
    parser["bundle_root"] = str(tmp_path / "bundle")
    # the default run (template cache, default output_dir) still writes the shipped weights; any output_dir its own
    assert parser.get_parsed_content("model_file") == str(tmp_path / "bundle" / "models" / "model.pt")
    parser["output_dir"] = str(tmp_path / "out")
    assert parser.get_parsed_content("model_file", lazy=False) == str(tmp_path / "out" / "model.pt")


def test_iteration_limit_stops_and_completes_also_when_resumed_past_it():
    completed = []
    engine = Engine(lambda e, b: None)
    IterationLimit(5).attach(engine)
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    engine.run(range(3), max_epochs=10)
    assert engine.state.iteration == 5 and completed == [5]
    resumed = Engine(lambda e, b: None)
    resumed.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 7))  # as CheckpointLoader would
    IterationLimit(5).attach(resumed)
    resumed.run(range(3), max_epochs=10)
    assert resumed.state.iteration == 7
    with pytest.raises(ValueError, match="max_iterations"):
        IterationLimit(0)


def _bad_folder_unreadable(anatomy, folder) -> str:
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    return str(folder / "broken.nii.gz")


def _bad_folder_no_image(anatomy, folder) -> str:
    (folder / "notes.txt").write_text("not an image")
    return str(folder)


def _bad_datalist_missing_file(anatomy, folder) -> str:
    _save(anatomy["image"], anatomy["affine"], str(folder / "ok.nii.gz"))
    (folder / "datalist.json").write_text(json.dumps({"training": [{"image": "ok.nii.gz"}, {"image": "gone.nii.gz"}]}))
    return str(folder / "gone.nii.gz")


def _bad_mask_shape(anatomy, folder) -> str:
    _save(anatomy["image"], anatomy["affine"], str(folder / "ok.nii.gz"))
    _save(anatomy["image"], anatomy["affine"], str(folder / "scan.nii.gz"))
    _save(anatomy["brain"][:-4].astype(np.uint8), anatomy["affine"], str(folder / "scan_brain_mask.nii.gz"))
    return str(folder / "scan_brain_mask.nii.gz")


def _bad_multichannel(anatomy, folder) -> str:
    _save(anatomy["image"], anatomy["affine"], str(folder / "ok.nii.gz"))
    _save(np.stack([anatomy["image"]] * 3, -1), anatomy["affine"], str(folder / "rgb.nii.gz"))
    return str(folder / "rgb.nii.gz")


@needs_mni152
@pytest.mark.parametrize(
    "make_bad", [_bad_folder_unreadable, _bad_folder_no_image, _bad_datalist_missing_file, _bad_mask_shape,
                 _bad_multichannel]
)
def test_bad_input_stops_before_anything_is_written(anatomy, tmp_path, make_bad):
    data = tmp_path / "data"
    data.mkdir()
    culprit = make_bad(anatomy, data)
    out = tmp_path / "out"
    parser = _train_parser("ddpm", str(out), {"dataset_dir": str(data), "max_iterations": 1, **TINY})
    with pytest.raises(RuntimeError) as info:  # MONAI's config parser wraps the error of the expression
        parser.get_parsed_content("initialize", lazy=True)
    error = info.value
    while isinstance(error, RuntimeError) and error.__cause__ is not None:  # the parser's wrapper(s)
        error = error.__cause__
    assert isinstance(error, (ValueError, FileNotFoundError)) and culprit in str(error), str(error)
    assert not out.exists() or _written(str(out)) == []  # no record, log, checkpoint or weights


@needs_mni152
def test_too_few_slices_for_a_batch_is_refused(cohort, tmp_path):
    os.symlink(os.path.join(cohort, "a_lps.nii.gz"), tmp_path / "a_lps.nii.gz")
    with pytest.raises(ValueError, match="fewer than one batch"):
        training_slices(str(tmp_path), 64, min_train_slices=10_000, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@needs_mni152
def test_synthetic_subjects_are_for_the_built_in_set_only(cohort, tmp_path):
    with pytest.raises(ValueError, match="synthetic_subjects applies to the built-in template set"):
        training_slices(cohort, 64, synthetic_subjects=2, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bundle", ["ddpm", "disyre"])
def test_train_bundles_pass_the_diversity_options_through(bundle, tmp_path, monkeypatch):
    calls: dict[str, Any] = {}

    def fake_slices(*args: Any, **kwargs: Any) -> dict[str, list]:
        calls.update(kwargs)
        return {"train": [], "validation": []}

    monkeypatch.setattr("monai_diffad.training.training_slices", fake_slices)
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", bundle, "train.json"))
    parser["bundle_root"] = str(tmp_path / "bundle")
    assert (parser["synthetic_subjects"], parser["augmentation_recipe"]) == (0, "default")  # the shipped recipe
    parser["synthetic_subjects"] = 3
    parser["augmentation_recipe"] = "diverse"
    parser.get_parsed_content("training_data", lazy=False)
    assert calls["synthetic_subjects"] == 3
    augmentation = parser.get_parsed_content("train_transforms", lazy=False).transforms[0]
    names = [type(t).__name__ for t in augmentation.flatten().transforms]
    assert "RandGaussianNoised" in names and "RandGaussianSmoothd" in names  # the diverse intensity augmentation
