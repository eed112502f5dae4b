# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Run the DISYRE reference code's scoring on small synthetic images and save what it computed.

The reference is the authors' code, ``snavalm/disyre`` at commit :data:`REFERENCE_COMMIT`, exported to a folder
outside this repository. This script puts that folder on ``sys.path``, imports the reference's own modules
(``diffusion.scheduler``, ``diffusion.sliding_window_inference``, ``evaluate``) and calls them; none of the
reference's code is copied here. ``tests/test_parity_disyre.py`` then runs our ``DISYREInferer`` on the saved inputs
and weights and compares, without network access and without the reference code.

What is run:

- the reference's full-evaluation scoring, ``DISYREPipeline.__call__`` with the ``pipeline_kwargs`` of
  ``notebooks/evaluation.ipynb`` (read from the notebook, not retyped: ``method="mean-single-step"``, four trailing
  steps 99, 74, 49, 24, ``weight_foreground=True``), driven through ``evaluate.evaluate_anomaly_loader`` exactly as the
  notebook's 3D evaluation does (the slices of one volume in one call);
- on whole images of the network's size (no sliding window), with every network call and every
  ``DISYREScheduler.step`` recorded;
- on larger and smaller images, which the pipeline sends through its own ``sliding_window_inference``: a size where
  the windows tile the image, a size the reference first pads to whole strides, and one smaller than the window;
- the reference's ``"multi-step-restoration"`` (its training-time restoration samples) on the whole images;
- the reference scheduler's tables (betas, ᾱ, √ᾱ, its inference timesteps and the α its update reads) and its
  training map ``map_alpha_to_timestep`` on a grid of α.

The network: the reference trains a diffusers ``UNet2DModel``; the harness compares the inference procedure, so both
sides run one tiny network with seeded non-zero weights, our ``disyre_unet`` at tiny size (an untrained MONAI UNet
outputs exactly 0). :class:`ReferenceCallingConvention` adapts it to what the reference pipeline expects of its
``unet``: ``unet(sample, t).sample``, a list ``sample_size`` and diffusers' ``device``/``dtype`` properties. Our network
is trained in the paper's convention (t large = strong corruption) while the reference's is told
α = √ᾱ_{t_ref} at its timestep t_ref (its training map t_ref = argmin|√ᾱ_t − α|), so the adapter calls our network at
the paper timestep our training maps that α to (``timestep_for_alpha``): what a network trained by each side's recipe
on the same corruption would be told. The timesteps it received and used are saved.

