# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Labelled 2D evaluation sets: loading (npz export or decathlon datalist), item selection, batching.

A set is what ``python -m monai_diffad.data build --what dev`` writes (docs/data.md, Recipe 2): images in [0, 1], binary
lesion masks, brain masks and a size class per item (0 lesion-free, 1 small, 2 medium, 3 large, from the 128 x 128
masks even in the 64 x 64 variant).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import LoadImage

from monai_diffad.metrics import lesion_size_classes

__all__ = ["EvaluationSet", "load_evaluation_set", "resolve_data_path", "select_items", "LABELLED_SPLITS"]

#: datalist lists read by :func:`load_evaluation_set` (the dev set keeps its lesion-free slices in "validation")
LABELLED_SPLITS = ("test", "validation")
#: resolution of the size-class bounds (SIZE_STRATA_BOUNDS are lesion pixel counts at 128 x 128)
_STRATA_RESOLUTION = 128


@dataclass
class EvaluationSet:
    """A labelled set of 2D slices held as arrays.

    Attributes:
        images: (N, H, W) float32 images in [0, 1].
        labels: (N, H, W) uint8 binary lesion masks.
        brain_masks: (N, H, W) uint8 binary masks of the pixels to score.
        size_class: (N,) int64 lesion size class per item (0 lesion-free, 1 small, 2 medium, 3 large, -1 other).
        source: where the set was read from, for reports.
    """

    images: np.ndarray
    labels: np.ndarray
    brain_masks: np.ndarray
    size_class: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {self.images.shape}.")
        for name in ("labels", "brain_masks"):
            if getattr(self, name).shape != self.images.shape:
                shape = getattr(self, name).shape
                raise ValueError(f"{name} must have the shape of images {self.images.shape}, got {shape}.")
        if self.size_class.shape != (len(self.images),):
            raise ValueError(f"size_class must hold one value per image, got shape {self.size_class.shape}.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Items ``indices`` as tensors: ``image`` (B, 1, H, W) float32, ``label`` and ``brain_mask`` (B, 1, H, W)
        uint8, ``size_class`` (B,) int64; all on ``device`` except ``size_class`` (CPU)."""
        index = np.asarray(indices, dtype=np.int64)
        return {
            "image": torch.as_tensor(self.images[index][:, None], dtype=torch.float32, device=device),
            "label": torch.as_tensor(self.labels[index][:, None], dtype=torch.uint8, device=device),
            "brain_mask": torch.as_tensor(self.brain_masks[index][:, None], dtype=torch.uint8, device=device),
            "size_class": torch.as_tensor(self.size_class[index], dtype=torch.int64),
        }


def _squeeze_channel(array: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) -> (N, H, W)."""
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"'{name}' must be (N, H, W) or (N, 1, H, W), got shape {array.shape}.")
    return array


def _size_classes_from_labels(labels: np.ndarray) -> np.ndarray:
    """Size classes from the masks, scaling pixel counts to the 128 x 128 grid of the strata bounds."""
    scale = (_STRATA_RESOLUTION / labels.shape[1]) * (_STRATA_RESOLUTION / labels.shape[2])
    return lesion_size_classes(torch.as_tensor(labels), area_scale=scale).numpy()


def _load_npz(path: str) -> EvaluationSet:
    with np.load(path) as data:
        missing = [k for k in ("images", "masks", "brain_masks") if k not in data.files]
        if missing:
            raise ValueError(f"'{path}' lacks the arrays {missing} (has {data.files}).")
        images = _squeeze_channel(data["images"].astype(np.float32), "images")
        labels = _squeeze_channel(data["masks"], "masks").astype(np.uint8)
        brain = _squeeze_channel(data["brain_masks"], "brain_masks").astype(np.uint8)
        if "size_class" in data.files:
            classes = data["size_class"].astype(np.int64)
        else:
            classes = _size_classes_from_labels(labels)
    return EvaluationSet(images, labels, brain, classes, source=path)


