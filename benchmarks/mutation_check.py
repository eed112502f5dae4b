# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Mutation check: does the test suite notice when the claims that matter most are broken?

Each mutation changes one line of the package in a temporary copy of the repository, then runs the test files that
guard that claim against the copy (``PYTHONPATH`` and the working directory point at it). A mutation is *killed*
when a test fails. The unmutated copy must pass first, or the kills would mean nothing.

Usage::

    python benchmarks/mutation_check.py            # every mutation
    python benchmarks/mutation_check.py --only int8_scale_x50 batch_dependent_output

Exit status 0 when every mutation is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "monai_diffad/inferers/base.py"
PARTIAL = "monai_diffad/inferers/partial_diffusion.py"
NETWORK_CALL = "            out = network(x, timesteps=steps)\n"


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "autocast_channels_last_x1.02", "bf16/fp16 and channels-last paths compute what fp32 computes", BASE,
        NETWORK_CALL,
        NETWORK_CALL + "            out = out * 1.02 if dtype is not None or self.channels_last else out\n",
        ("tests/test_inferers.py",),
    ),
    Mutation(
        "batch_dependent_output", "results do not depend on the batch size (beyond float rounding)", BASE,
        NETWORK_CALL, "            out = network(x, timesteps=steps) * (1 + 1e-3 * (x.shape[0] - 1))\n",
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "int8_scale_x50", "int8 checkpoints load as the weights they were made from", "monai_diffad/int8.py",
        "state[name] = (q.float() * scale[name]", "state[name] = (q.float() * 50 * scale[name]",
        ("tests/test_quantization.py",),
    ),
    Mutation(
        "volume_slices_not_permuted", "volumes are processed slice by slice along the last axis", BASE,
        "slices = u.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)", "slices = u.reshape(b * d, c, h, w)",
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "volume_result_not_permuted_back", "slice results go back to their slice", BASE,
        'healthy = result["pseudo_healthy"].reshape(b, d, c, h, w).permute(0, 2, 3, 4, 1)',
        'healthy = result["pseudo_healthy"].reshape(b, c, h, w, d)',
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "slice_seeds_interleaved", "a volume's slice noise does not depend on the other volumes of the batch", BASE,
        "for s in seeds for k in range(d)]", "for k in range(d) for s in seeds]",
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "gaussian_streams_shared", "each image draws Gaussian noise from its own stream", PARTIAL,
        "generator=g) for g in self.generators]", "generator=self.generators[0]) for g in self.generators]",
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "simplex_streams_shared", "each image draws Simplex noise from its own stream", PARTIAL,
        "t=t, generator=self.generators, device=self.device,",
        "t=t, generator=self.generators[:1] * len(self.generators), device=self.device,",
        ("tests/test_inferers.py", "tests/test_determinism.py"),
    ),
    Mutation(
        "unsafe_torch_load", "checkpoints never run code", "monai_diffad/networks.py",
        'torch.load(path, map_location="cpu", weights_only=True)',
        'torch.load(path, map_location="cpu", weights_only=False)',
        ("tests/test_safe_loading.py",),
    ),
)


def copy_repository(target: str) -> None:
    """Tracked and untracked, not ignored files (no .venv, no data caches) of the working tree."""
    files = subprocess.run(
        ["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = os.path.join(REPO, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(target, name))


def run_tests(copy: str, tests: tuple[str, ...]) -> tuple[bool, list[str], float]:
    """``pytest`` on ``tests`` of the copy: (passed, names of the failed tests, seconds)."""
    env = {**os.environ, "PYTHONPATH": copy, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rf", *tests],
        cwd=copy, env=env, capture_output=True, text=True, check=False,  # a failing test is the expected outcome
    )
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    if proc.returncode not in (0, 1):  # 2+: collection or usage error, which is not a test noticing anything
        raise RuntimeError(f"pytest exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.returncode == 0, failed, time.perf_counter() - start


def check_copy_is_imported(copy: str) -> None:
    env = {**os.environ, "PYTHONPATH": copy}
    where = subprocess.run(
        [sys.executable, "-c", "import monai_diffad; print(monai_diffad.__file__)"],
        cwd=copy, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not os.path.realpath(where).startswith(os.path.realpath(copy)):
        raise RuntimeError(f"the tests would import {where}, not the copy in {copy}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="mutation names to run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    killed = 0
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as copy:
        copy_repository(copy)
        check_copy_is_imported(copy)
        baseline_tests = tuple(sorted({t for m in chosen for t in m.tests}))
        passed, failed, seconds = run_tests(copy, baseline_tests)
        if not passed:
            print(f"baseline fails ({', '.join(failed)}): fix the suite first")
            return 1
        print(f"baseline: {' '.join(baseline_tests)} pass ({seconds:.0f} s)")
        for mutation in chosen:
            path = os.path.join(copy, mutation.path)
            with open(path) as f:
                original = f.read()
            if original.count(mutation.old) != 1:
                raise RuntimeError(f"{mutation.name}: the line to mutate is not found exactly once in {mutation.path}")
            with open(path, "w") as f:
                f.write(original.replace(mutation.old, mutation.new))
            try:
                passed, failed, seconds = run_tests(copy, mutation.tests)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            killed += not passed
            verdict = f"KILLED by {len(failed)} test(s), e.g. {', '.join(failed[:3])}" if not passed else "SURVIVED"
            print(f"{mutation.name} ({mutation.claim}): {verdict} [{seconds:.0f} s]", flush=True)
    print(f"kill rate: {killed}/{len(chosen)}")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
