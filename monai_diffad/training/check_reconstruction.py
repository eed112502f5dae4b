# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Quality check of trained DDPM weights: partial-noise reconstruction of held-out slices.

Healthy (lesion-free) slices of an evaluation set (the development set, the unseen-anatomy set or any npz export with
``images``, ``masks``, ``brain_masks`` and ``split``) are noised to level ``L`` and restored from
``t = L`` down to 0 (``L + 1`` network calls, network range [-1, 1]) with Gaussian or Simplex noise, the noise the
weights were trained with. Reports MSE and SSIM against the input (a good model reproduces healthy anatomy) and,
on lesion slices, the mean intensity change inside versus outside the lesion (a good model removes lesions).
``--second-seed`` also reports the SSIM between two reconstructions of the same healthy slices from independent
noise: how far sampling alone moves a reconstruction, a reference for the SSIM against the input.

Usage: ``python -m monai_diffad.training.check_reconstruction --weights bundles/ddpm/models/model.pt
--dev-npz data_cache/dev_64.npz --levels 200 350 --num 8 --png outputs/recon.png``; ``--num all --num-lesion 0``
scores every lesion-free slice and no lesion slice.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric
from monai.networks.schedulers import DDPMScheduler

from monai_diffad.inferers import DDPMAnomalyInferer, SeededNoise
from monai_diffad.networks import DDPM_NETWORKS, ddpm_network, ddpm_scheduler, load_diffusion_unet

__all__ = ["AS_NUM", "partial_noise_reconstruct", "reconstruction_report"]

#: ``num_lesion`` of :func:`reconstruction_report`: as many lesion slices as lesion-free ones.
AS_NUM = -1


@torch.no_grad()
def partial_noise_reconstruct(
    images: torch.Tensor,
    network: torch.nn.Module,
    scheduler: DDPMScheduler,
    level: int,
    seed: int = 0,
    noise_type: str = "gaussian",
) -> torch.Tensor:
    """Noise ``[0, 1]`` images to ``level`` and run the DDPM reverse process back to 0.

    The forward noise and the noise of every reverse step are of ``noise_type``, drawn from per-image streams
    (image ``i`` uses seed ``seed + i``), exactly as the inferers draw them
    (:meth:`~monai_diffad.inferers.PartialDiffusionInferer.partial_reverse`).

    Args:
        images: ``(B, 1, H, W)`` in [0, 1].
        network: epsilon-prediction UNet trained on ``2x - 1`` with ``noise_type`` noise.
        scheduler: the training scheduler (x0 clipped to [-1, 1]).
        level: starting timestep ``L`` in ``[0, num_train_timesteps)``.
        seed: first per-image seed.
        noise_type: ``"gaussian"`` or ``"simplex"``.

    Returns:
        ``(B, 1, H, W)`` reconstructions in [0, 1].
    """
    inferer = DDPMAnomalyInferer(scheduler, noise_level=level, noise_type=noise_type)
    noise = SeededNoise(range(seed, seed + images.shape[0]), inferer.noise_type, images.device)
    restored = inferer.partial_reverse(inferer.to_model(images), network, noise, inferer.noise_level)
    return inferer.from_model(restored).clamp(0, 1)


def _spread(indices: np.ndarray, num: int | None) -> np.ndarray:
    """``num`` of ``indices`` evenly spread over them (all of them for ``None``)."""
    if num is None:
        return indices
    if num < 0:
        raise ValueError(f"The number of slices must be >= 0 or all, got {num}.")
    return indices[np.linspace(0, len(indices) - 1, min(num, len(indices))).round().astype(int)]


