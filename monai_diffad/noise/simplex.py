# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Vectorised simplex noise (AnoDDPM's octave sum) in PyTorch.

AnoDDPM (Wyatt et al., CVPRW 2022) replaces Gaussian noise by a sum of octaves of 3D simplex noise evaluated at
``(x / f_k, y / f_k, t / f_k)`` with ``f_k = frequency / 2**k``. The reference evaluates ``opensimplex`` pixel by
pixel; this module evaluates classic simplex noise (Perlin 2001, as described by Gustavson 2005: skew to the
hypercubic lattice, rank the offsets to find the simplex, hash corner gradients, sum radially attenuated
gradient ramps) for all points at once, on any device, for 3D and 4D lattices (2 or 3 spatial dims plus ``t``).
The lattice scale and amplitude are calibrated so that feature size and variance match ``opensimplex``
statistically (mean, std, radial power spectrum); values are not bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations, product

import torch

from monai_diffad.noise.gaussian import check_noise_shape, resolve_noise_device

__all__ = ["simplex_noise", "simplex_field"]

#: size of the random permutation and gradient tables; lattice coordinates are hashed modulo this
_TABLE_SIZE = 256
#: squared kernel radius; 0.5 keeps the noise continuous (a wider kernel reaches lattice points outside the simplex)
_KERNEL_RADIUS_SQ = 0.5
#: per lattice dimension: (coordinate scale, amplitude) giving opensimplex's feature size and std (noise3 / noise4)
_CALIBRATION: dict[int, tuple[float, float]] = {3: (0.51, 61.4), 4: (0.505, 62.7)}


def _gradient_set(dims: int, device: torch.device) -> torch.Tensor:
    """Gradient directions: every vector with one zero and ``±1`` elsewhere (12 in 3D, 32 in 4D).

    Returns:
        Float tensor of shape ``(dims * 2 ** (dims - 1), dims)``.
    """
    vectors = []
    for zero_axis in range(dims):
        for signs in product((-1.0, 1.0), repeat=dims - 1):
            vector = list(signs)
            vector.insert(zero_axis, 0.0)
            vectors.append(vector)
    return torch.tensor(vectors, dtype=torch.float32, device=device)


def _draw_tables(
    num_tables: int, num_gradients: int, generator: torch.Generator | None, draw_device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw independent hash permutations and gradient assignments, one pair per noise field.

    Returns:
        ``(permutation, gradient_index)``, both int64 of shape ``(num_tables, _TABLE_SIZE)`` on ``draw_device``.
    """
    permutation = torch.stack(
        [torch.randperm(_TABLE_SIZE, generator=generator, device=draw_device) for _ in range(num_tables)]
    )
    # a separate uniform table avoids the modulo bias of the classic ``perm % 12`` gradient choice
    gradient_index = torch.randint(
        num_gradients, (num_tables, _TABLE_SIZE), generator=generator, device=draw_device
    )
    return permutation, gradient_index


def simplex_field(
    points: torch.Tensor, permutation: torch.Tensor, gradient_index: torch.Tensor, gradients: torch.Tensor
) -> torch.Tensor:
    """Evaluate uncalibrated simplex noise at lattice-space points, one hash table per field.

    Args:
        points: ``(N, P, D)`` coordinates (float64 keeps the cell lookup exact for large ``t``) of ``P`` points in
            each of ``N`` fields, ``D >= 2``.
        permutation: ``(N, 256)`` int64 permutations of ``0..255`` hashing lattice points of each field.
        gradient_index: ``(N, 256)`` int64 indices into ``gradients``.
        gradients: ``(G, D)`` float32 gradient directions.

    Returns:
        float32 tensor ``(N, P)``: sum over the simplex corners of ``max(r2 - |d|^2, 0)^4 * <g, d>``.
    """
    num_fields, _, dims = points.shape
    skew = (math.sqrt(dims + 1) - 1) / dims
    unskew = (1 - 1 / math.sqrt(dims + 1)) / dims
    # skew onto the hypercubic lattice, find the containing cell, then measure the offset in unskewed space
    cell = torch.floor(points + points.sum(-1, keepdim=True) * skew)
    offset = (points - cell + cell.sum(-1, keepdim=True) * unskew).to(torch.float32)
    cell = cell.to(torch.int64)

    # the simplex is given by the order of the offset components: corner k steps along the k largest ones;
    # ties go to the later axis so that the ranks always form a permutation
    earlier = torch.ones(dims, dims, dtype=torch.bool, device=points.device).tril(-1)
    above = offset.unsqueeze(-1) > offset.unsqueeze(-2)
    tied = (offset.unsqueeze(-1) == offset.unsqueeze(-2)) & earlier
    rank = (above | tied).sum(-1)

    table_base = (torch.arange(num_fields, device=points.device) * _TABLE_SIZE).view(num_fields, 1)
    flat_permutation = permutation.reshape(-1)
    flat_gradient_index = gradient_index.reshape(-1)
    noise = torch.zeros(offset.shape[:-1], dtype=torch.float32, device=points.device)
    for corner in range(dims + 1):
        step = (rank >= dims - corner).to(torch.int64)
        delta = offset - step + corner * unskew
        falloff = (_KERNEL_RADIUS_SQ - delta.square().sum(-1)).clamp_min(0.0)
        lattice = cell + step
        hashed = torch.zeros_like(lattice[..., 0])
        for axis in range(dims - 1, -1, -1):
            hashed = flat_permutation[table_base + ((lattice[..., axis] + hashed) & (_TABLE_SIZE - 1))]
        corner_gradients = gradients[flat_gradient_index[table_base + hashed]]
        noise += falloff.square().square() * (corner_gradients * delta).sum(-1)
    return noise


def _time_coordinates(t: float | Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
    """Turn ``t`` into a float64 CPU tensor of one value or one value per batch item.

    Raises:
        TypeError: when ``t`` is not a number, a sequence of numbers or a tensor.
        ValueError: when it is not finite or its length is neither 1 nor ``batch``.
    """
    if isinstance(t, bool) or not isinstance(t, (int, float, Sequence, torch.Tensor)):
        raise TypeError(f"t must be a number, a sequence of numbers or a tensor, got {type(t).__name__}.")
    values = torch.as_tensor(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=torch.float64)
    values = values.reshape(-1)
    if values.numel() not in (1, batch):
        raise ValueError(f"t must hold 1 or B={batch} values, got {values.numel()}.")
    if not torch.isfinite(values).all():
        raise ValueError(f"t must be finite, got {t}.")
    return values


def _check_octave_parameters(octaves: int, persistence: float, frequency: float) -> None:
    """Raise ValueError/TypeError for octave settings outside their domain."""
    if isinstance(octaves, bool) or not isinstance(octaves, int):
        raise TypeError(f"octaves must be an int, got {type(octaves).__name__}.")
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}.")
    if not (math.isfinite(persistence) and persistence > 0):
        raise ValueError(f"persistence must be a finite number > 0, got {persistence}.")
    if not (math.isfinite(frequency) and frequency > 0):
        raise ValueError(f"frequency must be a finite number > 0, got {frequency}.")


def _pixel_grid(spatial: Sequence[int], device: torch.device) -> torch.Tensor:
    """Pixel indices ``(P, S)`` in float64, fastest-varying (last) axis first as in AnoDDPM's ``(x, y)``."""
    axes = [torch.arange(size, dtype=torch.float64, device=device) for size in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial))
    return grid.flip(-1)


