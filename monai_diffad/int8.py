# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The int8 weight format: per-output-channel symmetric int8 of a state dict, and back.

Each floating-point tensor of at least ``min_numel`` elements is stored as int8 with one float32 scale per output
channel (the first dimension), symmetric around zero: ``w ~= q * scale`` with ``q`` in [-127, 127]. Biases, norm
parameters and other small tensors are kept as they are. The stored object is a plain dictionary of tensors and
strings, so ``torch.load(..., weights_only=True)`` reads it. Files and the command line: :mod:`monai_diffad.quantization`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["INT8_FORMAT", "is_int8_state_dict", "quantize_state_dict", "dequantize_state_dict"]

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
