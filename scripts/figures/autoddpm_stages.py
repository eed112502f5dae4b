# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Render AutoDDPM's stages for one slice as a PNG: input, reconstruction, mask, stitched, re-sampled, final map.

Real data::

    PYTHONPATH=. python scripts/figures/autoddpm_stages.py --checkpoint bundles/ddpm/models/model.pt \\
        --image demo_data/<slice>.nii.gz --output autoddpm_stages.png

Without a trained network, ``--demo-oracle`` runs on a synthetic phantom with an analytic denoiser that knows the
healthy phantom (every x̂0 is the healthy image), which shows the mechanics, not a model's quality. There is no
silent fallback: one of ``--checkpoint``/``--image`` or ``--demo-oracle`` must be given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.networks.schedulers import DDPMScheduler  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402

from monai_diffad.inferers.autoddpm import AutoDDPMInferer  # noqa: E402
from monai_diffad.inferers.output import AnomalyOutput  # noqa: E402
from monai_diffad.networks import DEMO_UNET, PAPER_UNET, ddpm_scheduler, load_diffusion_unet  # noqa: E402

ARCHITECTURES = {"demo": DEMO_UNET, "paper": PAPER_UNET}


class ExactHealthyDenoiser(torch.nn.Module):
    """ε-predictor for data concentrated on one healthy image h: ε̂ = (x_t − √ᾱ_t·h) / √(1 − ᾱ_t).

    Args:
        healthy_model_range: ``(B, C, H, W)`` healthy images in the network's value range.
        scheduler: the scheduler whose ᾱ table defines the noising.
    """

    def __init__(self, healthy_model_range: torch.Tensor, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_buffer("healthy", healthy_model_range)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone())

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        a = self.alphas_cumprod[timesteps.long()].view(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * self.healthy[: x.shape[0]]) / (1 - a).sqrt()


