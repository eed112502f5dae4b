"""Int8 storage of network weights, so that a large checkpoint can ship inside the repository.

Each floating-point tensor of at least ``min_numel`` elements is stored as int8 with one float32 scale per output
channel (the first dimension), symmetric around zero: ``w ~= q * scale`` with ``q`` in [-127, 127]. Biases, norm
parameters and other small tensors are kept as they are. Weight-only per-channel int8 changes a convolution's output
by well under 1 %; whether that matters for a given network is measured, not assumed (see the DDPM bundle docs).

Why not fp16 safetensors: int8 is half their size (a paper-size network of 18 M parameters: 18 MB instead of 36 MB).
Its error is larger than fp16's, so what it does to detection is measured before an int8 file is used.

The stored object is a plain dictionary of tensors and strings, so ``torch.load(..., weights_only=True)`` reads it:

.. code-block:: python

    {"format": "monai_diffad.int8/1", "int8": {name: int8 tensor}, "scale": {name: float32 (C,)},
     "dtype": {name: "float32"}, "other": {name: tensor}}

Command line::

    python -m monai_diffad.quantization model_paper.pt model_paper_int8.pt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections.abc import Sequence

import torch

from monai_diffad.int8 import INT8_FORMAT, dequantize_state_dict, is_int8_state_dict, quantize_state_dict
from monai_diffad.networks import load_state_dict_safely, load_weights_only

__all__ = ["INT8_FORMAT", "is_int8_state_dict", "quantize_state_dict", "dequantize_state_dict", "materialize_int8"]


def materialize_int8(path: str, cache_dir: str | None = None) -> str:
    """The path of a plain (floating-point) state dict rebuilt from the int8 checkpoint ``path``.

    MONAI's ``CheckpointLoader`` reads plain state dicts only, so bundles load int8 weights through this: the rebuilt
    file is written once to ``cache_dir`` (default: ``<tmp>/monai_diffad``), named by the int8 file's SHA-256, and
    reused afterwards.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an int8 checkpoint, or not a weights-only file (a pickle carrying code is refused
            without running it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Int8 checkpoint not found: '{path}'.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "monai_diffad")
    stem = os.path.splitext(os.path.basename(path))[0]
    target = os.path.join(cache_dir, f"{stem}-{digest.hexdigest()[:16]}.pt")
    if not os.path.isfile(target):
        state = dequantize_state_dict(load_weights_only(path))
        os.makedirs(cache_dir, exist_ok=True)
        partial = f"{target}.{os.getpid()}.tmp"  # concurrent ranks each write their own file, then rename atomically
        torch.save(state, partial)
        os.replace(partial, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_diffad.quantization", description="Write an int8 copy of a state-dict checkpoint."
    )
    parser.add_argument("source", help="checkpoint holding a state dict (weights-only .pt or .safetensors)")
    parser.add_argument("target", help="int8 checkpoint to write (.pt)")
    parser.add_argument("--min-numel", type=int, default=1024, help="smallest tensor to quantize (default 1024)")
    args = parser.parse_args(argv)
    state = load_state_dict_safely(args.source)
    checkpoint = quantize_state_dict(state, min_numel=args.min_numel)
    torch.save(checkpoint, args.target)
    error = max(
        ((dequantize_state_dict(checkpoint)[k].float() - v.float()).abs().max().item() for k, v in state.items()),
        default=0.0,
    )
    size = os.path.getsize(args.target) / 2**20
    print(f"{args.target}: {len(checkpoint['int8'])} tensors in int8, {size:.1f} MiB, largest weight error {error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