def simplex_noise(
    shape: Sequence[int] | torch.Size,
    t: float | Sequence[float] | torch.Tensor = 0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    normalize: bool = False,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 64.0,
    dtype: torch.dtype = torch.float32,
    per_image: bool = False,
) -> torch.Tensor:
    """AnoDDPM simplex noise: ``n = sum_k persistence**k * S(p / f_k, t / f_k)``, ``f_k = frequency / 2**k``.

    ``p`` are pixel indices; ``S`` is 3D simplex noise over ``(x, y, t)`` for 2 spatial dims and 4D over
    ``(x, y, z, t)`` for 3. Each call draws fresh hash tables from ``generator``, so a seeded generator
    reproduces the noise. As in the reference, all images and channels share one field unless ``per_image``
    (or per-image ``t``, which samples the same field at different ``t``).

    Args:
        shape: output shape ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
        t: third (fourth) lattice coordinate, usually the diffusion step: a number, or ``B`` values (sequence or
            tensor) giving each image its own ``t``.
        generator: optional random generator; tables are drawn on its device.
        device: output and compute device; ``None`` means the generator's device (CPU without a generator).
        normalize: rescale each image's field to zero mean and unit variance. The reference does not
            (raw std is about 0.5 at 128x128 with the defaults).
        octaves: number of octaves, >= 1.
        persistence: amplitude ratio between successive octaves, > 0.
        frequency: divisor of the pixel coordinates for the first octave (feature size in pixels), > 0; it
            halves with each octave.
        dtype: floating point output dtype (computation is float32, cell lookup float64).
        per_image: draw an independent field for every batch item.

    Returns:
        Tensor of ``shape`` on ``device``; raw values are roughly within ``[-2, 2]`` for the defaults.

    Raises:
        TypeError: for a malformed ``shape``, ``t`` or ``octaves``, or a non-floating ``dtype``.
        ValueError: for a shape without 4 or 5 positive sizes, non-finite ``t``, a ``t`` whose length is neither
            1 nor ``B``, ``octaves < 1``, or non-positive ``persistence``/``frequency``.
    """
    shape = check_noise_shape(shape)
    _check_octave_parameters(octaves, persistence, frequency)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point dtype, got {dtype}.")
    batch, channels, spatial = shape[0], shape[1], shape[2:]
    times = _time_coordinates(t, batch)
    draw_device, compute_device = resolve_noise_device(generator, device)

    dims = len(spatial) + 1
    gradients = _gradient_set(dims, compute_device)
    num_tables = batch if per_image else 1
    permutation, gradient_index = _draw_tables(num_tables, gradients.shape[0], generator, draw_device)
    num_fields = max(num_tables, times.numel())
    permutation = permutation.to(compute_device).expand(num_fields, -1)
    gradient_index = gradient_index.to(compute_device).expand(num_fields, -1)

    grid = _pixel_grid(spatial, compute_device)
    time_column = times.to(compute_device).expand(num_fields).view(num_fields, 1, 1).expand(-1, grid.shape[0], 1)
    coordinates = torch.cat([grid.expand(num_fields, -1, -1), time_column], dim=-1)

    lattice_scale, amplitude = _CALIBRATION[dims]
    noise = torch.zeros(num_fields, grid.shape[0], dtype=torch.float32, device=compute_device)
    for octave in range(octaves):
        divisor = frequency / 2**octave
        field = simplex_field(coordinates * (lattice_scale / divisor), permutation, gradient_index, gradients)
        noise += (persistence**octave * amplitude) * field

    if normalize:
        noise = noise - noise.mean(dim=1, keepdim=True)
        # a constant field (a single pixel) stays zero instead of dividing by zero
        noise = noise / noise.std(dim=1, keepdim=True, correction=0).clamp_min(torch.finfo(torch.float32).eps)
    noise = noise.view(num_fields, 1, *spatial).expand(batch, channels, *spatial)
    return noise.to(dtype).contiguous()