Nothing is stubbed: the imported modules need only torch, numpy, tqdm, diffusers (0.27.2, the reference's pin) and
torchmetrics; the training script (accelerate, wandb, batchgenerators) and the notebook (matplotlib) are not
imported, their settings are read with ``ast``/``json``. Install the two packages outside the project's environment::

    python -m pip install --no-deps --target <deps> diffusers==0.27.2 huggingface_hub==0.22.2 \\
        torchmetrics==1.3.2 lightning-utilities==0.14.3 regex
    git --git-dir <mirror> archive e149f29f4dc55b96c0a14213a7f14f0d9370691f | tar -x -C <checkout>
    OMP_NUM_THREADS=1 PYTHONPATH=<deps> python scripts/parity/disyre_reference.py \\
        --reference <checkout> --out tests/data/parity/disyre
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

#: The reference commit the saved data come from.
REFERENCE_COMMIT = "e149f29f4dc55b96c0a14213a7f14f0d9370691f"
#: Git blob ids of the reference files this harness reads at :data:`REFERENCE_COMMIT` (``git ls-tree``): a checkout
#: whose files differ is refused unless ``--allow-other-commit``.
REFERENCE_BLOBS = {
    "diffusion/scheduler.py": "47861f8bac6d1d96b2c398178948dd4d58d4317a",
    "diffusion/sliding_window_inference.py": "097bb05e56d3d8921c6468a6eec4a6d112f3e512",
    "evaluate.py": "e94e0503aafe5c3b14f4940227c6112296bb4bd5",
    "notebooks/evaluation.ipynb": "9c128141646d01f1e7159545c2e2998266f9d213",
    "trainer_disyre.py": "3e5ee5e47da5a0b1edb3e8da1d9ecd1eae1e1f72",
}
#: The tiny network both sides run (``monai_diffad.inferers.disyre.disyre_unet("demo", **TINY_DISYRE_UNET)``).
TINY_DISYRE_UNET: dict[str, Any] = {
    "channels": [8, 8],
    "attention_levels": [False, False],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 4,
}
#: The output convolution's weights are scaled and its bias set so that the random network predicts values around
#: the image range, some outside [0, 1] (so clamping matters) and residuals mostly below 1.
OUTPUT_SCALE, OUTPUT_BIAS = 0.2, 0.45
SEED = 0


# ---------------------------------------------------------------------------------------------------- the reference
def git_blob_id(path: Path) -> str:
    """The id git gives the file's content (``git hash-object``), to compare with ``git ls-tree`` of the commit."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_checkout(reference: Path, allow_other: bool) -> dict[str, str]:
    """The blob ids of the files read, checked against :data:`REFERENCE_BLOBS`.

    Raises:
        SystemExit: a file is missing, or differs and ``allow_other`` is false.
    """
    found = {}
    for name, expected in REFERENCE_BLOBS.items():
        path = reference / name
        if not path.is_file():
            raise SystemExit(f"{path} not found: --reference must be an export of snavalm/disyre.")
        found[name] = git_blob_id(path)
        if found[name] != expected and not allow_other:
            raise SystemExit(f"{name} is not the file of commit {REFERENCE_COMMIT} (blob {found[name]}, expected "
                             f"{expected}); pass --allow-other-commit to run anyway.")
    return found


def import_reference(reference: Path) -> dict[str, Any]:
    """Import the reference's modules from ``reference`` (put first on ``sys.path``).

    Returns:
        ``scheduler`` (``diffusion.scheduler``), ``sliding_window`` (``diffusion.sliding_window_inference``) and
        ``evaluate`` (``evaluate``), the reference's own module objects.

    Raises:
        SystemExit: diffusers or torchmetrics cannot be imported (see the module docstring).
    """
    sys.path.insert(0, str(reference))
    try:
        import diffusers  # noqa: F401  (the reference's pipeline and scheduler derive from its classes)
        import torchmetrics  # noqa: F401  (the scheduler builds an SSIM metric, evaluate its metrics)
    except ImportError as error:
        raise SystemExit(f"{error}: install diffusers==0.27.2 and torchmetrics==1.3.2 (see this script's docstring).")
    import importlib

    return {
        "scheduler": importlib.import_module("diffusion.scheduler"),
        "sliding_window": importlib.import_module("diffusion.sliding_window_inference"),
        "evaluate": importlib.import_module("evaluate"),
    }


def literal_assignment(source: str, name: str) -> Any:
    """The literal value assigned to ``name`` at the top level of Python ``source`` (read, never executed)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no assignment to {name!r} found")


def notebook_pipeline_kwargs(reference: Path) -> dict[str, Any]:
    """``pipeline_kwargs`` of the reference's full evaluation (``notebooks/evaluation.ipynb``)."""
    notebook = json.loads((reference / "notebooks" / "evaluation.ipynb").read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "pipeline_kwargs =" in source:
            return literal_assignment(source, "pipeline_kwargs")
    raise SystemExit("pipeline_kwargs not found in notebooks/evaluation.ipynb")


# ---------------------------------------------------------------------------------------------------- the network
def build_network(seed: int = SEED) -> torch.nn.Module:
    """Our tiny DISYRE network with seeded non-zero weights, in eval mode (see :data:`OUTPUT_SCALE`)."""
    from monai_diffad.inferers.disyre import disyre_unet

    torch.manual_seed(seed)
    net = disyre_unet("demo", **TINY_DISYRE_UNET)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # MONAI zero-initialises the output convolution, the residual blocks' second convolutions and norm biases:
        # fill them as tests/conftest.py's nonzero_init_ does (weights std 1/sqrt(fan_in), vectors std 0.1)
        for p in net.parameters():
            if p.numel() and not bool(p.any()):
                std = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        net.out[2].conv.weight.mul_(OUTPUT_SCALE)
        net.out[2].conv.bias.fill_(OUTPUT_BIAS)
    return net.eval()


class ReferenceCallingConvention(torch.nn.Module):
    """Our network as the reference pipeline's ``unet``: ``unet(sample, t).sample``, ``sample_size``, ``device``.

    The reference's timestep t_ref means the interpolation factor α = √ᾱ_{t_ref} (its training map); our network is
    called at ``timestep_map[t_ref]``, the paper timestep our training ties to that α. Every call is recorded (clones:
    the reference's scheduler clamps the network output in place at its last step).

    Args:
        net: a network ``net(x, timesteps=t)``.
        sample_size: the window the pipeline compares image sizes with (a list: the reference concatenates it to
            lists).
        timestep_map: paper timestep for each reference timestep 0 … T − 1.
        record_outputs: keep the network outputs (whole-image cases) or only the timesteps and shapes (windows).
    """

    def __init__(
        self, net: torch.nn.Module, sample_size: list[int], timestep_map: torch.Tensor, record_outputs: bool
    ) -> None:
        super().__init__()
        self.net = net
        self.sample_size = list(sample_size)
        self.timestep_map = timestep_map
        self.record_outputs = record_outputs
        self.calls: list[dict[str, Any]] = []

    @property
    def device(self) -> torch.device:
        """diffusers' ``ModelMixin.device``, which ``DiffusionPipeline.device`` reads."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """diffusers' ``ModelMixin.dtype``."""
        return next(self.parameters()).dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> Any:
        from diffusers.models.unets.unet_2d import UNet2DOutput

        t_ref = int(timestep)
        t_paper = int(self.timestep_map[t_ref])
        steps = torch.full((sample.shape[0],), t_paper, dtype=torch.long, device=sample.device)
        out = self.net(sample, timesteps=steps)
        call: dict[str, Any] = {"t_ref": t_ref, "t_paper": t_paper, "batch": sample.shape[0]}
        if self.record_outputs:
            call["output"] = out.detach().clone()
        self.calls.append(call)
        return UNet2DOutput(sample=out)


def recording_step(scheduler: Any, log: list[dict[str, torch.Tensor]]) -> Callable[..., Any]:
    """``scheduler.step`` unchanged, its outputs logged (as clones) in ``log``."""
    step = scheduler.step

    def wrapped(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = step(model_output, timestep, sample, *args, **kwargs)
        log.append({
            "timestep": torch.as_tensor(int(timestep)),
            "anomaly_score": out.anomaly_score.detach().clone(),
            "prev_sample": out.prev_sample.detach().clone(),
        })
        return out

    return wrapped


# ---------------------------------------------------------------------------------------------------- the images
def phantoms(generator: torch.Generator, batch: int, height: int, width: int) -> torch.Tensor:
    """``(batch, 1, H, W)`` brain-like slices in [0, 1]: a textured ellipse on a zero background, every other one
    with a bright disc (the lesion); the background makes the foreground weighting and mask matter."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    images = []
    for i in range(batch):
        a, b = (0.7 + 0.2 * torch.rand(2, generator=generator)).tolist()
        brain = ((xx / a) ** 2 + (yy / b) ** 2 < 1).float()
        texture = torch.nn.functional.avg_pool2d(torch.rand(1, 1, height, width, generator=generator), 5, 1, 2)[0, 0]
        image = brain * (0.35 + 0.5 * texture)
        if i % 2 == 0:
            cy, cx = ((torch.rand(2, generator=generator) - 0.5) * 0.6).tolist()
            lesion = (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.2**2).float() * brain
            image = image * (1 - lesion) + 0.95 * lesion
        images.append(image)
    return torch.stack(images)[:, None].clamp(0.0, 1.0)


def lesion_masks(images: torch.Tensor) -> torch.Tensor:
    """The phantoms' bright discs (> 0.9), the labels the evaluation function scores against."""
    return (images > 0.9).float()


class VolumeLoader:
    """What ``evaluate.evaluate_anomaly_loader`` reads of the reference's 3D evaluation loader: ``name``,
    ``generator.datalist`` and batches ``{"data": [(C, H, W, D)], "seg": [(C, H, W, D)]}`` (one volume whose slices
    are the given images)."""

    def __init__(self, name: str, images: torch.Tensor) -> None:
        self.name = name
        self.generator = type("Generator", (), {"datalist": [name]})()
        self.volume = images.movedim(0, -1)  # (D, C, H, W) -> (C, H, W, D)
        self.seg = lesion_masks(images).movedim(0, -1)

    def __iter__(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        yield {"data": [self.volume.clone()], "seg": [self.seg.clone()]}


class RecordingPipeline:
    """The reference pipeline as ``evaluate`` calls it, keeping the anomaly scores it returned."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.scores: list[torch.Tensor] = []

    def __call__(self, image: torch.Tensor, **kwargs: Any) -> Any:
        out = self.pipeline(image, **kwargs)
        self.scores.append(out.anomaly_score.detach().clone())
        return out


# ---------------------------------------------------------------------------------------------------- the runs
def scheduler_tables(scheduler: Any, num_inference_steps: int) -> dict[str, Any]:
    """The reference scheduler's tables and its inference plan for ``num_inference_steps`` steps."""
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    previous = [int(scheduler.previous_timestep(t)) for t in timesteps]
    flipped = scheduler.sqrt_alphas_cumprod.flip(0)
    alpha_grid = torch.linspace(0.0, 1.0, 2001)
    return {
        "betas": scheduler.betas.clone(),
        "alphas_cumprod": scheduler.alphas_cumprod.clone(),
        "sqrt_alphas_cumprod": scheduler.sqrt_alphas_cumprod.clone(),
        "num_inference_steps": num_inference_steps,
        "timesteps": torch.tensor(timesteps),
        "previous_timesteps": torch.tensor(previous),
        # what step() reads as the current and next level: sqrt_alphas_cumprod.flip(0)[t] (0 after the last step)
        "step_alpha": torch.stack([flipped[t] for t in timesteps]),
        "step_alpha_prev": torch.stack([flipped[p] if p >= 0 else torch.tensor(0.0) for p in previous]),
        "alpha_grid": alpha_grid,
        "map_alpha_to_timestep": scheduler.map_alpha_to_timestep(alpha_grid),
    }


def paper_timestep_map(reference_scheduler: Any) -> torch.Tensor:
    """For each reference timestep t_ref, the paper timestep our training ties to α = √ᾱ_{t_ref}."""
    from monai_diffad.disyre_schedule import corruption_alphas, disyre_scheduler, timestep_for_alpha

    # our table from our scheduler: the test checks separately that its ᾱ equals the reference's
    return timestep_for_alpha(reference_scheduler.sqrt_alphas_cumprod, corruption_alphas(disyre_scheduler()))


def run_case(
    modules: dict[str, Any],
    net: torch.nn.Module,
    images: torch.Tensor,
    sample_size: list[int],
    pipeline_kwargs: dict[str, Any],
    record_steps: bool,
    through_evaluate: bool,
) -> dict[str, Any]:
    """Run the reference pipeline on ``images`` and return what it computed.

    Args:
        modules: :func:`import_reference`'s modules.
        net: the network.
        images: ``(B, 1, H, W)`` in [0, 1].
        sample_size: the network's (window) size; other image sizes go through the reference's sliding window.
        pipeline_kwargs: the pipeline's keyword arguments.
        record_steps: keep each network call's output and each scheduler step's outputs (whole images only: the
            windows' would be large).
        through_evaluate: call the pipeline through ``evaluate.evaluate_anomaly_loader`` (and check it equals a
            direct call).
    """
    scheduler_module = modules["scheduler"]
    scheduler = scheduler_module.DISYREScheduler()
    unet = ReferenceCallingConvention(net, sample_size, paper_timestep_map(scheduler), record_steps)
    pipeline = scheduler_module.DISYREPipeline(unet=unet, scheduler=scheduler)
    steps: list[dict[str, torch.Tensor]] = []
    scheduler.step = recording_step(scheduler, steps)

    out = pipeline(images.clone(), **pipeline_kwargs)
    result: dict[str, Any] = {
        "inputs": images.clone(),
        "sample_size": torch.tensor(sample_size),
        "pipeline_kwargs": dict(pipeline_kwargs),
        "anomaly_score": out.anomaly_score.detach().clone(),
        "images": out.images.detach().clone(),
        "network_t_ref": torch.tensor([c["t_ref"] for c in unet.calls]),
        "network_t_paper": torch.tensor([c["t_paper"] for c in unet.calls]),
        "network_batch": torch.tensor([c["batch"] for c in unet.calls]),
    }
    if record_steps:
        # (K, B, C, H, W) per network call / scheduler step; the call inputs are the inputs (mean-single-step) or
        # the previous step's prev_sample (multi-step), so they are not saved again
        result["step_x0_raw"] = torch.stack([c["output"] for c in unet.calls])
        result["step_anomaly_score"] = torch.stack([s["anomaly_score"] for s in steps])
        result["step_timestep"] = torch.stack([s["timestep"] for s in steps])
        if pipeline_kwargs["method"] == "multi-step-restoration":
            # mean-single-step discards the scheduler's updated state: only the multi-step one is worth keeping
            result["step_prev_sample"] = torch.stack([s["prev_sample"] for s in steps])
    if through_evaluate:
        recorder = RecordingPipeline(pipeline)
        metrics = modules["evaluate"].evaluate_anomaly_loader(
            VolumeLoader("parity", images), recorder, pipeline_kwargs=pipeline_kwargs
        )
        (scored,) = recorder.scores
        if not torch.equal(scored, result["anomaly_score"]):
            raise SystemExit("evaluate_anomaly_loader scored another map than the direct pipeline call")
        result["evaluate_metrics"] = {k: float(v) for k, v in metrics.items()}
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run every case and save the data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="an export of snavalm/disyre at the commit")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .pt files")
    parser.add_argument("--allow-other-commit", action="store_true", help="run on files of another commit")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    blobs = check_checkout(args.reference.resolve(), args.allow_other_commit)
    modules = import_reference(args.reference.resolve())
    evaluation_kwargs = notebook_pipeline_kwargs(args.reference)
    training_kwargs = literal_assignment((args.reference / "trainer_disyre.py").read_text(), "pipeline_eval_kwargs")
    net = build_network()
    generator = torch.Generator().manual_seed(SEED)
    whole = phantoms(generator, 3, 32, 32)
    multi_step_kwargs = {**evaluation_kwargs, "method": "multi-step-restoration"}

    cases = {
        # whole images of the network's size: no sliding window, every step recorded
        "whole": run_case(modules, net, whole, [32, 32], evaluation_kwargs, True, True),
        # 28 = 16 + 3 strides of 4: the reference's windows and MONAI's coincide
        "window": run_case(modules, net, phantoms(generator, 2, 28, 28), [16, 16], evaluation_kwargs, False, True),
        # 26 x 22: the reference pads to 28 x 24 (whole strides) before placing windows
        "window_padded": run_case(
            modules, net, phantoms(generator, 2, 26, 22), [16, 16], evaluation_kwargs, False, True
        ),
        # 12 x 20: smaller than the window in one dimension, padded to it
        "window_small": run_case(
            modules, net, phantoms(generator, 2, 12, 20), [16, 16], evaluation_kwargs, False, True
        ),
        # the reference's multi-step restoration (its training-time samples), on the whole images
        "multi_step": run_case(modules, net, whole, [32, 32], multi_step_kwargs, True, False),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    reference_scheduler = modules["scheduler"].DISYREScheduler()
    torch.save(
        {
            **scheduler_tables(reference_scheduler, int(evaluation_kwargs["num_inference_steps"])),
            "network_timestep_map": paper_timestep_map(reference_scheduler),
        },
        args.out / "scheduler.pt",
    )
    torch.save(
        {
            "builder": "monai_diffad.inferers.disyre.disyre_unet",
            "size": "demo",
            "overrides": TINY_DISYRE_UNET,
            "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        },
        args.out / "network.pt",
    )
    for name, case in cases.items():
        torch.save(case, args.out / f"{name}.pt")
    meta = {
        "reference_repository": "snavalm/disyre",
        "reference_commit": REFERENCE_COMMIT,
        "reference_blobs": blobs,
        "evaluation_pipeline_kwargs": evaluation_kwargs,
        "training_validation_pipeline_kwargs": training_kwargs,
        "diffusers": __import__("diffusers").__version__,
        "torchmetrics": __import__("torchmetrics").__version__,
        "torch": torch.__version__,
        "cases": {
            name: {
                "inputs": list(case["inputs"].shape),
                "sample_size": case["sample_size"].tolist(),
                "network_calls": len(case["network_t_ref"]),
                "windows_per_call": case["network_batch"].tolist(),
                "anomaly_score_max": float(case["anomaly_score"].max()),
                "evaluate_metrics": case.get("evaluate_metrics"),
            }
            for name, case in cases.items()
        },
    }
    (args.out / "reference_run.json").write_text(json.dumps(meta, indent=2) + "\n")
    for name, info in meta["cases"].items():
        print(name, info["inputs"], "calls", info["network_calls"], "windows/call", info["windows_per_call"][:1],
              f"max score {info['anomaly_score_max']:.4f}")


if __name__ == "__main__":
    main()