def reconstruction_report(
    weights: str,
    dev_npz: str,
    levels: Sequence[int] = (200, 350),
    num: int | None = 8,
    seed: int = 0,
    png: str | None = None,
    network: str = "demo",
    device: str = "cpu",
    noise_type: str = "gaussian",
    num_lesion: int | None = AS_NUM,
    second_seed: int | None = None,
    compare_npz: str | None = None,
) -> dict[str, dict[str, float]]:
    """Reconstruct ``num`` lesion-free and ``num_lesion`` lesion slices at each level and summarise the quality.

    ``dev_npz`` is any evaluation npz with ``images``, ``masks``, ``brain_masks`` and ``split`` (``validation``:
    lesion-free, ``test``: lesion slices), e.g. ``dev_64.npz`` or ``unseen_64.npz``. ``network`` names the
    architecture of ``weights`` (a key of :data:`~monai_diffad.networks.DDPM_NETWORKS`: ``"demo"``, ``"demo128"``,
    ``"paper"``); ``dev_npz`` must be at the resolution it was trained at, and
    ``noise_type`` must be the noise it was trained with (``"simplex"`` for ``model_simplex.pt``). Gaussian noise
    is drawn on the CPU, so CPU and GPU figures differ by float rounding alone.

    Args:
        num: lesion-free slices, evenly spread over the set's; ``None`` for all of them.
        num_lesion: lesion slices likewise; ``None`` for all, :data:`AS_NUM` (default) for as many as ``num``, 0
            for none (then the report has no lesion metrics).
        second_seed: when given, the lesion-free slices are reconstructed a second time with noise seeds from
            ``second_seed`` on (independent of ``seed``'s when the ranges do not overlap), and the report adds
            ``healthy_ssim_between_draws``, the mean SSIM between the two reconstructions.
        compare_npz: the same slices at another resolution (e.g. ``dev_64.npz`` for ``dev_128.npz``): the report adds
            ``healthy_ssim_at_R`` and ``healthy_mse_at_R``, the lesion-free reconstructions area-resized to its
            resolution R and scored against its images, so that networks of two resolutions compare on one grid.

    Returns:
        ``{f"L={level}": {"healthy_mse", "healthy_ssim", "healthy_mse_brain", "lesion_change_inside",
        "lesion_change_outside"}}`` (and ``"healthy_ssim_between_draws"`` with ``second_seed``); the MSE/SSIM are
        means over the lesion-free slices of [0, 1] images over the whole slice (background included, 0 on both
        sides), ``healthy_mse_brain`` only inside the brain mask; the lesion metrics are absent without lesion
        slices, the healthy ones without lesion-free slices (``num=0``).

    Raises:
        ValueError: when neither lesion-free nor lesion slices are picked, or ``compare_npz`` holds other slices.
    """
    data = np.load(dev_npz)
    pick_free = _spread(np.nonzero(data["split"] == "validation")[0], num)
    pick_lesion = _spread(np.nonzero(data["split"] == "test")[0], num if num_lesion == AS_NUM else num_lesion)
    picks = np.concatenate([pick_free, pick_lesion])
    if not len(picks):
        raise ValueError(f"Nothing to reconstruct: no lesion-free and no lesion slices picked from {dev_npz}.")
    n_free = len(pick_free)
    images = torch.from_numpy(data["images"][picks][:, None]).float().to(device)
    brains = torch.from_numpy(data["brain_masks"][picks][:, None]).float().to(device)
    lesions = torch.from_numpy(data["masks"][picks][:, None]).float().to(device)
    unet = load_diffusion_unet(weights, **ddpm_network(network).architecture).to(device)
    scheduler = ddpm_scheduler()
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)
    if compare_npz is not None:
        other = np.load(compare_npz)
        same = [k for k in ("z", "split", "size_class") if k in other.files and k in data.files]
        if len(other["images"]) != len(data["images"]) or not all(np.array_equal(other[k], data[k]) for k in same):
            raise ValueError(f"{compare_npz} does not hold the slices of {dev_npz} (count or {same} differ).")
        other_images = torch.from_numpy(other["images"][pick_free][:, None]).float().to(device)
        other_brains = torch.from_numpy(other["brain_masks"][pick_free][:, None]).float().to(device)
        other_size = other_images.shape[-1]
    report, recons = {}, {}
    for level in levels:
        recon = partial_noise_reconstruct(images, unet, scheduler, level, seed, noise_type) * brains
        recons[level] = recon.cpu()
        h, ill = slice(0, n_free), slice(n_free, None)
        row = {}
        if n_free:
            healthy_ssim = ssim(recon[h], images[h])
            assert isinstance(healthy_ssim, torch.Tensor)  # MONAI returns a list only for list inputs
            row["healthy_mse"] = float(((recon[h] - images[h]) ** 2).mean())
            row["healthy_mse_brain"] = float((((recon[h] - images[h]) ** 2) * brains[h]).sum() / brains[h].sum())
            row["healthy_ssim"] = float(healthy_ssim.mean())
            if compare_npz is not None:
                # area resizing: each low-resolution pixel is the mean of the pixels it covers, as the set builder's
                resized = F.interpolate(recon[h], size=other_images.shape[-2:], mode="area") * other_brains
                row[f"healthy_ssim_at_{other_size}"] = float(torch.as_tensor(ssim(resized, other_images)).mean())
                row[f"healthy_mse_at_{other_size}"] = float(((resized - other_images) ** 2).mean())
            if second_seed is not None:
                draw = partial_noise_reconstruct(images[h], unet, scheduler, level, second_seed, noise_type) * brains[h]
                row["healthy_ssim_between_draws"] = float(torch.as_tensor(ssim(draw, recon[h])).mean())
        if len(pick_lesion):
            change = (recon[ill] - images[ill]).abs()
            outside_mask = brains[ill] * (1 - lesions[ill])
            row["lesion_change_inside"] = float((change * lesions[ill]).sum() / lesions[ill].sum().clamp(min=1))
            row["lesion_change_outside"] = float((change * outside_mask).sum() / outside_mask.sum())
        report[f"L={level}"] = row
    if png:
        _save_figure(png, images.cpu(), recons)
    return report


def _save_figure(png: str, images: torch.Tensor, recons: dict[int, torch.Tensor]) -> None:
    """Rows: input, then one reconstruction per level; columns: the slices (healthy first, then lesion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input", images)] + [(f"L={k}", v) for k, v in recons.items()]
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (name, stack) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(np.rot90(stack[c, 0].numpy()), cmap="gray", vmin=0, vmax=1)  # rot90 for display only
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _count(text: str) -> int | None:
    """A ``--num`` value: a count, or ``all`` (``None``)."""
    return None if text == "all" else int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_diffad.training.check_reconstruction")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dev-npz", required=True)
    parser.add_argument("--levels", type=int, nargs="+", default=[200, 350])
    parser.add_argument("--num", type=_count, default=8, help="lesion-free slices, or 'all'")
    parser.add_argument(
        "--num-lesion", type=_count, default=AS_NUM, help="lesion slices, or 'all' (default: as --num; 0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--network", choices=sorted(DDPM_NETWORKS), default="demo", help="architecture of --weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--noise-type", choices=("gaussian", "simplex"), default="gaussian", help="training noise")
    parser.add_argument(
        "--second-seed", type=int, default=None, help="also report the SSIM between two independent reconstructions"
    )
    parser.add_argument(
        "--compare-npz", default=None, help="the same slices at another resolution: also score the reconstructions there"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = reconstruction_report(
        args.weights, args.dev_npz, args.levels, args.num, args.seed, args.png, args.network, args.device,
        args.noise_type, args.num_lesion, args.second_seed, args.compare_npz,
    )  # fmt: skip
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
