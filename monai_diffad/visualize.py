# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""PNG figures for a quick look: input | pseudo-healthy | anomaly map | overlay."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from monai_diffad.transforms.io import atomic_path

__all__ = ["representative_slice", "save_overlay_png", "save_panel_png"]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    return arr[0] if arr.ndim in (3, 4) and arr.shape[0] == 1 else arr  # drop a single channel axis


def representative_slice(anomaly_map: np.ndarray) -> int:
    """Index (last axis) of the slice of a ``(H, W, D)`` map with the largest anomaly mass."""
    return int(np.argmax(anomaly_map.reshape(-1, anomaly_map.shape[-1]).sum(0)))


def save_panel_png(path: str, panels: Sequence[tuple[str, np.ndarray, str | None]], title: str | None = None) -> str:
    """Save 2D panels side by side.

    Each panel is ``(caption, array, colormap)``: an ``(H, W)`` array in RAS ``[x, y]`` order with a colormap
    (``"gray"`` is scaled to the panel's maximum, others to [0, 1]), or an ``(H, W, 3)`` RGB array with ``None``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3), squeeze=False)
    for ax, (caption, arr, cmap) in zip(axes[0], panels):
        vmax = 1.0 if cmap != "gray" else max(float(np.max(arr)), 1e-6)
        shown = np.rot90(arr)
        ax.imshow(shown) if cmap is None else ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=vmax)  # RAS [x, y] arrays are shown with anterior up
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # complete or absent, even if the run is interrupted
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def save_overlay_png(
    path: str,
    image: torch.Tensor | np.ndarray,
    pseudo_healthy: torch.Tensor | np.ndarray,
    anomaly_map: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> str:
    """Input | pseudo-healthy | map | overlay (label, or map >= 0.5, tinted over the input) for one 2D image or 3D volume.

    Args:
        path: PNG file to write.
        image, pseudo_healthy, anomaly_map: ``([1,] H, W[, D])`` arrays; volumes are shown at
            :func:`representative_slice`. The map is expected in [0, 1].
        label: optional uint8 label of the same shape, tinted red over the input (else map >= 0.5 is tinted).
        title: figure title.

    Returns:
        ``path``.
    """
    img, healthy, amap = _as_numpy(image), _as_numpy(pseudo_healthy), _as_numpy(anomaly_map)
    lab = None if label is None else _as_numpy(label)
    if amap.ndim == 3:
        k = representative_slice(amap)
        img, healthy, amap = img[..., k], healthy[..., k], amap[..., k]
        lab = None if lab is None else lab[..., k]
        title = f"{title or ''} (slice {k})".strip()
    overlay = np.clip(img / max(float(img.max()), 1e-6), 0, 1)
    rgb = np.stack([overlay] * 3, axis=-1)
    highlight = lab > 0 if lab is not None else amap >= 0.5
    rgb[highlight] = 0.5 * rgb[highlight] + 0.5 * np.array([1.0, 0.1, 0.1])
    caption = "label over input" if lab is not None else "map >= 0.5 over input"
    panels = [
        ("input", img, "gray"),
        ("pseudo-healthy", healthy, "gray"),
        ("anomaly map", amap, "inferno"),
        (caption, rgb, None),
    ]
    return save_panel_png(path, panels, title)
