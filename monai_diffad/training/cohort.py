# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Training slices from a user's folder or datalist of healthy scans, through the bundle's geometry contract.

``train.json`` calls :func:`training_slices` once, in ``initialize``, so a bad input stops the run before any
handler writes a checkpoint, a log or weights. Each scan goes through the ``preprocessing`` of the bundle's own
``inference.json`` (:func:`monai_diffad.bundles.bundle_config`), the one definition of how an image reaches the
network; the axial slices of a volume are then chosen by the rule of the built-in set
(:func:`monai_diffad.data.slices.select_axial_slices` on the brain mask the contract produced) and become the 2D
items ``{"image": (1, R, R), "mask": (1, R, R)}`` that :func:`monai_diffad.training.load_slice_items` gives for the
built-in set, so augmentation and validation do not change.

Without images (``dataset_dir`` missing, empty, or holding the ``train_slices_R.npz`` cache) the built-in template
set stays the default.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_diffad.bundles import bundle_config, image_datalist
from monai_diffad.data.build import VALIDATION_EVERY, training_set_path
from monai_diffad.data.slices import MIN_AREA_FRACTION, select_axial_slices
from monai_diffad.training.data import load_slice_items
from monai_diffad.transforms.io import atomic_path

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "RECORD_FILE",
    "cohort_slice_items",
    "split_subjects",
    "training_slices",
    "uses_own_data",
]

logger = logging.getLogger(__name__)

#: the file in ``output_dir`` that states where the slices came from, the split, the seed and the counts
RECORD_FILE = "training_data.json"
#: share of subjects held out for the validation loss when the datalist has no ``validation`` list
DEFAULT_VALIDATION_FRACTION = 0.1

Item = dict[str, np.ndarray]


def uses_own_data(dataset_dir: str, datalist: str | None = None, template_cache: str | None = None) -> bool:
    """Whether a run trains on the user's scans (``True``) or on the built-in template set (``False``).

    The built-in set is used when no ``datalist`` is given and ``dataset_dir`` is the template cache folder
    (``template_cache``, built there on first use), or an existing folder that is empty or holds a cached
    ``train_slices_*.npz``; any other existing folder is taken as a folder of scans, so a folder without readable
    images is an error (:func:`training_slices`) rather than a silent fall-back to the templates.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist and is not the template cache (a mistyped folder must not
            train on the templates).
    """
    if datalist:
        return True
    is_cache = template_cache is None or os.path.abspath(dataset_dir) == os.path.abspath(template_cache)
    if not os.path.isdir(dataset_dir):
        if is_cache:
            return False
        raise FileNotFoundError(f"dataset_dir '{dataset_dir}' does not exist (give a folder of healthy scans).")
    if not os.listdir(dataset_dir):
        return False
    return not glob.glob(os.path.join(dataset_dir, "train_slices_*.npz"))


def _datalist_items(dataset_dir: str, datalist: str | None) -> tuple[list[dict], list[dict] | None, str]:
    """``(training items, validation items or None, description)`` with absolute paths, checked to exist."""
    path = datalist or os.path.join(dataset_dir, "datalist.json")
    if not os.path.isfile(path):
        if datalist:
            raise FileNotFoundError(f"Datalist '{datalist}' does not exist.")
        return image_datalist(dataset_dir), None, f"folder {os.path.abspath(dataset_dir)}"
    with open(path) as f:
        lists = json.load(f)
    folder = os.path.dirname(os.path.abspath(path))  # image_datalist resolves relative paths against the datalist
    training = image_datalist(folder, path, split="training")
    validation = image_datalist(folder, path, split="validation") if lists.get("validation") else None
    return training, validation, f"datalist {os.path.abspath(path)}"


