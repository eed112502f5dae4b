# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Training-step and sampling-step time of the DDPM networks, relative to the 64x64 demo network, in one run.

One training step is what ``bundles/ddpm/train.json`` does per iteration: forward and backward of a batch under
bfloat16 autocast, then AdamW. One sampling step is one network call at inference (fp32, no gradient), the unit
THOR, DDPM and AutoDDPM spend L of. Random weights: speed does not depend on them.

Networks: the entries of ``monai_diffad.networks.DDPM_NETWORKS`` named by ``--networks`` at their resolution, and
``demo128_3level``, the 64x64 demo architecture run at 128x128 (attention at 32x32), the alternative the 128x128
demo network was chosen over.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --repeats 3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import interleaved_min_times

from monai_diffad.networks import DDPM_NETWORKS, DEMO_UNET, diffusion_unet

#: the alternative 128x128 design: the demo architecture unchanged, so attention runs at 32x32
CANDIDATES = {"demo128_3level": (DEMO_UNET, 128)}


def training_step(net: torch.nn.Module, batch: int, size: int) -> Callable[[], None]:
    """One bf16-autocast forward/backward and AdamW step on a random batch."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    images, timesteps = torch.randn(batch, 1, size, size), torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (net(images, timesteps).float() - images).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sampling_step(net: torch.nn.Module, batch: int, size: int) -> Callable[[], None]:
    """One fp32 network call without gradient, as in every reverse step at inference."""
    images, timesteps = torch.randn(batch, 1, size, size), torch.full((batch,), 200)

    def step() -> None:
        with torch.no_grad():
            net(images, timesteps)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="demo,demo128", help="comma-separated DDPM_NETWORKS names")
    parser.add_argument("--batch", type=int, default=16, help="train.json's batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setups = {name: (dict(DDPM_NETWORKS[name].architecture), DDPM_NETWORKS[name].resolution)
              for name in args.networks.split(",")}
    setups.update(CANDIDATES)
    nets = {name: diffusion_unet(**architecture) for name, (architecture, _) in setups.items()}
    names = list(setups)
    train = interleaved_min_times(*(training_step(nets[n], args.batch, setups[n][1]) for n in names),
                                  repeats=args.repeats)
    sample = interleaved_min_times(*(sampling_step(nets[n].eval(), args.batch, setups[n][1]) for n in names),
                                   repeats=args.repeats)
    base = names.index("demo") if "demo" in names else 0
    print(f"torch threads {args.threads}, batch {args.batch}; minimum of {args.repeats} interleaved rounds")
    print(f"{'network':<16} {'size':>5} {'params (M)':>10} {'train s/it':>10} {'x ' + names[base]:>10} "
          f"{'sample s/call':>13} {'x ' + names[base]:>10}")
    for i, name in enumerate(names):
        params = sum(p.numel() for p in nets[name].parameters()) / 1e6
        print(f"{name:<16} {setups[name][1]:>5} {params:>10.2f} {train[i]:>10.3f} {train[i] / train[base]:>10.2f} "
              f"{sample[i]:>13.3f} {sample[i] / sample[base]:>10.2f}")


if __name__ == "__main__":
    main()
