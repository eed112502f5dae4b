# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Inference speed in one run: THOR's harmonization overhead, slice batching of volumes, strided schedules.

All comparisons are made inside one process on the same network (the demo architecture; random weights unless
``--checkpoint`` is given: speed does not depend on the weights), so machine noise affects both sides alike.

1. Harmonization overhead: THOR vs the DDPM reconstruction with the same L and batch (target <= 1.10x).
2. Batching: the slices of a (1, 1, 64, 64, D) volume processed ``--batch`` at a time vs one at a time
   (throughput ratio, and peak resident memory growth with D).
3. Strided schedules: THOR with ``step_stride`` s vs the full schedule (speed-up; quality is measured by
   ``python -m monai_diffad.evaluate`` with ``--override thor.step_stride=10``, see benchmarks/README.md).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_inference.py --noise-level 100 --repeats 3
"""

from __future__ import annotations

import argparse
import resource

import torch
from timing import interleaved_min_times

from monai_diffad import DDPMAnomalyInferer, THORInferer
from monai_diffad.networks import ddpm_scheduler, diffusion_unet, load_diffusion_unet


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--noise-level", type=int, default=100, help="L (the papers use 350; time scales linearly)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=16, help="slices of the test volume")
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--perceptual", default="ssim", choices=["ssim", "lpips"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_diffusion_unet(args.checkpoint) if args.checkpoint else diffusion_unet().eval()
    scheduler = ddpm_scheduler()
    level = args.noise_level
    steps = [t for t in (int(level * 6 / 7), int(level * 3 / 7), int(level / 7)) if t > 0]
    images = torch.rand(args.batch, 1, 64, 64)

    def run(inferer, x):
        return lambda: inferer.detect(x, net, generator=torch.Generator().manual_seed(0))

    print(f"torch threads {args.threads}, L={level}, batch {args.batch}, 64x64, perceptual={args.perceptual}")
    ddpm = DDPMAnomalyInferer(scheduler, noise_level=level)
    thor = THORInferer(scheduler, noise_level=level, harmonization_steps=steps, perceptual=args.perceptual)
    strided = THORInferer(scheduler, noise_level=level, harmonization_steps=steps, perceptual=args.perceptual,
                          step_stride=args.stride)
    t_ddpm, t_thor, t_strided = interleaved_min_times(
        run(ddpm, images), run(thor, images), run(strided, images), repeats=args.repeats
    )
    print(f"[harmonization] DDPM {t_ddpm:.2f} s, THOR {t_thor:.2f} s, ratio THOR/DDPM = {t_thor / t_ddpm:.3f}")

    volume = torch.rand(1, 1, 64, 64, args.depth)
    one = DDPMAnomalyInferer(scheduler, noise_level=max(level // 5, 1), max_batch_size=1)
    many = DDPMAnomalyInferer(scheduler, noise_level=max(level // 5, 1), max_batch_size=args.batch)
    rss0 = _peak_rss_mb()
    t_one, t_many = interleaved_min_times(run(one, volume), run(many, volume), repeats=1)
    rss1 = _peak_rss_mb()
    big = torch.rand(1, 1, 64, 64, args.depth * 4)
    many.detect(big, net, generator=torch.Generator().manual_seed(0))
    rss2 = _peak_rss_mb()
    print(
        f"[batching] {args.depth} slices: one at a time {t_one:.2f} s, {args.batch} at a time {t_many:.2f} s, "
        f"throughput ratio {t_one / t_many:.2f}x; peak RSS {rss0:.0f} -> {rss1:.0f} MB, "
        f"+{rss2 - rss1:.0f} MB for a 4x deeper volume (outputs: {4 * args.depth * 64 * 64 * 4 * 2 / 2**20:.1f} MB)"
    )

    calls = len(strided.reverse_schedule(level))
    print(f"[strided] THOR stride {args.stride}: {t_strided:.2f} s ({calls} vs {level + 1} network calls), "
          f"speed-up {t_thor / t_strided:.1f}x")


if __name__ == "__main__":
    main()