def _transform_message(error: BaseException) -> str:
    """The message of the error a transform raised: MONAI's ``Compose`` wraps it (a ``ValueError`` that names the
    file, from ``CheckedLoadImaged`` or ``BrainMaskd``) in ``RuntimeError("applying transform ...")``, which does
    not."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    return str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"


def _volume_slices(
    preprocessing: Callable[[dict], Mapping[str, Any]],
    item: Mapping[str, Any],
    keys: tuple[str, str],
    min_area_fraction: float,
) -> list[Item]:
    """The selected axial slices of one scan as items ``{"image": (1, R, R) float32 [0, 1], "mask": (1, R, R)}``.

    ``keys`` are the contract's ``(image_key, brain_mask_key)``.

    Raises:
        ValueError: naming the scan, when it cannot be read or the geometry contract refuses it (multi-channel
            image, mask of another shape, empty image, ...).
    """
    image_key, mask_key = keys
    source = str(item[image_key])
    try:
        out = preprocessing(dict(item))
    except Exception as e:  # readers and transforms fail in many ways; the user needs the file and the reason
        message = _transform_message(e)
        raise ValueError(message if source in message else f"Training image {source}: {message}") from e
    image = torch.as_tensor(out[image_key]).detach().cpu().float().numpy()
    mask = (torch.as_tensor(out[mask_key]).detach().cpu().numpy() > 0).astype(np.float32)
    if image.ndim == 3:  # a 2D slice: (1, R, R); the area rule compares slices of one volume, so it keeps the slice
        image, mask = image[..., None], mask[..., None]
    z = select_axial_slices(mask[0], min_area_fraction)
    # as in the built-in set: 0 outside the brain (the area resize can leave a faint rim beyond the nearest-resized
    # mask)
    return [{"image": image[..., k] * mask[..., k], "mask": mask[..., k]} for k in z]


def split_subjects(subjects: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The subjects held out for validation: a seeded ``fraction`` of them, at least one, never all.

    Args:
        subjects: distinct subject names (order does not matter: they are sorted first).
        fraction: share to hold out, in ``(0, 1)``.
        seed: seeds the draw, so the same seed gives the same split.

    Returns:
        The held-out names (empty for a single subject, whose slices are split instead).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}.")
    names = sorted(subjects)
    if len(names) < 2:
        return set()
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:count]}


def _single_subject_holdout(count: int) -> np.ndarray:
    """Every :data:`VALIDATION_EVERY`-th slice (as the built-in set holds out), the middle one when there are fewer."""
    held = np.arange(count) % VALIDATION_EVERY == VALIDATION_EVERY // 2
    if not held.any() and count >= 2:
        held[count // 2] = True
    return held


def cohort_slice_items(
    dataset_dir: str,
    resolution: int = 64,
    datalist: str | None = None,
    bundle: str = "ddpm",
    geometry_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    min_area_fraction: float = MIN_AREA_FRACTION,
) -> tuple[dict[str, list[Item]], dict[str, Any]]:
    """Training and validation slices of a user's healthy scans, and a record of how they were made.

    Args:
        dataset_dir: folder of scans (NIfTI, NRRD, MHA/MHD, DICOM-series folders; ``<name>_brain_mask<suffix>``
            beside an image is its brain mask), or a folder holding a decathlon ``datalist.json``.
        resolution: the network's input size ``R`` (the contract's ``image_size``).
        datalist: a decathlon datalist with a ``training`` list and optionally a ``validation`` list (items
            ``{"image": path[, "brain_mask": path][, "subject": name]}``, paths relative to the datalist file).
        bundle: the bundle whose ``inference.json`` defines the geometry contract.
        geometry_overrides: keys of that ``inference.json`` to set (``image_size`` is set to ``resolution``), e.g.
            ``{"field_of_view_mm": 200.0}``.
        seed: seeds the subject split (not offset on resume, so a resumed run keeps its split).
        validation_fraction: share of subjects held out when there is no ``validation`` list.
        min_area_fraction: slices whose brain area is below this share of the volume's largest are dropped.

    Returns:
        ``({"train": items, "validation": items}, record)``; items are ``{"image": (1, R, R) float32 in [0, 1],
        "mask": (1, R, R) float32 0/1}``; the record is JSON-ready (source, split rule, seed, subjects, counts).

    Raises:
        FileNotFoundError: no folder, no image in it, a missing datalist or a file it lists.
        ValueError: a scan the contract refuses (naming it), or too few slices to train and validate.
    """
    training, validation, described = _datalist_items(dataset_dir, datalist)
    overrides = {**dict(geometry_overrides or {}), "image_size": int(resolution)}
    parser = bundle_config(bundle, "inference.json", overrides)
    preprocessing = parser.get_parsed_content("preprocessing")
    keys = (parser.get_parsed_content("image_key"), parser.get_parsed_content("brain_mask_key"))

    def subject_slices(items: list[dict]) -> dict[str, list[Item]]:
        # slices of one subject never straddle the split: 2D files of one person share a datalist "subject"
        out: dict[str, list[Item]] = {}
        for item in items:
            name = str(item.get("subject", item["image"]))
            out.setdefault(name, []).extend(_volume_slices(preprocessing, item, keys, min_area_fraction))
            logger.debug("%s: %d slices so far", name, len(out[name]))
        return out

    by_subject = subject_slices(training)
    if validation is not None:
        rule = "the datalist's validation list"
        held_by_subject = subject_slices(validation)
        train_by_subject = by_subject
    elif len(by_subject) >= 2:
        rule = f"seeded hold-out of {validation_fraction:g} of the subjects (at least one)"
        held = split_subjects(list(by_subject), validation_fraction, seed)
        train_by_subject = {k: v for k, v in by_subject.items() if k not in held}
        held_by_subject = {k: v for k, v in by_subject.items() if k in held}
    else:
        rule = f"one subject: every {VALIDATION_EVERY}th slice held out"
        ((name, slices),) = by_subject.items()
        mask = _single_subject_holdout(len(slices))
        train_by_subject = {name: [s for s, h in zip(slices, mask) if not h]}
        held_by_subject = {name: [s for s, h in zip(slices, mask) if h]}
    split = {
        "train": [s for slices in train_by_subject.values() for s in slices],
        "validation": [s for slices in held_by_subject.values() for s in slices],
    }
    for part, items in split.items():
        if not items:
            raise ValueError(
                f"Training data from {described}: no {part} slices (split: {rule}); give more scans or a datalist "
                "with both 'training' and 'validation' lists."
            )
    record = {
        "source": described,
        "geometry": {"bundle": bundle, "overrides": overrides},
        "min_area_fraction": float(min_area_fraction),
        "split": rule,
        "seed": int(seed),
        "subjects": {
            "train": {k: len(v) for k, v in train_by_subject.items()},
            "validation": {k: len(v) for k, v in held_by_subject.items()},
        },
        "slices": {part: len(items) for part, items in split.items()},
    }
    return split, record


def training_slices(
    dataset_dir: str,
    resolution: int = 64,
    datalist: str | None = None,
    seed: int = 0,
    output_dir: str | None = None,
    min_train_slices: int = 1,
    template_cache: str | None = None,
    synthetic_subjects: int = 0,
    **cohort_options: Any,
) -> dict[str, list[Item]]:
    """The training and validation slices of a run: the user's scans, or the built-in template set.

    Which one follows :func:`uses_own_data`. The split, seed and slice counts are logged and, with ``output_dir``,
    written to ``<output_dir>/training_data.json`` (atomically, after every scan was read).

    Args:
        dataset_dir, resolution, datalist, seed: see :func:`cohort_slice_items`; for the built-in set only
            ``dataset_dir`` (the cache folder, built when missing) and ``resolution`` (64 or 128) apply.
        output_dir: folder of the record, created when needed; ``None`` writes nothing.
        min_train_slices: fewest training slices accepted (the loader drops incomplete batches: pass the batch size).
        template_cache: the built-in set's cache folder (see :func:`uses_own_data`).
        synthetic_subjects: for the built-in set, deformed copies of each template added to it (docs/data.md
            "Diversity recipe", seeded by ``seed``); 0 keeps the three templates alone.
        cohort_options: the other keywords of :func:`cohort_slice_items` (``bundle``, ``geometry_overrides``,
            ``validation_fraction``, ``min_area_fraction``), used for the user's scans only.

    Returns:
        ``{"train": items, "validation": items}``, items ``{"image": (1, R, R) float32 in [0, 1], "mask": (1, R, R)
        float32 0/1}``.

    Raises:
        FileNotFoundError, ValueError: see :func:`cohort_slice_items`; also fewer than ``min_train_slices``
            training slices.
    """
    if uses_own_data(dataset_dir, datalist, template_cache):
        if synthetic_subjects:
            raise ValueError("synthetic_subjects applies to the built-in template set only, not to your own scans.")
        split, record = cohort_slice_items(dataset_dir, resolution, datalist, seed=seed, **cohort_options)
    else:
        split = {part: load_slice_items(dataset_dir, resolution, part, synthetic_subjects, seed)
                 for part in ("train", "validation")}
        path = training_set_path(dataset_dir, resolution, synthetic_subjects, seed)
        record = {
            "source": f"built-in template set {os.path.abspath(path)}",
            "split": f"every {VALIDATION_EVERY}th slice of each template held out",
            "seed": int(seed),
            "synthetic_subjects": int(synthetic_subjects),
            "slices": {part: len(items) for part, items in split.items()},
        }
    if len(split["train"]) < min_train_slices:
        raise ValueError(
            f"Training data from {record['source']}: {len(split['train'])} training slices, fewer than one batch "
            f"({min_train_slices}); give more scans or lower batch_size."
        )
    record["resolution"] = int(resolution)
    logger.info(
        "Training data: %s; split: %s (seed %d); %d training and %d validation slices%s.",
        record["source"], record["split"], seed, record["slices"]["train"], record["slices"]["validation"],
        "".join(f"; {part} subjects {subjects}" for part, subjects in record.get("subjects", {}).items()),
    )
    if output_dir:
        _write_record(record, output_dir)
    return split


def _write_record(record: Mapping[str, Any], output_dir: str) -> str:
    """Write ``record`` to ``<output_dir>/training_data.json`` through a temporary file; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RECORD_FILE)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)  # override values from a config may be any type
    return path

