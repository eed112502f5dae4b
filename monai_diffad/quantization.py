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
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["INT8_FORMAT", "is_int8_state_dict", "quantize_state_dict", "dequantize_state_dict", "materialize_int8"]

INT8_FORMAT = "monai_diffad.int8/1"


def is_int8_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a checkpoint written by :func:`quantize_state_dict`."""
    return isinstance(obj, Mapping) and obj.get("format") == INT8_FORMAT


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor], min_numel: int = 1024) -> dict[str, Any]:
    """Store the large floating-point tensors of a state dict as per-output-channel int8.

    Args:
        state_dict: ``{name: tensor}``; tensors of any device and dtype.
        min_numel: floating-point tensors with at least this many elements and at least 2 dimensions are quantized;
            the rest are kept unchanged.

    Returns:
        The int8 checkpoint described in the module docstring (all tensors on the CPU).
    """
    int8: dict[str, torch.Tensor] = {}
    scale: dict[str, torch.Tensor] = {}
    dtype: dict[str, str] = {}
    other: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        value = value.detach().cpu()
        if not value.is_floating_point() or value.ndim < 2 or value.numel() < min_numel:
            other[name] = value.clone()
            continue
        w = value.float().reshape(value.shape[0], -1)
        amax = w.abs().amax(dim=1)
        s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))  # an all-zero channel stays exactly zero
        int8[name] = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8).reshape(value.shape)
        scale[name] = s
        dtype[name] = str(value.dtype).removeprefix("torch.")
    return {"format": INT8_FORMAT, "int8": int8, "scale": scale, "dtype": dtype, "other": other}


def dequantize_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rebuild a ``{name: tensor}`` state dict from :func:`quantize_state_dict`'s output.

    Raises:
        ValueError: ``checkpoint`` is not an int8 checkpoint, or its entries do not match.
    """
    if not is_int8_state_dict(checkpoint):
        raise ValueError(f"Not an int8 checkpoint (expected format '{INT8_FORMAT}').")
    int8, scale, dtype = checkpoint["int8"], checkpoint["scale"], checkpoint["dtype"]
    if set(int8) != set(scale) or set(int8) != set(dtype):
        raise ValueError("Int8 checkpoint is inconsistent: 'int8', 'scale' and 'dtype' name different tensors.")
    state = {name: value.clone() for name, value in checkpoint["other"].items()}
    for name, q in int8.items():
        target = getattr(torch, dtype[name], None)
        if not isinstance(target, torch.dtype) or q.dtype != torch.int8 or scale[name].shape != q.shape[:1]:
            raise ValueError(f"Int8 checkpoint entry '{name}' is malformed.")
        state[name] = (q.float() * scale[name].reshape(-1, *([1] * (q.ndim - 1)))).to(target)
    return state


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
        from monai_diffad.networks import load_weights_only  # imported here: networks imports this module lazily too

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
    from monai_diffad.networks import load_state_dict_safely

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
