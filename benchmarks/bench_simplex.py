# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Time monai_diffad's torch simplex noise against opensimplex (the AnoDDPM reference) and compare statistics.

Cases: a 128x128 image (3D simplex over x, y, t) and a 64x64x64 volume (4D simplex over x, y, z, t), both with the
AnoDDPM octave sum (6 octaves, persistence 0.8, frequency 64). opensimplex's vectorised ``noise3array`` /
``noise4array`` are used when present (otherwise one call per pixel). Torch runs on one thread unless a CUDA
device is chosen; opensimplex runs on one thread too (JIT-compiled when numba is installed, pure Python otherwise;
``NUMBA_DISABLE_JIT=1`` forces the latter).

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_simplex.py --repeats 5 --ref-repeats 2

(``PYTHONPATH=.`` is only needed when monai_diffad is not installed.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import opensimplex
import torch

from monai_diffad.noise import simplex_noise
from monai_diffad.noise.simplex import radial_power_spectrum

T_COORDINATE = 500.0


def opensimplex_octave_sum(
    seed: int, spatial: tuple[int, ...], octaves: int, persistence: float, frequency: float
) -> np.ndarray:
    """AnoDDPM's octave sum with opensimplex at ``t = T_COORDINATE``; returns an array of shape ``spatial``."""
    noise = opensimplex.OpenSimplex(seed=seed)
    # opensimplex's array API orders its output (t, ..., y, x): reverse the axes so x runs along the last one
    axes = [np.arange(size, dtype=np.float64) for size in reversed(spatial)]
    total = np.zeros(spatial)
    for octave in range(octaves):
        divisor = frequency / 2**octave
        coordinates = [axis / divisor for axis in axes] + [np.array([T_COORDINATE / divisor])]
        total += persistence**octave * evaluate_opensimplex(noise, coordinates)[0]
    return total


def evaluate_opensimplex(noise: opensimplex.OpenSimplex, coordinates: list[np.ndarray]) -> np.ndarray:
    """opensimplex on the grid spanned by ``coordinates`` (x first), output ordered (t, ..., y, x)."""
    vectorised = getattr(noise, f"noise{len(coordinates)}array", None)
    if vectorised is not None:
        return vectorised(*coordinates)
    scalar = getattr(noise, f"noise{len(coordinates)}")
    grid = np.meshgrid(*coordinates[::-1], indexing="ij")
    return np.vectorize(lambda *point: scalar(*point[::-1]))(*grid)


def opensimplex_is_compiled() -> bool:
    """opensimplex JIT-compiles with numba when numba is importable and not disabled."""
    return importlib.util.find_spec("numba") is not None and os.environ.get("NUMBA_DISABLE_JIT", "0") == "0"


def time_calls(function: Callable[[int], object], repeats: int, synchronize: Callable[[], None]) -> list[float]:
    """Wall-clock seconds of ``function(i)`` for ``i < repeats``."""
    seconds = []
    for index in range(repeats):
        synchronize()
        start = time.perf_counter()
        function(index)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def summarise(fields: torch.Tensor) -> dict[str, float]:
    """Mean of per-field mean/std/min/max, and the centroid (cycles per image) of the mean radial spectrum."""
    flat = fields.reshape(fields.shape[0], -1).double()
    spectrum = radial_power_spectrum(fields.double()).reshape(-1, fields.shape[-1] // 2 + 1).mean(0)
    centroid = (spectrum * torch.arange(spectrum.numel(), dtype=torch.float64)).sum().item()
    return {
        "mean": flat.mean(1).mean().item(),
        "std": flat.std(1).mean().item(),
        "min": flat.min(1).values.mean().item(),
        "max": flat.max(1).values.mean().item(),
        "centroid": centroid,
    }


def run_case(name: str, spatial: tuple[int, ...], args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    options = {"octaves": args.octaves, "persistence": 0.8, "frequency": 64.0}

    def ours(index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(index)
        return simplex_noise((1, 1, *spatial), t=T_COORDINATE, generator=generator, device=device, **options)

    ours(0)  # warm-up (allocator, CUDA context)
    if opensimplex_is_compiled():
        opensimplex_octave_sum(0, (2,) * len(spatial), **options)  # JIT compilation is not timed
    torch_seconds = time_calls(ours, args.repeats, synchronize)
    reference_fields: list[np.ndarray] = []
    reference_seconds = time_calls(
        lambda index: reference_fields.append(opensimplex_octave_sum(index + 1, spatial, **options)),
        args.ref_repeats,
        lambda: None,
    )
    ours_fields = torch.cat([ours(1000 + index)[0].cpu() for index in range(args.stat_fields)])
    reference = torch.tensor(np.stack(reference_fields))

    torch_median, reference_median = statistics.median(torch_seconds), statistics.median(reference_seconds)
    print(f"\n== {name}: {'x'.join(map(str, spatial))}, {args.octaves} octaves, t={T_COORDINATE:g}")
    print(f"torch ({device}, {torch.get_num_threads()} thread): median {torch_median * 1e3:9.2f} ms "
          f"(min {min(torch_seconds) * 1e3:.2f} ms, {args.repeats} runs)")
    print(f"opensimplex:                   median {reference_median * 1e3:9.2f} ms "
          f"(min {min(reference_seconds) * 1e3:.2f} ms, {args.ref_repeats} runs)")
    print(f"speed-up: {reference_median / torch_median:.1f}x")
    ours_stats, reference_stats = summarise(ours_fields), summarise(reference)
    print(f"{'statistic':>24} {'torch':>9} {'opensimplex':>12}")
    print(f"{'fields':>24} {args.stat_fields:>9d} {args.ref_repeats:>12d}")
    for key in ours_stats:
        label = "spectrum centroid (c/img)" if key == "centroid" else f"per-field {key}"
        print(f"{label:>24} {ours_stats[key]:>9.3f} {reference_stats[key]:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed torch runs per case")
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed opensimplex runs per case (slow)")
    parser.add_argument("--stat-fields", type=int, default=16, help="torch fields for the statistics")
    parser.add_argument("--octaves", type=int, default=6)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--skip-volume", action="store_true", help="only run the 128x128 case")
    args = parser.parse_args()
    if min(args.repeats, args.ref_repeats, args.stat_fields) < 1:
        parser.error("--repeats, --ref-repeats and --stat-fields must be >= 1")

    torch.set_num_threads(1)
    mode = "pure Python"
    if opensimplex_is_compiled():
        import numba

        numba.set_num_threads(1)  # a like-for-like comparison with single-threaded torch on CPU
        mode = "numba JIT-compiled, 1 thread"
    print(f"torch {torch.__version__}, opensimplex {importlib.metadata.version('opensimplex')} ({mode})")
    run_case("image", (128, 128), args)
    if not args.skip_volume:
        run_case("volume", (64, 64, 64), args)


if __name__ == "__main__":
    main()
