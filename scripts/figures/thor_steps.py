# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Render THOR's reverse process for one slice as a PNG: input, x̂0 and the intermediate map at each recorded step
(harmonization steps marked), and the final harmonic-mean map.

Real data::

    python scripts/figures/thor_steps.py --checkpoint bundles/ddpm/models/model.pt \\
        --image demo_data/slices/images/<slice>.nii.gz --label demo_data/slices/labels/<slice>.nii.gz \\
        --size 64 --output thor_steps.png

``--demo-oracle`` runs on a synthetic phantom with an analytic denoiser (mechanics only, not a model's quality).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from figure_inputs import add_input_arguments, check_input_arguments, load_inputs  # noqa: E402

from monai_diffad import THORInferer  # noqa: E402
from monai_diffad.networks import ddpm_scheduler  # noqa: E402


def render(inputs: torch.Tensor, out, inferer: THORInferer, path: str, title: str, label=None) -> None:
    """Two rows: x̂0 per recorded step over the intermediate maps; input and final map in the first column."""
    steps = out.intermediates["timesteps"].tolist()
    harmonized = set(inferer.active_harmonization_steps())
    fig, axes = plt.subplots(2, len(steps) + 1, figsize=(2.2 * (len(steps) + 1), 4.8))
    show = lambda ax, img, cmap, vmax: ax.imshow(np.rot90(img.cpu().numpy()), cmap=cmap, vmin=0, vmax=vmax)  # noqa: E731
    show(axes[0, 0], inputs[0, 0], "gray", 1.0)
    axes[0, 0].set_title("input", fontsize=9)
    show(axes[1, 0], out.anomaly_map[0, 0], "inferno", 1.0)
    axes[1, 0].set_title("final map", fontsize=9)
    if label is not None:
        for ax in axes[:, 0]:
            ax.contour(np.rot90(label[0, 0].cpu().numpy()), levels=[0.5], colors="lime", linewidths=0.8)
    for k, t in enumerate(steps, start=1):
        tag = " (H)" if t in harmonized else ""
        show(axes[0, k], out.intermediates["x0"][0, k - 1, 0].clamp(0, 1), "gray", 1.0)
        axes[0, k].set_title(f"x̂0, t={t}{tag}", fontsize=9)
        show(axes[1, k], out.intermediates["maps"][0, k - 1, 0], "inferno", 1.0)
        axes[1, k].set_title(f"map, t={t}{tag}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    method = parser.add_argument_group("THOR options (paper defaults per noise type)")
    method.add_argument("--noise-type", choices=("gaussian", "simplex"), default="gaussian")
    method.add_argument("--noise-level", type=int, default=None)
    method.add_argument("--harmonization-steps", type=int, nargs="*", default=None)
    method.add_argument("--perceptual", choices=("lpips", "ssim"), default="lpips")
    parser.add_argument("--output", default="thor_steps.png", help="PNG file to write")
    args = parser.parse_args(argv)
    check_input_arguments(parser, args)
    scheduler = ddpm_scheduler()
    inputs, label, network, source = load_inputs(args, scheduler)
    inferer = THORInferer(
        scheduler,
        noise_type=args.noise_type,
        noise_level=args.noise_level,
        harmonization_steps=args.harmonization_steps,
        perceptual=args.perceptual,
        model_range=args.model_range,
    )
    device = torch.device(args.device)
    out = inferer.detect(
        inputs.to(device),
        network.to(device).eval(),
        generator=torch.Generator().manual_seed(args.seed),
        progress=True,
        return_intermediates=True,
    )
    title = (
        f"THOR ({args.noise_type}, L={inferer.noise_level}, H={inferer.harmonization_steps}, "
        f"perceptual={inferer.perceptual.description}): {source}"
    )
    render(inputs, out, inferer, args.output, title, label)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
