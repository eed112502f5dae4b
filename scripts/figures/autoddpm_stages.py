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
from figure_inputs import add_input_arguments, check_input_arguments, load_inputs  # noqa: E402

from monai_diffad.inferers.autoddpm import AutoDDPMInferer  # noqa: E402
from monai_diffad.inferers.output import AnomalyOutput  # noqa: E402
from monai_diffad.networks import ddpm_scheduler  # noqa: E402


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
    add_input_arguments(parser)
    method = parser.add_argument_group("AutoDDPM options (paper defaults)")
    method.add_argument("--noise-level", type=int, default=200)
    method.add_argument("--resample-level", type=int, default=50)
    method.add_argument("--resample-passes", type=int, default=5)
    method.add_argument("--mask-threshold", type=float, default=0.13, help="negative: per-image percentile rule")
    method.add_argument("--perceptual", choices=("lpips", "ssim"), default="lpips")
    parser.add_argument("--output", default="autoddpm_stages.png", help="PNG file to write")
    args = parser.parse_args(argv)
    check_input_arguments(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    scheduler = ddpm_scheduler()
    inputs, label, network, source = load_inputs(args, scheduler)
    title = f"AutoDDPM: {source}"
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
