# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Inputs shared by the figure scripts: a real slice with a checkpoint, or the analytic oracle on a phantom."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler
from monai.transforms import LoadImage

from monai_diffad.networks import DEMO_UNET, PAPER_UNET, load_diffusion_unet
from monai_diffad.testing import HealthyOracle, phantom
from monai_diffad.transforms import ForegroundPercentileScale

ARCHITECTURES = {"demo": DEMO_UNET, "paper": PAPER_UNET}


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--checkpoint``/``--image`` or ``--demo-oracle`` options (and slice/size/label/seed/device/output)."""
    source = parser.add_argument_group("input (either --checkpoint with --image, or --demo-oracle)")
    source.add_argument("--checkpoint", help="trained network weights, e.g. bundles/ddpm/models/model.pt")
    source.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="demo", help="network layout")
    source.add_argument("--image", help="NIfTI slice or volume, intensities in [0, 1] (see --rescale)")
    source.add_argument("--label", help="optional NIfTI lesion mask of --image, outlined in the figure")
    source.add_argument("--slice", type=int, default=None, help="slice of a 3D image along its last axis")
    source.add_argument("--size", type=int, default=None, help="resample the slice to SIZE x SIZE (network's size)")
    source.add_argument("--rescale", action="store_true", help="normalise by the foreground 99.5th percentile")
    source.add_argument("--demo-oracle", action="store_true", help="synthetic phantom and analytic denoiser")
    parser.add_argument("--model-range", type=float, nargs=2, default=(-1.0, 1.0), help="network's value range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_input_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No silent fallback: exactly one input mode must be chosen."""
    if args.demo_oracle == bool(args.checkpoint or args.image):
        parser.error("give either --checkpoint and --image, or --demo-oracle (and nothing else as input).")
    if not args.demo_oracle and not (args.checkpoint and args.image):
        parser.error("--checkpoint and --image are both needed.")
    if args.label and not args.image:
        parser.error("--label needs --image.")


def load_slice(path: str, slice_index: int | None, size: int | None) -> torch.Tensor:
    """Read a 2D (or one axial slice of a 3D) image as ``(1, 1, H, W)``, resampled to ``size`` (area) when given.

    Raises:
        ValueError: the image is not 2D or 3D.
    """
    image = torch.as_tensor(np.asarray(LoadImage(image_only=True)(path)), dtype=torch.float32).squeeze()
    if image.ndim == 3:
        image = image[..., image.shape[-1] // 2 if slice_index is None else slice_index]
    if image.ndim != 2:
        raise ValueError(f"'{path}' is not a 2D slice or a 3D volume (shape {tuple(image.shape)}).")
    image = image[None, None]
    return image if size is None else torch.nn.functional.interpolate(image, size=(size, size), mode="area")


def load_inputs(
    args: argparse.Namespace, scheduler: DDPMScheduler
) -> tuple[torch.Tensor, torch.Tensor | None, torch.nn.Module, str]:
    """``(inputs (1,1,H,W) in [0,1], label or None, network, description)`` for the chosen input mode.

    Raises:
        ValueError: the image is outside [0, 1] and ``--rescale`` was not given.
    """
    if args.demo_oracle:
        inputs, _, healthy = phantom(64)
        low, high = args.model_range
        return inputs, None, HealthyOracle(healthy * (high - low) + low, scheduler), "a phantom with the analytic oracle"
    network = load_diffusion_unet(args.checkpoint, **ARCHITECTURES[args.architecture])
    inputs = load_slice(args.image, args.slice, args.size)
    if args.rescale:
        inputs = ForegroundPercentileScale()(inputs)
    elif inputs.min() < 0 or inputs.max() > 1:
        raise ValueError(f"'{args.image}' spans [{inputs.min():.3g}, {inputs.max():.3g}]; pass --rescale.")
    label = (load_slice(args.label, args.slice, args.size) >= 0.5).float() if args.label else None
    return inputs, label, network, f"{args.image} with {args.checkpoint}"
