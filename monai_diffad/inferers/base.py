# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The detection frame every anomaly detector of this package stands on, a ``monai.inferers.DiffusionInferer``.

Every method restores an input to a pseudo-healthy image and compares the two. The frame holds what does not depend
on how the restoration is done: input validation, value-range mapping between the data and the network, per-image
seeds, slice-wise batching of 3D volumes in chunks, the network call (precision, memory format, compilation), the
evaluator protocol ``inferer(inputs, model)`` and the image-level score. How a 2D batch is restored is the
subclass's :meth:`DiffusionAnomalyInferer.detect_batch`; partial noising and its reverse loop live one layer up,
in :mod:`monai_diffad.inferers.partial_diffusion`.

Drop-in rule: the constructor accepts every scheduler the parent accepts, and the parent's calls
(``inferer(inputs, model, noise, timesteps)``, ``sample``, ``get_likelihood``) are the parent's. What detection
needs from the scheduler is checked when detection runs (:meth:`DiffusionAnomalyInferer.validate_settings`).
"""

from __future__ import annotations

import math
import warnings
import weakref
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler, Scheduler
from monai.utils import look_up_option
from tqdm.auto import tqdm

from monai_diffad.inferers.output import AnomalyOutput
from monai_diffad.maps.scoring import top_fraction_mean

__all__ = ["DetectionBatch", "DiffusionAnomalyInferer"]

_OUT_OF_RANGE = ("error", "clip")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_MAX_SEED = 2**62


@dataclass(frozen=True)
class DetectionBatch:
    """One chunk of 2D images on its way through :meth:`DiffusionAnomalyInferer.detect_batch`.

    Attributes:
        images: ``(B, C, H, W)`` images (or volume slices) in [0, 1].
        seeds: one noise seed per image, drawn by :meth:`DiffusionAnomalyInferer.draw_image_seeds` (a method
            without noise ignores them).
        progress: show tqdm bars.
        return_intermediates: also return the method's intermediate tensors.
    """

    images: torch.Tensor
    seeds: tuple[int, ...]
    progress: bool
    return_intermediates: bool


class DiffusionAnomalyInferer(DiffusionInferer):
    """The detection frame: validation, value ranges, per-image seeds, 2D/3D slicing in chunks, the evaluator protocol
    and the image score, around a method's restoration of a 2D batch (:meth:`detect_batch`).

    The parent's training call is unchanged: ``inferer(inputs, model, noise, timesteps)`` returns the network
    prediction exactly as ``DiffusionInferer`` does, and ``sample``/``get_likelihood`` are the parent's, with any
    scheduler, so every subclass is a drop-in in MONAI pipelines. Called as ``inferer(inputs, model)`` (what
    ``SupervisedEvaluator`` does), it runs :meth:`detect` and returns the outputs named in ``evaluator_outputs``
    stacked along the channel dimension.

    Args:
        scheduler: the scheduler the network was trained with. Any MONAI scheduler is accepted, as by the parent;
            detection needs a ``DDPMScheduler`` (checked by :meth:`validate_settings` when detection runs).
        value_range: (low, high) intensity range of the inputs; maps are computed on inputs rescaled to [0, 1].
        model_range: (low, high) range the network was trained on (the references map [0, 1] to [-1, 1]).
        out_of_range: what to do with inputs outside ``value_range`` by more than 5 % of its width:
            ``"error"`` (default) or ``"clip"`` (with a ``RuntimeWarning``).
        max_batch_size: images (or volume slices) processed together; bounds memory for large volumes.
        score_top_fraction: the image-level score is the mean of this top fraction of map values.
        evaluator_outputs: fields stacked on the channel axis when called as ``inferer(inputs, model)``.
        progress: default of :meth:`detect`'s ``progress`` (tqdm bars), e.g. for bundle runs.
        precision: network precision: ``"fp32"`` (default), or ``"bf16"``/``"fp16"`` autocast (GPU speed-up; the
            maps and the restoration state stay float32).
        channels_last: feed the network channels-last tensors (convert the network too, with
            ``net.to(memory_format=torch.channels_last)``); helps convolutions on recent GPUs.
        compile_mode: run the network through ``torch.compile(network, mode=compile_mode)``, compiled once per
            network and kept while the network lives: ``None`` (default, eager), ``"default"``,
            ``"reduce-overhead"`` (CUDA graphs: the win for small networks, whose steps are launch-bound),
            ``"max-autotune"`` or ``"max-autotune-no-cudagraphs"``. The first calls pay the compilation.

    Raises:
        ValueError: an option is out of range or unknown.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        value_range: Sequence[float] = (0.0, 1.0),
        model_range: Sequence[float] = (-1.0, 1.0),
        out_of_range: str = "error",
        max_batch_size: int = 32,
        score_top_fraction: float = 0.01,
        evaluator_outputs: Sequence[str] = ("anomaly_map",),
        progress: bool = False,
        precision: str = "fp32",
        channels_last: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__(scheduler)
        self.value_range = self._check_range(value_range, "value_range")
        self.model_range = self._check_range(model_range, "model_range")
        self.out_of_range = look_up_option(out_of_range, _OUT_OF_RANGE)
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        self.max_batch_size = int(max_batch_size)
        if not 0.0 < float(score_top_fraction) <= 1.0:
            raise ValueError(f"score_top_fraction must be in (0, 1], got {score_top_fraction}.")
        self.score_top_fraction = float(score_top_fraction)
        for name in evaluator_outputs:
            look_up_option(name, ("anomaly_map", "pseudo_healthy"))
        self.evaluator_outputs = tuple(evaluator_outputs)
        self.progress = bool(progress)
        self.precision = look_up_option(precision, tuple(_AUTOCAST_DTYPES))
        self.channels_last = bool(channels_last)
        self.compile_mode = look_up_option(compile_mode, _COMPILE_MODES)
        self._compiled: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ what a method declares
    @property
    @abstractmethod
    def num_network_calls(self) -> int:
        """Network calls one :meth:`detect_batch` makes on a batch of whole images (one chunk of up to
        ``max_batch_size`` images or volume slices), whatever the batch size: a volume of D slices costs
        ``ceil(D / max_batch_size)`` times this."""

    @abstractmethod
    def detect_batch(self, batch: DetectionBatch, diffusion_model: torch.nn.Module) -> dict[str, Any]:
        """Method-specific detection on one chunk of 2D images (``batch.images`` ``(B, C, H, W)`` in [0, 1]).

        Returns:
            ``anomaly_map`` ``(B, 1, H, W)`` in [0, 1], ``pseudo_healthy`` ``(B, C, H, W)`` in [0, 1] and
            ``intermediates`` (a dict of tensors, empty unless ``batch.return_intermediates``).
        """

    # ------------------------------------------------------------------ validation helpers
    @property
    def num_train_timesteps(self) -> int:
        """T, the scheduler's number of training steps."""
        return int(self.scheduler.num_train_timesteps)

    def detection_scheduler(self) -> DDPMScheduler:
        """The scheduler, which detection reads as a ``DDPMScheduler`` (its ᾱ tables and posterior).

        Raises:
            TypeError: the scheduler is of another kind (the parent's calls still take it).
        """
        if not isinstance(self.scheduler, DDPMScheduler):
            raise TypeError(
                f"{type(self).__name__} needs a monai.networks.schedulers.DDPMScheduler, "
                f"got {type(self.scheduler).__name__}."
            )
        return self.scheduler

    def validate_settings(self) -> None:
        """Check what detection needs from the scheduler: a ``DDPMScheduler`` here; subclasses add the settings that
        depend on its T (noise levels, steps). :meth:`detect` runs it first; call it to refuse settings before any
        data is read.

        Raises:
            TypeError: the scheduler is not a ``DDPMScheduler``.
            ValueError: a setting does not fit the scheduler (subclasses).
        """
        self.detection_scheduler()

    @staticmethod
    def _check_range(value: Sequence[float], name: str) -> tuple[float, float]:
        if len(value) != 2 or not all(math.isfinite(float(v)) for v in value) or float(value[0]) >= float(value[1]):
            raise ValueError(f"{name} must be (low, high) with finite low < high, got {value!r}.")
        return float(value[0]), float(value[1])

    def validate_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Check shape, finiteness, non-constant content and value range; return the inputs rescaled to [0, 1].

        Raises:
            TypeError: ``inputs`` is not a tensor.
            ValueError: wrong number of dimensions, NaN/inf, an empty or constant image, or values outside
                ``value_range`` when ``out_of_range="error"``.
        """
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}.")
        if inputs.ndim not in (4, 5):
            raise ValueError(
                f"inputs must be (B, C, H, W) or (B, C, H, W, D), got {inputs.ndim} dimensions {tuple(inputs.shape)}."
            )
        if inputs.numel() == 0:
            raise ValueError(f"inputs are empty: shape {tuple(inputs.shape)}.")
        # metadata is the caller's business (Invertd restores geometry); slicing batched MetaTensors is fragile
        x = (inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs).float()
        if not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or infinite values.")
        flat = x.flatten(1)
        constant = (flat.amax(1) - flat.amin(1)) == 0
        if constant.any():
            idx = constant.nonzero().flatten().tolist()
            raise ValueError(f"image(s) {idx} of the batch are constant (empty): there is no content to restore.")
        lo, hi = self.value_range
        u = (x - lo) / (hi - lo)
        tol = 0.05
        if u.min() < -tol or u.max() > 1 + tol:
            span = f"inputs span [{x.min().item():.4g}, {x.max().item():.4g}], outside value_range={self.value_range}."
            if self.out_of_range == "error":
                raise ValueError(
                    f"{span} Normalise intensities first (e.g. monai.transforms.ScaleIntensityRangePercentiles) or set "
                    "out_of_range='clip'."
                )
            # clipping far out-of-range inputs is allowed, never silent: the map may then mean little
            warnings.warn(f"{span} They were clipped (out_of_range='clip').", RuntimeWarning, stacklevel=3)
        return u.clamp(0.0, 1.0)

    @staticmethod
    def validate_mask(mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Check a foreground mask against validated inputs: a finite ``(B, 1, *spatial)`` tensor.

        Raises:
            TypeError: ``mask`` is not a tensor.
            ValueError: wrong shape, or NaN/inf values (which would silently count as background).
        """
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}.")
        expected = (inputs.shape[0], 1, *inputs.shape[2:])
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}.")
        if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
            raise ValueError("mask contains NaN or infinite values.")
        return mask

    def network_input_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """In-plane size of what the network is called on for images of in-plane size ``spatial`` (the images')."""
        return tuple(spatial)

    def validate_network(self, diffusion_model: torch.nn.Module, inputs: torch.Tensor) -> None:
        """Check inputs against the network's declared input channels and down-sampling depth, where it declares them.

        MONAI's ``DiffusionModelUNet`` exposes ``in_channels`` and ``block_out_channels`` and halves the size at every
        level but the last; other modules (wrappers, test doubles) are not checked.

        Raises:
            ValueError: channel count differs, or the in-plane size is not divisible by ``2 ** (levels - 1)``.
        """
        channels = getattr(diffusion_model, "in_channels", None)
        if isinstance(channels, int) and channels != inputs.shape[1]:
            raise ValueError(f"inputs have {inputs.shape[1]} channel(s), the network expects {channels}.")
        levels = getattr(diffusion_model, "block_out_channels", None)
        if isinstance(levels, Sequence) and len(levels) > 1:
            factor = 2 ** (len(levels) - 1)
            size = self.network_input_size(inputs.shape[2:4])
            if any(s % factor for s in size):
                raise ValueError(
                    f"the network sees in-plane size {size}, which must be divisible by {factor} for its "
                    f"{len(levels)} levels; resize the images (e.g. monai_diffad.transforms.InPlaneResize)."
                )

    @staticmethod
    def validate_generator(generator: torch.Generator | None) -> None:
        """Raises TypeError/ValueError unless ``generator`` is None or a CPU ``torch.Generator``."""
        if generator is None:
            return
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (noise is drawn on CPU), got {generator.device}")

    # ------------------------------------------------------------------ value-range mapping
    def to_model(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] → the network's range."""
        lo, hi = self.model_range
        return u * (hi - lo) + lo

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        """The network's range → [0, 1] (not clamped: callers decide)."""
        lo, hi = self.model_range
        return (y - lo) / (hi - lo)

    # ------------------------------------------------------------------ the network
    def call_network(self, network: torch.nn.Module, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``network(x, timesteps=t)`` with the configured precision and memory format; returns float32.

        ``t`` is one step for the whole batch or one per item.
        """
        steps = torch.as_tensor(t, device=x.device).long().reshape(-1).expand(x.shape[0])
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST_DTYPES[self.precision]
        forward: Callable[..., torch.Tensor] = network
        if self.compile_mode is not None:
            forward = self.compiled_network(network)
            # CUDA-graph replays reuse their output buffers: mark the step and copy the output out of them
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = forward(x, timesteps=steps)
        return out.float().clone() if self.compile_mode is not None else out.float().contiguous()

    def compiled_network(self, network: torch.nn.Module) -> Callable:
        """``torch.compile(network, mode=compile_mode)``, built on first use and cached for the network's lifetime."""
        if network not in self._compiled:
            self._compiled[network] = torch.compile(network, mode=self.compile_mode)
        return self._compiled[network]

    # ------------------------------------------------------------------ detection
    def draw_image_seeds(self, count: int, generator: torch.Generator | None) -> list[int]:
        """The per-image noise seeds :meth:`detect` draws from ``generator``: one per image (or volume), in order.

        Drawing (and discarding) ``count`` seeds skips ``count`` images of a stream, so a shard starting at image
        ``count`` gets the noise it would get in one pass over the whole set (see :mod:`monai_diffad.evaluate`).
        """
        return torch.randint(_MAX_SEED, (int(count),), generator=generator).tolist()

    @torch.no_grad()
    def detect(
        self,
        inputs: torch.Tensor,
        diffusion_model: torch.nn.Module,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        return_intermediates: bool = False,
    ) -> AnomalyOutput:
        """Restore ``inputs`` to a pseudo-healthy image and compute a voxel-wise anomaly map.

        Args:
            inputs: ``(B, C, H, W)`` images or ``(B, C, H, W, D)`` volumes (processed slice-wise along the last
                axis, in batches of ``max_batch_size`` slices) in ``value_range``.
            diffusion_model: the trained 2D network (eval mode is the caller's choice; gradients are off).
            mask: optional foreground mask ``(B, 1, *spatial)``; the map is zeroed outside it and the score
                computed inside it.
            generator: a CPU ``torch.Generator`` for reproducible results: bit-identical on CPU for a given seed
                and ``max_batch_size``; other batch sizes draw the same noise and agree to float rounding (batched
                kernels round differently). The global RNG is used when None.
            progress: tqdm progress bar over the reverse steps; ``None`` uses the constructor's ``progress``.
            return_intermediates: also return per-method intermediate tensors (2D inputs only).

        Returns:
            :class:`AnomalyOutput` with ``anomaly_map`` ``(B, 1, *spatial)`` in [0, 1], ``pseudo_healthy`` in
            ``value_range`` and ``score`` ``(B,)``.

        Raises:
            TypeError: ``inputs``, ``mask`` or ``generator`` of the wrong type, or a scheduler detection cannot use.
            ValueError: settings that do not fit the scheduler (:meth:`validate_settings`), invalid inputs, mask, or
                inputs the network cannot take (see :meth:`validate_inputs`, :meth:`validate_mask`,
                :meth:`validate_network`).
        """
        self.validate_settings()
        u = self.validate_inputs(inputs)
        if mask is not None:
            self.validate_mask(mask, u)
        self.validate_network(diffusion_model, u)
        self.validate_generator(generator)
        progress = self.progress if progress is None else bool(progress)
        seeds = self.draw_image_seeds(u.shape[0], generator)
        if u.ndim == 5:
            if return_intermediates:
                raise ValueError("return_intermediates is only supported for 2D inputs.")
            b, c, h, w, d = u.shape
            slices = u.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
            # each slice gets its own stream derived from its volume's seed, independent of chunking
            slice_seeds = [(s + 1_000_003 * k) % _MAX_SEED for s in seeds for k in range(d)]
            result = self._detect_chunked(slices, diffusion_model, slice_seeds, progress, False)
            amap = result["anomaly_map"].reshape(b, d, 1, h, w).permute(0, 2, 3, 4, 1)
            healthy = result["pseudo_healthy"].reshape(b, d, c, h, w).permute(0, 2, 3, 4, 1)
            intermediates: dict[str, torch.Tensor] = {}
        else:
            result = self._detect_chunked(u, diffusion_model, seeds, progress, return_intermediates)
            amap, healthy, intermediates = result["anomaly_map"], result["pseudo_healthy"], result["intermediates"]
        if mask is not None:
            amap = amap * (mask.to(amap.device) > 0)
        lo, hi = self.value_range
        return AnomalyOutput(
            anomaly_map=amap.clamp(0.0, 1.0),
            pseudo_healthy=healthy * (hi - lo) + lo,
            score=self.image_score(amap, mask),
            intermediates=intermediates,
        )

    def _detect_chunked(
        self,
        u: torch.Tensor,
        diffusion_model: torch.nn.Module,
        seeds: Sequence[int],
        progress: bool,
        return_intermediates: bool,
    ) -> dict[str, Any]:
        """:meth:`detect_batch` over chunks of ``max_batch_size`` images of ``u`` ``(N, C, H, W)``, concatenated."""
        chunks = []
        starts = range(0, u.shape[0], self.max_batch_size)
        for start in tqdm(starts, desc="batches", disable=not progress or len(starts) == 1, leave=False):
            part = u[start : start + self.max_batch_size]
            batch = DetectionBatch(part, tuple(seeds[start : start + part.shape[0]]), progress, return_intermediates)
            chunks.append(self.detect_batch(batch, diffusion_model))
        merged: dict[str, Any] = {
            key: torch.cat([c[key] for c in chunks], dim=0) for key in ("anomaly_map", "pseudo_healthy")
        }
        inter_keys = chunks[0].get("intermediates", {}).keys()
        merged["intermediates"] = {
            k: (chunks[0]["intermediates"][k] if k == "timesteps" else torch.cat([c["intermediates"][k] for c in chunks]))
            for k in inter_keys
        }
        return merged

    def image_score(self, anomaly_map: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the top ``score_top_fraction`` of map values per image (inside ``mask`` when given): ``(B,)``."""
        return top_fraction_mean(anomaly_map, self.score_top_fraction, mask)

    # ------------------------------------------------------------------ MONAI call protocol
    # DiffusionInferer's signature with optional noise/timesteps (its own override of Inferer is ignored in MONAI too)
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Training forward (parent behaviour) when ``noise`` and ``timesteps`` are given; detection otherwise.

        Returns:
            The parent's network prediction, or the ``evaluator_outputs`` of :meth:`detect` stacked on dim 1.
        """
        if noise is not None or timesteps is not None:
            if noise is None or timesteps is None:
                raise ValueError("The training call needs both noise and timesteps.")
            # MONAI annotates the network as DiffusionModelUNet but only calls it; any module works
            return super().__call__(
                inputs, diffusion_model, noise, timesteps, *args, **kwargs  # type: ignore[arg-type]
            )
        out = self.detect(inputs, diffusion_model, **kwargs)
        # __init__ allows only these two tensor fields in evaluator_outputs
        fields = {"anomaly_map": out.anomaly_map, "pseudo_healthy": out.pseudo_healthy}
        stacked = torch.cat([fields[name] for name in self.evaluator_outputs], dim=1)
        if isinstance(inputs, MetaTensor):
            # like MONAI's other inferers, outputs carry the inputs' metadata so Invertd/SaveImaged can use it
            return MetaTensor(stacked, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return stacked
