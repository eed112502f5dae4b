# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Run the AutoDDPM reference code's inference on small synthetic images and save what it computed.

The reference is the authors' code, ``ci-ber/autoDDPM`` at commit :data:`REFERENCE_COMMIT`, exported to a folder
outside this repository. This script puts that folder on ``sys.path``, imports the reference's own modules
(``model_zoo.ddpm``, which brings ``net_utils.diffusion_unet`` and ``net_utils.schedulers.ddpm``) and calls them;
none of the reference's code is copied here. ``tests/test_parity_autoddpm.py`` then runs our ``AutoDDPMInferer`` on
the saved inputs, weights and noise and compares, without network access and without the reference code.

What is run: ``DDPM.get_anomaly(x, noise_level=model.noise_level_recon, verbose=False, method=model.method)``, the
call of ``projects/autoddpm/DownstreamEvaluator.py`` (``pathology_localization``), on a ``DDPM`` built with the
settings of ``projects/autoddpm/autoddpm.yaml`` except the levels (see :data:`SETTINGS`) and the network (a tiny one
of the reference's own ``DiffusionModelUNet`` class with seeded non-zero weights). Every ``torch.randn`` /
``torch.randn_like`` the reference draws is recorded in order, so our inferer can be fed the same noise; a replay of
the recorded draws from the same seed must leave the global RNG in the state the run left it in, which proves that
nothing else drew from it.

Cases (the noise is the same for all: the draws depend on shapes only, and every case starts from the same seed):

- ``lpips_fixed``: the yaml's ``masking_threshold: 0.13``. At this commit that setting crashes the reference
  (``model_zoo/ddpm.py`` line 221 keeps the float and line 224 indexes it per image: ``TypeError: 'float' object is
  not subscriptable``; the harness records the error). To run the evidently intended rule, the threshold is given as
  a float that returns itself when indexed (:class:`PerImageFloat`), which changes nothing else.
- ``lpips_percentile``: ``masking_threshold=-1``, the per-image rule of lines 221-223 (95th percentile of the
  continuous map, clipped to [0, 1]), the only threshold setting that runs unmodified at this commit.
- ``ssim_percentile``: as ``lpips_percentile`` with the reference's ``AnomalyMap.lpips_loss`` swapped for our
  offline perceptual term (``monai_diffad.maps.structural_dissimilarity_map``, what
  ``AutoDDPMInferer(perceptual="ssim")`` uses).

LPIPS: the reference builds ``lpips.LPIPS(pretrained=True, net='squeeze', ...)``, whose SqueezeNet trunk torchvision
would download. Offline, the trunk gets seeded random weights (:func:`seeded_squeezenet_state`; the linear
calibration layers are the ones the ``lpips`` wheel ships), so the reference's own LPIPS call runs, with its
``2x - 1`` mapping followed by ``normalize=True``. The test rebuilds the same trunk file from the same recipe and
passes it to our inferer as ``lpips_backbone_path``; the checksum saved here guards the recipe.

Stubs: ``matplotlib`` (with ``pyplot`` and ``animation``) gets empty modules, only when it is not installed
(``model_zoo.ddpm`` imports it through ``net_utils.simplex_noise`` and never calls it on this path); with matplotlib
installed nothing is stubbed. ``projects/autoddpm/DownstreamEvaluator.py`` (wandb, plotly, seaborn) is not imported:
its call is repeated here. The computing dependencies are real: OpenCV (the mask dilation) and numba (imported by
``net_utils.simplex_noise``; its Simplex code is not on the Gaussian path). Install them outside the project's
environment::

    python -m pip install --no-deps --target <deps> "opencv-python-headless<4.12" "numba<0.62" "llvmlite<0.45"
    git --git-dir <mirror> archive f74b894e43ee2c730707e2bc481acbb33e5426b1 | tar -x -C <checkout>
    OMP_NUM_THREADS=1 PYTHONPATH=<deps> python scripts/parity/autoddpm_reference.py \\
        --reference <checkout> --out tests/data/parity/autoddpm

The reference moves everything to ``cuda:0`` when CUDA is available and mixes devices; this harness hides CUDA, so
the data are CPU float32 (and the reference's ``torch.cuda.amp.autocast`` around the re-sampling loop is inactive).
"""

from __future__ import annotations

import os

# set before torch is imported: the reference picks cuda:0 whenever it is available (ddpm.py lines 40, 165)
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The reference repository and the commit the saved data come from.
REFERENCE_REPOSITORY = "ci-ber/autoDDPM"
REFERENCE_COMMIT = "f74b894e43ee2c730707e2bc481acbb33e5426b1"
#: Git blob ids of the reference files this harness runs or reads at :data:`REFERENCE_COMMIT` (``git ls-tree``): a
#: checkout whose files differ is refused unless ``--allow-other-commit``.
REFERENCE_BLOBS = {
    "model_zoo/ddpm.py": "72e95298c26d53bc1d5257abaccdee3a4bfd9637",
    "net_utils/diffusion_unet.py": "3b42683493249a4d9a72838eab02e33cf1fd885a",
    "net_utils/scheduler.py": "0124d2bc9388f4cd1e159d3b907631b8e48dcd9a",
    "net_utils/schedulers/ddpm.py": "ff6df4dc61cbc3c8a1dc3329ec29b1250a73d5de",
    "net_utils/simplex_noise.py": "1542a8ccdfb0170bd08b67cd577778233f4ec8c0",
    "projects/autoddpm/DownstreamEvaluator.py": "d8b63e87329d3379ff77aa2c578e5d01e1b204ab",
    "projects/autoddpm/autoddpm.yaml": "72da65fa00378a7ab68b9a2042fa25565a7cb5ab",
}
#: Modules that may be stubbed when missing: plotting only, the one non-computing import of the modules run
#: (``net_utils/simplex_noise.py`` lines 25, 28). ``projects/autoddpm/DownstreamEvaluator.py`` (wandb, plotly,
#: seaborn) is read for provenance, never imported: its call is made here as it makes it.
STUBBABLE = ("matplotlib", "matplotlib.pyplot", "matplotlib.animation")

#: The yaml's settings with smaller levels, so the saved noise stays small: the yaml has noise_level_recon 200,
#: noise_level_inpaint 50, resample_steps 5. Every code path still runs: reconstruction, the mask, the re-sampling with
#: the known part noised, the jump back (passes 1 .. K-1) and the t = 0 stitch.
SETTINGS: dict[str, Any] = {
    "noise_level_recon": 10,
    "noise_level_inpaint": 3,
    "resample_steps": 2,
    "masking_threshold": 0.13,
    "train_scheduler": "ddpm",
    "inference_scheduler": "ddpm",
    "inference_steps": 1000,
    "method": "autoDDPM",
    "noise_type": "gaussian",
    "prediction_type": "epsilon",
}
#: The tiny network, an instance of the reference's own ``net_utils.diffusion_unet.DiffusionModelUNet`` (the yaml's
#: is (128, 256, 256) with attention at the two lower levels); one attention level so that block is compared too.
#: Our side loads the state dict into ``monai_diffad.networks.diffusion_unet(**TINY_UNET)``.
TINY_UNET: dict[str, Any] = {
    "channels": [8, 8],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 4,
}
#: The output convolution is scaled so that the predicted noise is large enough, at these low levels, to change the
#: image visibly (mean reconstruction error 0.13-0.15): masks then cover part of each image, not none or all.
OUTPUT_GAIN = 3.0
#: The cases: (perceptual term, threshold rule). "fixed" is the yaml's 0.13 as a :class:`PerImageFloat`, "percentile"
#: the reference's rule for ``masking_threshold=-1``. The SSIM case uses the percentile rule: with SSIM the continuous
#: map of these random reconstructions exceeds 0.13 almost everywhere, and a mask of the whole image compares less.
CASES: dict[str, tuple[str, str]] = {
    "lpips_fixed": ("lpips", "fixed"),
    "lpips_percentile": ("lpips", "percentile"),
    "ssim_percentile": ("ssim", "percentile"),
}
#: Seeds: network weights, the LPIPS trunk, the inputs, and the global RNG the reference draws its noise from.
NETWORK_SEED, TRUNK_SEED, NOISE_SEED = 0, 1, 2
IMAGE_SIZE = 32


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
            raise SystemExit(f"{path} not found: --reference must be an export of {REFERENCE_REPOSITORY}.")
        found[name] = git_blob_id(path)
        if found[name] != expected and not allow_other:
            raise SystemExit(
                f"{name} is not the file of commit {REFERENCE_COMMIT} (blob {found[name]}, expected {expected}); "
                "pass --allow-other-commit to run anyway."
            )
    return found


def stub_missing_modules() -> list[str]:
    """Register empty modules for the :data:`STUBBABLE` ones that are not installed; returns their names."""
    stubbed = []
    for name in STUBBABLE:
        parent = name.rpartition(".")[0]
        if name in sys.modules or (not parent and importlib.util.find_spec(name) is not None):
            continue
        if parent and parent not in stubbed:
            continue  # the real parent package is installed and brings its own submodule
        module = types.ModuleType(name)
        sys.modules[name] = module
        if parent:
            setattr(sys.modules[parent], name.rpartition(".")[2], module)
        stubbed.append(name)
    return stubbed


def import_reference(reference: Path) -> types.ModuleType:
    """Import ``model_zoo.ddpm`` from ``reference`` (put first on ``sys.path``).

    Raises:
        SystemExit: OpenCV or numba cannot be imported (see the module docstring).
    """
    sys.path.insert(0, str(reference))
    try:
        import cv2  # noqa: F401  (the reference dilates its mask with cv2.dilate)
        import numba  # noqa: F401  (imported by net_utils.simplex_noise)
    except ImportError as error:
        raise SystemExit(f"{error}: install opencv-python-headless and numba (see this script's docstring).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy.ndimage.filters and torch.cuda.amp deprecations
        return importlib.import_module("model_zoo.ddpm")


class PerImageFloat(float):
    """A float that returns itself when indexed.

    ``get_autoDDPM_anomaly`` keeps a fixed threshold as a float (line 221) and then reads ``masking_threshold[i]``
    per image (line 224), which raises ``TypeError`` for the yaml's 0.13; with this type the line compares every
    image with the fixed value, as evidently intended.
    """

    def __getitem__(self, index: int) -> float:
        return float(self)


# ---------------------------------------------------------------------------------------------------- the inputs
def seeded_squeezenet_state(seed: int = TRUNK_SEED) -> dict[str, torch.Tensor]:
    """A torchvision ``squeezenet1_1`` ``features`` state dict with seeded random weights (no download).

    Recipe (``tests/test_parity_autoddpm.py`` repeats it): keys in sorted order, each drawn with ``torch.randn`` from
    one CPU generator seeded ``seed``, weights scaled by sqrt(2 / fan_in) (He, so the ReLU trunk stays active), biases
    by 0.1.
    """
    import torchvision

    shapes = {k: v.shape for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(k for k in shapes if k.startswith("features.")):
        shape = shapes[key]
        scale = math.sqrt(2.0 / math.prod(shape[1:])) if len(shape) > 1 else 0.1
        state[key] = torch.randn(shape, generator=generator) * scale
    return state


@contextmanager
def offline_lpips_trunk(trunk: dict[str, torch.Tensor]) -> Iterator[None]:
    """While active, ``lpips`` builds its SqueezeNet from ``trunk`` instead of downloading torchvision's weights."""
    import lpips.pretrained_networks as pn

    original = pn.tv.squeezenet1_1

    def squeezenet1_1(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = original(weights=None)
        model.load_state_dict(trunk, strict=False)  # the classifier is not used by lpips
        return model

    pn.tv.squeezenet1_1 = squeezenet1_1
    try:
        yield
    finally:
        pn.tv.squeezenet1_1 = original


def build_network(unet_class: type, seed: int = NETWORK_SEED) -> torch.nn.Module:
    """The reference's ``DiffusionModelUNet`` at :data:`TINY_UNET` size with seeded non-zero weights, in eval mode.

    Default initialisation under ``torch.manual_seed(seed)``, then every all-zero parameter filled as
    ``tests/conftest.py``'s ``nonzero_init_`` does (an untrained UNet's zero output layer would predict exactly 0),
    then the output convolution scaled by :data:`OUTPUT_GAIN`.
    """
    torch.manual_seed(seed)
    net = unet_class(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        num_channels=tuple(TINY_UNET["channels"]),
        attention_levels=tuple(TINY_UNET["attention_levels"]),
        num_res_blocks=TINY_UNET["num_res_blocks"],
        num_head_channels=TINY_UNET["num_head_channels"],
        norm_num_groups=TINY_UNET["norm_num_groups"],
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.numel() and not bool(p.any()):
                std = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        out_conv = net.out[-1].conv
        out_conv.weight.mul_(OUTPUT_GAIN)
        out_conv.bias.mul_(OUTPUT_GAIN)
    return net.eval()


def build_inputs() -> torch.Tensor:
    """Three 32 × 32 phantoms in [0, 1]: a bright square lesion, a healthy one, and a lesion moved off-centre."""
    from monai_diffad.testing import phantom

    lesion, _, _ = phantom(IMAGE_SIZE, 1, blob=True, seed=0)
    healthy, _, _ = phantom(IMAGE_SIZE, 1, blob=False, seed=1)
    moved, _, _ = phantom(IMAGE_SIZE, 1, blob=True, seed=2)
    return torch.cat([lesion, healthy, torch.roll(moved, shifts=(5, -6), dims=(2, 3))]).float()


# ---------------------------------------------------------------------------------------------------- running
@contextmanager
def recorded_noise() -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Record every ``torch.randn`` / ``torch.randn_like`` result (name, clone), in call order."""
    draws: list[tuple[str, torch.Tensor]] = []
    originals = {name: getattr(torch, name) for name in ("randn", "randn_like")}

    def recording(name: str, draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = draw(*args, **kwargs)
            draws.append((name, out.detach().clone()))
            return out

        return wrapper

    for name, draw in originals.items():
        setattr(torch, name, recording(name, draw))
    try:
        yield draws
    finally:
        for name, draw in originals.items():
            setattr(torch, name, draw)


def check_no_other_draws(draws: list[tuple[str, torch.Tensor]], state_after: torch.Tensor) -> None:
    """Replaying the recorded draws from :data:`NOISE_SEED` must reach the RNG state the reference run left.

    Raises:
        RuntimeError: something else drew from the global RNG, so the recording would be incomplete.
    """
    torch.manual_seed(NOISE_SEED)
    for _, tensor in draws:
        torch.randn(tensor.shape, dtype=tensor.dtype)
    if not torch.equal(torch.get_rng_state(), state_after):
        raise RuntimeError("the reference drew random numbers other than the recorded randn/randn_like calls")


def run_case(model: Any, inputs: torch.Tensor, threshold: float) -> tuple[dict[str, torch.Tensor], list]:
    """One ``get_anomaly`` call as the DownstreamEvaluator makes it, the noise recorded.

    Returns:
        The reference's outputs (float32 tensors) and the recorded draws.
    """
    model.masking_threshold = threshold
    torch.manual_seed(NOISE_SEED)
    with warnings.catch_warnings(), recorded_noise() as draws:
        warnings.simplefilter("ignore")  # torch.cuda.amp.autocast on a machine without CUDA
        maps, scores, outputs = model.get_anomaly(
            inputs, noise_level=model.noise_level_recon, verbose=False, method=model.method
        )
    check_no_other_draws(draws, torch.get_rng_state())
    result = {
        "reconstruction": outputs["x_rec_orig"],  # x̂, clamped to [0, 1]
        "mask": outputs["x_res_orig"],  # c = LPIPS · clip(r / p95, 0, 1)
        "binary_mask": outputs["mask"],  # thresholded and dilated
        "stitched": outputs["stitch"],
        "inpainted": outputs["x_rec"],  # the re-sampled image, not clamped
        "anomaly_map": torch.from_numpy(np.asarray(maps)),
        "score": torch.from_numpy(np.asarray(scores)).flatten(),
    }
    return {k: v.detach().float().cpu().contiguous() for k, v in result.items()}, draws


def fixed_threshold_error(model: Any, inputs: torch.Tensor) -> str:
    """What the reference does with the yaml's plain ``masking_threshold: 0.13``: the error message, or ``""``."""
    model.masking_threshold = float(SETTINGS["masking_threshold"])
    torch.manual_seed(NOISE_SEED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.get_anomaly(inputs, noise_level=model.noise_level_recon, verbose=False, method=model.method)
    except TypeError as error:
        return f"TypeError: {error}"
    return ""


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run every case and save the data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help=f"an export of {REFERENCE_REPOSITORY}")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .pt and .json files")
    parser.add_argument("--allow-other-commit", action="store_true", help="run on files of another commit")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    reference = args.reference.resolve()
    blobs = check_checkout(reference, args.allow_other_commit)
    stubbed = stub_missing_modules()
    ddpm_module = import_reference(reference)
    from monai_diffad.maps import structural_dissimilarity_map

    trunk = seeded_squeezenet_state()
    with offline_lpips_trunk(trunk), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` that lpips passes
        # the network arguments only size the UNet the constructor builds; it is replaced by the tiny one below
        model = ddpm_module.DDPM(
            num_channels=(32, 32), attention_levels=(False, False), num_head_channels=32, **SETTINGS
        )
    model.unet = build_network(ddpm_module.DiffusionModelUNet)
    model.eval()
    inputs = build_inputs()

    crash = fixed_threshold_error(model, inputs)
    fixed = PerImageFloat(SETTINGS["masking_threshold"])
    cases: dict[str, dict[str, torch.Tensor]] = {}
    noise: list[tuple[str, torch.Tensor]] = []
    thresholds = {name: fixed if rule == "fixed" else -1.0 for name, (_, rule) in CASES.items()}
    for name, (perceptual, _) in CASES.items():
        if perceptual == "ssim":
            # the swap: our offline perceptual term in place of the reference's LPIPS call (same arguments and
            # return layout, a (B, 1, H, W) numpy array)
            model.ano_map.lpips_loss = lambda x, y, retPerLayer=False: (  # noqa: E731
                structural_dissimilarity_map(x, y).cpu().numpy()
            )
        cases[name], draws = run_case(model, inputs, thresholds[name])
        if not noise:
            noise = draws
        elif [n for n, _ in draws] != [n for n, _ in noise] or any(
            not torch.equal(a, b) for (_, a), (_, b) in zip(draws, noise)
        ):
            raise RuntimeError(f"case {name} drew other noise than the first case")
    # the reconstruction precedes everything the cases change
    for name, case in cases.items():
        if not torch.equal(case["reconstruction"], cases["lpips_fixed"]["reconstruction"]):
            raise RuntimeError(f"case {name} reconstructed differently")

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().clone().contiguous() for k, v in model.unet.state_dict().items()}
    torch.save(state, args.out / "network.pt")
    torch.save(
        {
            "inputs": inputs.contiguous(),
            "reconstruction": cases["lpips_fixed"]["reconstruction"],
            "noise": torch.stack([t for _, t in noise]).float().contiguous(),
        },
        args.out / "inputs_and_noise.pt",
    )
    for name, case in cases.items():
        torch.save({k: v for k, v in case.items() if k != "reconstruction"}, args.out / f"{name}.pt")
    meta = {
        "reference_repository": REFERENCE_REPOSITORY,
        "reference_commit": REFERENCE_COMMIT,
        "reference_blobs": blobs,
        "settings": SETTINGS,
        "yaml_levels": {"noise_level_recon": 200, "noise_level_inpaint": 50, "resample_steps": 5},
        "tiny_unet": TINY_UNET,
        "output_gain": OUTPUT_GAIN,
        "seeds": {"network": NETWORK_SEED, "lpips_trunk": TRUNK_SEED, "noise": NOISE_SEED},
        "lpips_trunk_checksum": {
            "sum": float(sum(v.double().sum() for v in trunk.values())),
            "sum_of_squares": float(sum(v.double().square().sum() for v in trunk.values())),
        },
        "reconstruction_mean_abs_error": [
            round(float(e), 4) for e in (cases["lpips_fixed"]["reconstruction"] - inputs).abs().mean(dim=(1, 2, 3))
        ],
        "noise_draws": [name for name, _ in noise],
        "fixed_threshold_as_configured": crash or "ran",
        "stubbed_modules": stubbed,
        "substitutions": {
            "lpips_trunk": "seeded random squeezenet1_1 features (seeded_squeezenet_state), torchvision's ImageNet "
            "weights being unavailable offline; the lpips wheel's linear layers are used as shipped",
            "ssim_percentile": "AnomalyMap.lpips_loss replaced by monai_diffad.maps.structural_dissimilarity_map",
            "lpips_fixed": "masking_threshold given as PerImageFloat(0.13): the plain float crashes at line 224",
            "network": "tiny DiffusionModelUNet of the reference's class replaces the one DDPM() builds",
        },
        "cases": {
            name: {
                "perceptual": CASES[name][0],
                "threshold_rule": CASES[name][1],
                # what the reference was given: the yaml's value as a PerImageFloat, or -1 for its percentile rule
                "masking_threshold": float(t),
                "masked_fraction": [round(float(m.mean()), 4) for m in cases[name]["binary_mask"]],
                "anomaly_map_max": float(cases[name]["anomaly_map"].max()),
                "mask_max": float(cases[name]["mask"].max()),
            }
            for name, t in thresholds.items()
        },
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "lpips": getattr(sys.modules.get("lpips"), "__version__", "?"),
            "opencv": __import__("cv2").__version__,
            "python": sys.version.split()[0],
        },
    }
    (args.out / "reference_run.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{len(noise)} noise draws; fixed threshold as configured: {meta['fixed_threshold_as_configured']}; "
          f"reconstruction mean |error| {meta['reconstruction_mean_abs_error']}")
    for name, info in meta["cases"].items():
        print(name, info)


if __name__ == "__main__":
    main()