def _load_datalist(path: str) -> EvaluationSet:
    with open(path) as f:
        content = json.load(f)
    items = [item for split in LABELLED_SPLITS for item in content.get(split, [])]
    if not items:
        raise ValueError(f"Datalist '{path}' has no items in {list(LABELLED_SPLITS)}.")
    base = os.path.dirname(os.path.abspath(path))
    loader = LoadImage(image_only=True, dtype=np.float32)
    arrays: dict[str, list[np.ndarray]] = {"image": [], "label": [], "brain_mask": []}
    for i, item in enumerate(items):
        for key, values in arrays.items():
            if key not in item:
                raise ValueError(f"Item {i} of '{path}' has no '{key}'; evaluation needs image, label and brain_mask.")
            values.append(np.asarray(loader(os.path.join(base, item[key]))))
    labels = (np.stack(arrays["label"]) > 0).astype(np.uint8)
    if all("size_class" in item for item in items):
        classes = np.asarray([int(item["size_class"]) for item in items], dtype=np.int64)
    else:
        classes = _size_classes_from_labels(labels)
    brain = (np.stack(arrays["brain_mask"]) > 0).astype(np.uint8)
    return EvaluationSet(np.stack(arrays["image"]), labels, brain, classes, source=path)


def load_evaluation_set(path: str) -> EvaluationSet:
    """Read a labelled set from an npz export or a decathlon-style datalist.

    Args:
        path: ``.npz`` with ``images``, ``masks``, ``brain_masks`` (N, H, W) and optionally ``size_class`` (N,);
            or a ``.json`` datalist whose ``test`` and ``validation`` items have ``image``, ``label`` and
            ``brain_mask`` paths (relative to the datalist) and optionally ``size_class``. Missing size classes are
            computed from the masks, with pixel counts scaled to 128 x 128.

    Returns:
        The set, in file order (npz) or ``test`` items then ``validation`` items (datalist).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown file type, missing arrays or keys, inconsistent shapes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Evaluation data '{path}' does not exist; build it with "
                                "'python -m monai_diffad.data build --out data_cache --what dev'.")
    if path.endswith(".npz"):
        return _load_npz(path)
    if path.endswith(".json"):
        return _load_datalist(path)
    raise ValueError(f"Evaluation data must be an .npz export or a .json datalist, got '{path}'.")


def resolve_data_path(path: str, resolution: int | None = None) -> str:
    """The data file for ``path``: the file itself, or inside a folder ``dev_<R>.npz``, ``datalist_<R>.json`` or
    ``datalist.json`` (the first that exists; ``R`` = ``resolution``, only ``datalist.json`` when it is None).

    Raises:
        FileNotFoundError: nothing suitable exists.
    """
    if os.path.isfile(path):
        return path
    names = [f"dev_{resolution}.npz", f"datalist_{resolution}.json"] if resolution is not None else []
    names.append("datalist.json")
    for name in names:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No evaluation data at '{path}' (looked for {names}); build it with "
        f"'python -m monai_diffad.data build --out {path} --what dev'."
    )


def select_items(size_class: np.ndarray, limit: int | None = None, order: Sequence[int] | None = None) -> list[int]:
    """Indices of up to ``limit`` items taken in turn from each size class, so small limits still cover every stratum.

    Args:
        size_class: (N,) size class per item.
        limit: number of items; ``None`` (or >= N) takes all.
        order: classes in the order they are visited in each round; default ascending. Classes not listed are skipped.

    Returns:
        Indices: ascending when ``order`` is None, else in round-robin order (e.g. for example figures).

    Raises:
        ValueError: ``limit`` < 1.
    """
    size_class = np.asarray(size_class).reshape(-1)
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    classes = sorted(set(size_class.tolist())) if order is None else list(order)
    queues = [np.flatnonzero(size_class == c).tolist() for c in classes]
    picked: list[int] = []
    total = sum(len(q) for q in queues)
    wanted = total if limit is None else min(int(limit), total)
    for round_index in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if len(picked) < wanted and round_index < len(queue):
                picked.append(queue[round_index])
    return sorted(picked) if order is None else picked