def demo_phantom(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured ellipse "brain" in [0, 1] and the same image with a bright round lesion.

    Returns:
        ``(image, healthy)``, each ``(1, 1, size, size)``.
    """
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float()
    healthy = brain * (0.55 + 0.2 * torch.sin(7 * xx) * torch.cos(5 * yy))
    lesion = ((xx - 0.25) ** 2 + (yy + 0.2) ** 2) < 0.15**2
    image = torch.where(lesion, torch.full_like(healthy, 0.95), healthy)
    return image[None, None], healthy[None, None]


def load_slice(path: str, slice_index: int | None, size: int | None) -> torch.Tensor:
    """Read a 2D (or one axial slice of a 3D) NIfTI image as ``(1, 1, H, W)``.

    Args:
        path: NIfTI file.
        slice_index: slice along the last axis of a 3D image (the middle one when None).
        size: resample to ``size × size`` (``area`` interpolation, the data sets' convention) when given.

    Raises:
        ValueError: the image is not 2D or 3D.
    """
    image = torch.as_tensor(np.asarray(LoadImage(image_only=True)(path)), dtype=torch.float32).squeeze()
    if image.ndim == 3:
        index = image.shape[-1] // 2 if slice_index is None else slice_index
        image = image[..., index]
    if image.ndim != 2:
        raise ValueError(f"'{path}' is not a 2D slice or a 3D volume (shape {tuple(image.shape)}).")
    image = image[None, None]
    return image if size is None else torch.nn.functional.interpolate(image, size=(size, size), mode="area")


def to_unit_range(image: torch.Tensor, path: str, rescale: bool) -> torch.Tensor:
    """Check that ``image`` is in [0, 1], or map it there with ``rescale``.

    Args:
        image: ``(1, 1, H, W)`` image.
        path: its file, for the error message.
        rescale: divide by the 99.5th percentile of the non-zero pixels and clip to [0, 1].

    Raises:
        ValueError: the image is out of [0, 1] and ``rescale`` is off.
    """
    if rescale:
        foreground = image[image != 0]
        scale = torch.quantile(foreground, 0.995) if foreground.numel() else torch.tensor(1.0)
        image = (image / scale).clamp(0.0, 1.0)
    elif image.min() < 0 or image.max() > 1:
        raise ValueError(f"'{path}' spans [{image.min():.3g}, {image.max():.3g}]; pass --rescale to map it to [0, 1].")
    return image


def render_stages(
    inputs: torch.Tensor, out: AnomalyOutput, path: str, title: str, label: torch.Tensor | None = None
) -> None:
    """Six panels for image 0 of the batch, shown with ``np.rot90`` (anterior up for RAS ``[x, y]`` arrays).

    Args:
        inputs: ``(B, 1, H, W)`` inputs in [0, 1].
        out: :meth:`AutoDDPMInferer.detect` output with intermediates.
        path: PNG file to write.
        title: figure title.
        label: optional ``(B, 1, H, W)`` ground-truth lesion mask, outlined in green on the input and final map.
    """
    inter = out.intermediates
    binary = inter["binary_mask"][0, 0].cpu().numpy()
    panels = [
        (r"input $x$", inputs[0, 0], "gray", (0, 1)),
        (r"reconstruction $\hat{x}$", inter["reconstruction"][0, 0], "gray", (0, 1)),
        (r"mask $c$ ($B$ outlined)", inter["mask"][0, 0], "magma", None),
        ("stitched", inter["stitched"][0, 0], "gray", (0, 1)),
        ("re-sampled", inter["inpainted"][0, 0].clamp(0, 1), "gray", (0, 1)),
        (r"final map $|x - \hat{x}_{inp}| \cdot c$", out.anomaly_map[0, 0], "magma", None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (name, image, cmap, limits) in zip(axes, panels):
        vmin, vmax = limits if limits is not None else (0.0, max(float(image.max()), 1e-6))
        ax.imshow(np.rot90(image.cpu().numpy()), cmap=cmap, vmin=vmin, vmax=vmax)
        if name.startswith("mask"):
            ax.contour(np.rot90(binary), levels=[0.5], colors="cyan", linewidths=0.8)
        if label is not None and (name.startswith("input") or name.startswith("final")):
            ax.contour(np.rot90(label[0, 0].cpu().numpy()), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_argument_group("input (either --checkpoint with --image, or --demo-oracle)")
    source.add_argument("--checkpoint", help="trained network weights, e.g. bundles/ddpm/models/model.pt")
    source.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="demo", help="network layout")
    source.add_argument("--image", help="NIfTI slice or volume, intensities in [0, 1] (see --rescale)")
    source.add_argument("--label", help="optional NIfTI lesion mask of --image, outlined in the figure")
    source.add_argument("--slice", type=int, default=None, help="slice of a 3D image along its last axis")
    source.add_argument("--size", type=int, default=None, help="resample the slice to SIZE x SIZE (network's size)")
    source.add_argument("--rescale", action="store_true", help="normalise by the foreground 99.5th percentile")
    source.add_argument("--demo-oracle", action="store_true", help="synthetic phantom and analytic denoiser")
    method = parser.add_argument_group("AutoDDPM options (paper defaults)")
    method.add_argument("--noise-level", type=int, default=200)
    method.add_argument("--resample-level", type=int, default=50)
    method.add_argument("--resample-passes", type=int, default=5)
    method.add_argument("--mask-threshold", type=float, default=0.13, help="negative: per-image percentile rule")
    method.add_argument("--perceptual", choices=("lpips", "ssim"), default="lpips")
    method.add_argument("--model-range", type=float, nargs=2, default=(-1.0, 1.0), help="network's value range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="autoddpm_stages.png", help="PNG file to write")
    args = parser.parse_args(argv)
    if args.demo_oracle == bool(args.checkpoint or args.image):
        parser.error("give either --checkpoint and --image, or --demo-oracle (and nothing else as input).")
    if not args.demo_oracle and not (args.checkpoint and args.image):
        parser.error("--checkpoint and --image are both needed.")
    if args.label and not args.image:
        parser.error("--label needs --image.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    scheduler = ddpm_scheduler()
    if args.demo_oracle:
        inputs, healthy = demo_phantom()
        label = None
        low, high = args.model_range
        network: torch.nn.Module = ExactHealthyDenoiser(healthy * (high - low) + low, scheduler)
        title = "AutoDDPM on a synthetic phantom with an analytic (oracle) denoiser"
    else:
        network = load_diffusion_unet(args.checkpoint, **ARCHITECTURES[args.architecture])
        inputs = to_unit_range(load_slice(args.image, args.slice, args.size), args.image, args.rescale)
        label = (load_slice(args.label, args.slice, args.size) >= 0.5).float() if args.label else None
        title = f"AutoDDPM: {args.image} with {args.checkpoint}"
    inferer = AutoDDPMInferer(
        scheduler,
        noise_level=args.noise_level,
        resample_level=args.resample_level,
        resample_passes=args.resample_passes,
        mask_threshold=args.mask_threshold,
        perceptual=args.perceptual,
        model_range=args.model_range,
    )
    out = inferer.detect(
        inputs.to(device),
        network.to(device).eval(),
        generator=torch.Generator().manual_seed(args.seed),
        progress=True,
        return_intermediates=True,
    )
    title += f" (L={inferer.noise_level}, R={inferer.resample_level}, K={inferer.resample_passes}, "
    title += f"{inferer.num_network_calls} calls, perceptual={inferer.perceptual.description})"
    render_stages(inputs, out, args.output, title, label)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
