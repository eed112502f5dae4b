# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The inference pre- and post-processing every bundle and the MONAI Label app share.

Defined once here so the methods differ only in their inferer: load any NIfTI/NRRD/MHA/DICOM input, normalise
intensities like the training data, bring slices to the network's in-plane size; afterwards split the inferer's
stacked output, restore it to the input's grid, bin the map into a label and save everything as NIfTI.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    Lambdad,
    Orientationd,
    SaveImaged,
    SplitDimd,
)

from monai_diffad.transforms import AnomalyMapToLabeld, ForegroundPercentileScaled, InPlaneResized
from monai_diffad.transforms.io import AtomicNibabelWriter, CheckedLoadImaged

__all__ = ["inference_preprocessing", "inference_postprocessing", "OUTPUT_KEYS"]

#: keys of the post-processed items: ``pred_<field>`` for each stacked inferer output, and the label.
OUTPUT_KEYS = {"anomaly_map": "pred_anomaly_map", "pseudo_healthy": "pred_pseudo_healthy", "label": "anomaly_label"}


def inference_preprocessing(
    image_size: int | Sequence[int] = 64,
    normalize_intensity: bool = True,
    percentile: float = 99.5,
    image_key: str = "image",
    axcodes: str | None = "RAS",
    image_only: bool = True,
) -> Compose:
    """Load → channel first → orientation → foreground-percentile scaling to [0, 1] → in-plane resize (invertible).

    Args:
        image_size: the network's in-plane size (an int for square).
        normalize_intensity: apply :class:`~monai_diffad.transforms.ForegroundPercentileScaled` (turn off for inputs
            already in [0, 1] with the training data's convention).
        percentile: foreground percentile mapped to 1.
        image_key: the image's key.
        axcodes: orientation the slices are taken in (the training slices are RAS ``[x, y]`` axial planes, so a
            volume's last axis must run inferior→superior); ``None`` keeps the stored orientation.
        image_only: ``LoadImaged``'s option (MONAI Label wants the meta dictionary too).

    Returns:
        A ``Compose`` giving ``(1, H', W')`` or ``(1, H', W', D)`` float32 MetaTensors in [0, 1]. Unusable inputs
        (unreadable or corrupted files, NaN/inf, empty or constant images) raise ``ValueError`` (wrapped in MONAI's
        ``RuntimeError`` when the ``Compose`` runs them).
    """
    size = [int(image_size)] * 2 if isinstance(image_size, int) else [int(s) for s in image_size]
    transforms: list = [CheckedLoadImaged(keys=image_key, image_only=image_only), EnsureChannelFirstd(keys=image_key)]
    if axcodes is not None:
        transforms.append(Orientationd(keys=image_key, axcodes=axcodes))
    if normalize_intensity:
        transforms.append(ForegroundPercentileScaled(keys=image_key, percentile=percentile))
    transforms += [InPlaneResized(keys=image_key, spatial_size=size, mode="area"), EnsureTyped(keys=image_key, dtype=torch.float32)]
    return Compose(transforms)


def inference_postprocessing(
    preprocessing: Compose,
    threshold: float,
    output_dir: str | None = None,
    high_threshold: float | None = None,
    outputs: Sequence[str] = ("anomaly_map", "pseudo_healthy"),
    image_key: str = "image",
) -> Compose:
    """Split the stacked prediction, restore it (and the image) to the input grid, label it and optionally save.

    Args:
        preprocessing: the pre-processing whose invertible steps are undone.
        threshold: label threshold on the anomaly map.
        output_dir: when given, save ``<name>_anomaly_map``, ``_pseudo_healthy`` and ``_anomaly_label`` NIfTI files
            there with the input's geometry, each written atomically (complete or absent).
        high_threshold: optional second label level.
        outputs: the inferer's ``evaluator_outputs`` in stacking order (must include ``"anomaly_map"``).
        image_key: the image's key (inverted too, for overlays).

    Returns:
        A ``Compose`` over decollated items.
    """
    if "anomaly_map" not in outputs:
        raise ValueError(f"outputs must include 'anomaly_map', got {list(outputs)}.")
    pred_keys = [f"pred_{name}" for name in outputs]
    map_key = OUTPUT_KEYS["anomaly_map"]
    transforms = [
        SplitDimd(keys="pred", output_postfixes=list(outputs), dim=0, keepdim=True),
        Invertd(keys=[*pred_keys, image_key], transform=preprocessing, orig_keys=image_key, nearest_interp=False),
        # interpolation back to the input grid can overshoot [0, 1] slightly
        Lambdad(keys=map_key, func=lambda m: m.clamp(0.0, 1.0)),
        AnomalyMapToLabeld(keys=map_key, threshold=threshold, high_threshold=high_threshold, label_key=OUTPUT_KEYS["label"]),
    ]
    if output_dir is not None:
        for key, postfix in [*zip(pred_keys, outputs), (OUTPUT_KEYS["label"], "anomaly_label")]:
            dtype = torch.uint8 if key == OUTPUT_KEYS["label"] else torch.float32
            transforms.append(
                SaveImaged(
                    keys=key, output_dir=output_dir, output_postfix=postfix, output_dtype=dtype,
                    separate_folder=False, resample=False, print_log=False,
                    writer=AtomicNibabelWriter,  # an interrupted run leaves no half-written file under the final name
                )
            )
    return Compose(transforms)
