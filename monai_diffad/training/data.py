# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Training and validation items from the cached healthy slices (``python -m monai_diffad.data build --what train``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from monai.utils import look_up_option

from monai_diffad.data.build import ensure_training_set
from monai_diffad.noise import make_noise

__all__ = ["load_slice_items", "fixed_noise_items"]


def load_slice_items(
    dataset_dir: str, resolution: int = 64, split: str = "train", synthetic_subjects: int = 0, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Items ``{"image": (1, R, R) float32 [0, 1], "mask": (1, R, R) float32}`` of the healthy training set.

    The set is built from the installed sources when its cache is missing.

    Args:
        dataset_dir: folder of the cached ``train_slices_{R}.npz``.
        resolution: 64 or 128.
        split: ``"train"`` (slices used for training) or ``"validation"`` (held-out slices for the validation loss).
        synthetic_subjects: deformed copies of each template in the set (docs/data.md "Diversity recipe"; 0: the
            three templates alone).
        seed: seed of those copies.

    Returns:
        A list of dictionaries, one per base slice.
    """
    keep_validation = look_up_option(split, {"train": False, "validation": True})
    # Read each array once: indexing the NpzFile itself decompresses the whole array on every access.
    with np.load(ensure_training_set(dataset_dir, resolution, synthetic_subjects, seed)) as data:
        rows = np.nonzero(data["validation"] == keep_validation)[0]
        images, masks = data["images"][rows], data["masks"][rows]
    return [
        {"image": image[None].astype(np.float32), "mask": mask[None].astype(np.float32)}
        for image, mask in zip(images, masks)
    ]


def fixed_noise_items(
    items: list[dict[str, np.ndarray]],
    transform: Callable[[dict], dict],
    num_train_timesteps: int = 1000,
    copies: int = 2,
    seed: int = 0,
    noise_type: str = "gaussian",
    simplex_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Freeze augmentation, noise and timesteps of validation items so validation losses are comparable over time.

    Args:
        items: base items (see :func:`load_slice_items`).
        transform: the training transform chain (random augmentation + intensity mapping); it is re-seeded here.
        num_train_timesteps: timesteps are drawn uniformly in ``[0, num_train_timesteps)``.
        copies: augmented copies per base item.
        seed: seeds the transform and the noise generator.
        noise_type: ``"gaussian"`` or ``"simplex"``, as the network is trained with
            (:class:`monai_diffad.training.NoisePrepareBatch`).
        simplex_kwargs: options of :func:`monai_diffad.noise.simplex_noise` for Simplex noise.

    Returns:
        Items ``{"image": (1, R, R), "noise": (1, R, R), "timesteps": () long}``.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        for item in items:
            image = torch.as_tensor(transform(dict(item))["image"]).float()
            image = image.as_tensor() if hasattr(image, "as_tensor") else image  # drop MetaTensor metadata
            noise = make_noise(noise_type, (1, *image.shape), generator=generator, simplex_kwargs=simplex_kwargs)[0]
            timesteps = torch.randint(0, num_train_timesteps, (), generator=generator)
            out.append({"image": image, "noise": noise, "timesteps": timesteps})
    return out
