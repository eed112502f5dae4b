# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Network and scheduler factories, and safe checkpoint loading.

One trained DDPM serves the DDPM, AnoDDPM, THOR and AutoDDPM methods, so the architecture is defined once here
and referenced from every bundle (``network_def``) and from the training code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from monai_diffad.int8 import dequantize_state_dict, is_int8_state_dict

__all__ = [
    "PAPER_UNET",
    "DEMO_UNET",
    "DEMO_UNET_128",
    "DDPM_NETWORKS",
    "DDPMNetwork",
    "ddpm_network",
    "diffusion_unet",
    "ddpm_scheduler",
    "load_state_dict_safely",
    "load_weights_only",
    "convert_legacy_unet_state_dict",
    "load_diffusion_unet",
    "load_matching_state_dict",
]

#: THOR / AutoDDPM reference network (18.04 M parameters at 128x128; docs/methods.md).
PAPER_UNET: dict[str, Any] = {
    "channels": [128, 256, 256],
    "attention_levels": [False, True, True],
    "num_res_blocks": 1,
    "num_head_channels": 256,
}

#: Small network that trains on 2 CPU cores at 64x64 (the shipped demo weights).
DEMO_UNET: dict[str, Any] = {
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 64,
}

#: The demo network at 128x128 (1.5 mm): one more level than :data:`DEMO_UNET`, so that attention still runs at
#: 16x16 over the whole brain; the demo architecture at 128x128 (attention at 32x32) is 1.35x slower per training
#: step on the CPU (``benchmarks/bench_training.py``).
DEMO_UNET_128: dict[str, Any] = {
    "channels": [32, 64, 64, 64],
    "attention_levels": [False, False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 64,
}


@dataclass(frozen=True)
class DDPMNetwork:
    """One DDPM network the bundles can run: its architecture, resolution, weights and training configs.

    Attributes:
        architecture: keyword arguments of :func:`diffusion_unet`.
        resolution: the image size (pixels per side) it is trained and run at.
        weights_stem: file stem of its weights in ``bundles/ddpm/models/`` (``<stem>.pt``, ``<stem>_simplex.pt``).
        train_configs: the bundle configs, merged in order, that train it (``python -m monai.bundle run``).
    """

    architecture: Mapping[str, Any]
    resolution: int
    weights_stem: str
    train_configs: tuple[str, ...]

    def train_command(self) -> str:
        """The shell command that trains this network on the built-in template set."""
        quoted = ",".join(f"'{c}'" for c in self.train_configs)
        configs = self.train_configs[0] if len(self.train_configs) == 1 else f"[{quoted}]"
        return f'python -m monai.bundle run --config_file "{configs}"'


#: The DDPM networks by the name a bundle's ``network_size`` uses: the shipped 64x64 demo, the demo at 128x128
#: (``bundles/ddpm/train_128.json``) and the papers' network (``bundles/ddpm/train_paper.json``, a GPU job).
DDPM_NETWORKS: dict[str, DDPMNetwork] = {
    "demo": DDPMNetwork(DEMO_UNET, 64, "model", ("bundles/ddpm/train.json",)),
    "demo128": DDPMNetwork(DEMO_UNET_128, 128, "model_128", ("bundles/ddpm/train.json", "bundles/ddpm/train_128.json")),
    "paper": DDPMNetwork(PAPER_UNET, 128, "model_paper", ("bundles/ddpm/train.json", "bundles/ddpm/train_paper.json")),
}


def ddpm_network(name: str) -> DDPMNetwork:
    """The :data:`DDPM_NETWORKS` entry called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in DDPM_NETWORKS:
        raise ValueError(f"network must be one of {sorted(DDPM_NETWORKS)}, got {name!r}.")
    return DDPM_NETWORKS[name]


def diffusion_unet(
    channels: Sequence[int] = DEMO_UNET["channels"],
    attention_levels: Sequence[bool] = DEMO_UNET["attention_levels"],
    num_res_blocks: int = DEMO_UNET["num_res_blocks"],
    num_head_channels: int = DEMO_UNET["num_head_channels"],
    in_channels: int = 1,
    out_channels: int = 1,
    norm_num_groups: int = 32,
) -> DiffusionModelUNet:
    """Build the 2D epsilon-prediction UNet used by every DDPM-based method.

    ``include_fc=False`` and ``use_combined_linear=False`` make MONAI core's UNet compute the same forward pass as
    the monai-generative network the reference code trained (its attention output projection was never applied).

    Args:
        channels: feature channels per level.
        attention_levels: whether each level uses self-attention.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        in_channels: image channels (1 for MRI slices).
        out_channels: predicted noise channels.
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.

    Returns:
        A ``DiffusionModelUNet`` taking ``(B, in_channels, H, W)`` and timesteps ``(B,)``.

    Raises:
        ValueError: when ``channels`` and ``attention_levels`` differ in length or the groups do not divide.
    """
    if len(channels) != len(attention_levels):
        raise ValueError(f"channels ({len(channels)}) and attention_levels ({len(attention_levels)}) differ in length.")
    if any(c % norm_num_groups for c in channels):
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count in {list(channels)}.")
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        attention_levels=tuple(attention_levels),
        num_res_blocks=num_res_blocks,
        num_head_channels=num_head_channels,
        norm_num_groups=norm_num_groups,
        include_fc=False,
        use_combined_linear=False,
    )


def ddpm_scheduler(
    num_train_timesteps: int = 1000, clip_sample: bool = True, variance_type: str = "fixed_small"
) -> DDPMScheduler:
    """The papers' schedule: T=1000, linear beta 1e-4 to 2e-2, epsilon prediction, x0 clipped to [-1, 1].

    Args:
        num_train_timesteps: T.
        clip_sample: clip the predicted x0 to [-1, 1].
        variance_type: variance of each reverse step: ``"fixed_small"`` (the posterior variance β̃_t, THOR and
            AutoDDPM) or ``"fixed_large"`` (β_t, the AnoDDPM reference's sampling).
    """
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        schedule="linear_beta",
        beta_start=1e-4,
        beta_end=2e-2,
        variance_type=variance_type,
        prediction_type="epsilon",
        clip_sample=clip_sample,
    )


def load_weights_only(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with any refusal turned into one clear ``ValueError``.

    Raises:
        ValueError: the file holds anything but tensors and plain containers (e.g. a pickle that would run code,
            which is never executed), or is truncated.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a safe checkpoint"
        raise ValueError(
            f"Refused to load '{path}': it is not a weights-only checkpoint ({type(e).__name__}: {e}). "
            "Only tensors and plain containers are accepted; re-save the state_dict with torch.save."
        ) from e


def load_state_dict_safely(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing code from it.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``,
    which refuses pickled objects other than tensors and plain containers. Int8 checkpoints written by
    :func:`monai_diffad.int8.quantize_state_dict` are returned dequantized.

    Args:
        path: checkpoint file.
        key: optional entry holding the state dict (e.g. ``"model"`` or ``"state_dict"``); when ``None`` the
            common wrappers ``model``/``state_dict``/``network`` are unwrapped automatically.

    Returns:
        A ``{name: tensor}`` mapping.

    Raises:
        FileNotFoundError: the file does not exist (the message says which file).
        ValueError: the file is not a safe checkpoint, or ``key`` is missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint not found: '{path}'. Train one with '{_network_for_weights(path).train_command()}' "
            "or pass the path of an existing checkpoint."
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path)
        except Exception as e:  # SafetensorError, OSError, ...: a truncated or foreign file
            raise ValueError(f"Cannot read '{path}' as safetensors ({type(e).__name__}: {e}).") from e
    else:
        obj = load_weights_only(path)

    if is_int8_state_dict(obj):
        try:
            obj = dequantize_state_dict(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Checkpoint '{path}' is a damaged int8 checkpoint ({e}).") from e
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ValueError(f"Checkpoint '{path}' has no entry '{key}'.")
        obj = obj[key]
    else:
        while isinstance(obj, Mapping) and len(obj) > 0 and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            wrapper = next((k for k in ("model", "state_dict", "network") if k in obj), None)
            if wrapper is None:
                break
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"Checkpoint '{path}' does not hold a (non-empty) state dict of tensors.")
    return dict(obj)


def _network_for_weights(path: str) -> DDPMNetwork:
    """The network whose weights file ``path`` names (``model_paper*.pt``: the paper network; else the demo)."""
    stem = os.path.basename(path).split(".")[0].removesuffix("_int8").removesuffix("_simplex")
    return next((n for n in DDPM_NETWORKS.values() if n.weights_stem == stem), DDPM_NETWORKS["demo"])


def _is_legacy_unet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """monai-generative UNets name attention projections ``to_q``/``to_k``/``to_v``; MONAI core uses ``attn.*``."""
    return any(".to_q." in k or ".to_k." in k or ".to_v." in k for k in state_dict)


def convert_legacy_unet_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: DiffusionModelUNet
) -> dict[str, torch.Tensor]:
    """Convert a monai-generative ``DiffusionModelUNet`` state dict (or a THOR/AutoDDPM reference checkpoint) to MONAI core.

    Reference checkpoints prefix keys with ``unet.`` and carry LPIPS weights (``l_pips_sq.*``); both are removed
    before MONAI's own ``DiffusionModelUNet.load_old_state_dict`` key mapping is applied.

    Args:
        state_dict: the old checkpoint's tensors.
        model: a MONAI core network of the matching architecture; it receives the converted weights.

    Returns:
        The converted state dict (also loaded into ``model``).
    """
    cleaned = {
        (k[len("unet.") :] if k.startswith("unet.") else k): v
        for k, v in state_dict.items()
        if not k.startswith("l_pips_sq.")
    }
    model.load_old_state_dict(cleaned)
    return model.state_dict()


def load_diffusion_unet(
    path: str | os.PathLike, model: DiffusionModelUNet | None = None, strict: bool = True, **unet_kwargs: Any
) -> DiffusionModelUNet:
    """Load weights (new MONAI core or old monai-generative format) into a ``DiffusionModelUNet``.

    Args:
        path: ``.pt``/``.pth``/``.safetensors`` checkpoint.
        model: network to fill; built with :func:`diffusion_unet` (``unet_kwargs``) when ``None``.
        strict: require an exact key match.
        unet_kwargs: architecture options for :func:`diffusion_unet`.

    Returns:
        The network in eval mode.

    Raises:
        FileNotFoundError: the checkpoint does not exist (the message says which file and how to get one).
        ValueError: the file is not a safe checkpoint, or does not match the architecture (the message lists a few
            missing, unexpected and differently shaped keys).
    """
    model = diffusion_unet(**unet_kwargs) if model is None else model
    state = load_state_dict_safely(path)
    if _is_legacy_unet_state_dict(state) or any(k.startswith("unet.") for k in state):
        with _architecture_mismatch_as_value_error(model, state, path):
            convert_legacy_unet_state_dict(state, model)
    else:
        load_matching_state_dict(model, state, path, strict=strict)
    return model.eval()


def load_matching_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, strict: bool = True
) -> torch.nn.Module:
    """``model.load_state_dict(state)``, with an architecture mismatch reported as one ``ValueError`` naming ``path``.

    Args:
        model: the network to fill.
        state: its weights, e.g. from :func:`load_state_dict_safely`.
        path: the file ``state`` came from (for the message).
        strict: require an exact key match.

    Returns:
        ``model``.

    Raises:
        ValueError: the weights do not fit the network (the message lists a few missing, unexpected and differently
            shaped keys), e.g. 64x64 demo weights given to the 128x128 network.
    """
    with _architecture_mismatch_as_value_error(model, state, path):
        model.load_state_dict(state, strict=strict)
    return model


@contextmanager
def _architecture_mismatch_as_value_error(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, KeyError, AssertionError) as e:
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state))[:5], sorted(set(state) - set(expected))[:5]
        # same names, different widths: load_state_dict's first line does not say which tensors
        resized = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)[:5]
        raise ValueError(
            f"Checkpoint '{os.fspath(path)}' does not match the network architecture "
            f"(missing e.g. {missing}, unexpected e.g. {unexpected}, shape mismatch e.g. {resized}): "
            f"{str(e).splitlines()[0]}"
        ) from e
