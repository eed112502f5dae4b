# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""THOR inference speed and agreement under the optional network paths: bf16/fp16 autocast, channels-last,
``torch.compile`` (``compile_mode``), against fp32 eager with the same network, noise and batch, in one run.

Meant for a GPU (``--device cuda``); on CPU it checks the plumbing with small settings. Two networks:
``demo`` (the shipped 64x64 weights when ``--checkpoint`` is given) and ``paper`` (the references' 18 M-parameter
UNet at 128x128, random weights: speed only, its outputs are not compared).

Usage:
    python benchmarks/bench_precision.py --device cuda --checkpoint bundles/ddpm/models/model.pt --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from timing import interleaved_min_times

from monai_diffad import THORInferer
from monai_diffad.networks import PAPER_UNET, ddpm_scheduler, diffusion_unet, load_diffusion_unet

VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "fp32+compile": {"compile_mode": "reduce-overhead"},
    "bf16+compile": {"precision": "bf16", "compile_mode": "reduce-overhead"},
}


def bench_network(name, net, size, batch, level, variants, device, repeats, compare) -> list[dict]:
    scheduler = ddpm_scheduler()
    steps = [t for t in (int(level * 6 / 7), int(level * 3 / 7), int(level / 7)) if t > 0]
    images = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    rows, fns, outputs = [], [], {}
    for variant in variants:
        kwargs = dict(VARIANTS[variant])
        model = net.to(memory_format=torch.channels_last) if kwargs.get("channels_last") else net
        inferer = THORInferer(scheduler, noise_level=level, harmonization_steps=steps, perceptual="ssim",
                              max_batch_size=batch, **kwargs)

        def run(inferer=inferer, model=model, variant=variant):
            outputs[variant] = inferer.detect(images, model, generator=torch.Generator().manual_seed(0))

        start = time.perf_counter()
        run()  # first call: compilation, cuDNN autotuning
        first = time.perf_counter() - start
        fns.append(run)
        rows.append({"network": name, "variant": variant, "first_call_s": first})
    for row, t in zip(rows, interleaved_min_times(*fns, repeats=repeats)):
        row.update(seconds=t, ms_per_image=1000 * t / batch, network_calls=level + 1, batch=batch, size=size)
    base = {r["variant"]: r for r in rows}["fp32"]["seconds"]
    ref = outputs["fp32"]
    for row in rows:
        row["speedup_vs_fp32"] = base / row["seconds"]
        if compare:
            out = outputs[row["variant"]]
            row["map_mean_abs_diff"] = float((out.anomaly_map - ref.anomaly_map).abs().mean())
            row["map_corr"] = float(torch.corrcoef(torch.stack([out.anomaly_map.flatten(), ref.anomaly_map.flatten()]))[0, 1])
            row["restoration_mean_abs_diff"] = float((out.pseudo_healthy - ref.pseudo_healthy).abs().mean())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", default=None, help="weights of the demo network (default: random)")
    parser.add_argument("--noise-level", type=int, default=100, help="L; time scales linearly with L + 1")
    parser.add_argument("--batch", type=int, default=64, help="demo images per batch (paper network: a quarter)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--networks", default="demo,paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, THOR L={args.noise_level}")
    rows = []
    for name in args.networks.split(","):
        torch.manual_seed(0)
        if name == "demo":
            net = load_diffusion_unet(args.checkpoint) if args.checkpoint else diffusion_unet()
            size, batch = 64, args.batch
        else:
            net, size, batch = diffusion_unet(**PAPER_UNET), 128, max(args.batch // 4, 1)
        net = net.to(device).eval()
        rows += bench_network(name, net, size, batch, args.noise_level, variants, device, args.repeats,
                              compare=name == "demo" and args.checkpoint is not None)
    print(f"{'network':8s} {'variant':20s} {'ms/image':>9s} {'speed-up':>9s} {'first call s':>12s} {'|dmap|':>8s}"
          f" {'corr':>6s}")
    for r in rows:
        print(f"{r['network']:8s} {r['variant']:20s} {r['ms_per_image']:9.2f} {r['speedup_vs_fp32']:8.2f}x "
              f"{r['first_call_s']:12.1f} {r.get('map_mean_abs_diff', float('nan')):8.4f} {r.get('map_corr', float('nan')):6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "noise_level": args.noise_level,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
