# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Parity of ``AutoDDPMInferer`` with the authors' AutoDDPM code (``ci-ber/autoDDPM``), on data it computed.

``tests/data/parity/autoddpm/`` holds what the reference's ``DDPM.get_anomaly`` computed on three 32 × 32 phantoms
with a tiny network of seeded weights, and every noise tensor it drew, in order
(``scripts/parity/autoddpm_reference.py`` made it; the folder's README says how). Here our inferer runs on the same
inputs and weights with that noise fed in place of its per-image streams, and every intermediate is compared.
Neither the network nor the reference code is needed.

Measured max |Δ| (torch 2.14.1, MONAI 1.6.1, CPU; the tolerance :data:`ATOL` is 1e-5), per case
``lpips_fixed`` / ``lpips_percentile`` / ``ssim_percentile``:

- reconstruction x̂: 4.2e-7 (all cases; the networks round differently: MONAI's attention block, and the reference
  calls its UNet with one float timestep broadcast over the batch where we pass one per image);
- continuous mask c: 1.5e-7 / 1.5e-7 / 3.1e-6 (the SSIM map amplifies x̂'s rounding);
- binary mask: 0 / 0 / 0;
- stitched image: 4.2e-7 / 4.2e-7 / 3.0e-7;
- in-painted image (before clamping) and pseudo-healthy image: 3.6e-7 / 6.0e-7 / 5.4e-7;
- final anomaly map: 1.0e-7 / 8.9e-8 / 1.2e-6;
- the reference's image score (the map's mean) against our map's mean: 9.3e-10 / 1.9e-9 / 9.3e-9.

One setting away from the reference moves the result far beyond the tolerance
(:func:`test_a_changed_setting_is_detected`): ``jump_beta_index="t"`` by 3.2e-3 in the in-painted image and 2.8e-4
in the map, ``resample_start="input"`` by 0.78, our default ``model_range=(-1, 1)`` by 0.95 in x̂.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from monai_diffad.inferers.autoddpm import AutoDDPMInferer, initial_anomaly_map
from monai_diffad.inferers.base import DetectionBatch
from monai_diffad.maps import PerceptualDistance, residual_map
from monai_diffad.networks import ddpm_scheduler, diffusion_unet

DATA = Path(__file__).parent / "data" / "parity" / "autoddpm"
#: largest |Δ| accepted between the reference's tensors and ours (float32 on CPU)
ATOL = 1e-5
#: how far a changed setting must move the result for the comparison to count as able to fail
MOVED = 1e-3
CASES = ("lpips_fixed", "lpips_percentile", "ssim_percentile")


def load(name: str) -> Any:
    return torch.load(DATA / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads((DATA / "reference_run.json").read_text())


@pytest.fixture(scope="module")
def shared() -> dict[str, torch.Tensor]:
    return load("inputs_and_noise.pt")


@pytest.fixture(scope="module")
def network(meta: dict[str, Any]) -> torch.nn.Module:
    """Our MONAI UNet with the reference network's weights (the reference's class is a MONAI Generative copy)."""
    arch = meta["tiny_unet"]
    net = diffusion_unet(
        channels=arch["channels"],
        attention_levels=arch["attention_levels"],
        num_res_blocks=arch["num_res_blocks"],
        num_head_channels=arch["num_head_channels"],
        norm_num_groups=arch["norm_num_groups"],
    )
    old = dict(load("network.pt"))
    net.load_old_state_dict(old)  # pops what it converts; what stays behind was not loaded
    # the reference's attention block builds proj_attn but never applies it; nothing else may be left over
    assert old and all(".proj_attn." in key for key in old), sorted(old)
    return net.eval()


def seeded_squeezenet_state(seed: int) -> dict[str, torch.Tensor]:
    """The harness's seeded LPIPS trunk (``seeded_squeezenet_state`` in ``scripts/parity/autoddpm_reference.py``)."""
    torchvision = pytest.importorskip("torchvision")
    shapes = {k: v.shape for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(k for k in shapes if k.startswith("features.")):
        shape = shapes[key]
        scale = math.sqrt(2.0 / math.prod(shape[1:])) if len(shape) > 1 else 0.1
        state[key] = torch.randn(shape, generator=generator) * scale
    return state


@pytest.fixture(scope="module")
def trunk_file(meta: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The seeded SqueezeNet trunk the reference's LPIPS ran with, rebuilt and written as a torchvision file."""
    state = seeded_squeezenet_state(meta["seeds"]["lpips_trunk"])
    checksum = meta["lpips_trunk_checksum"]
    total = float(sum(v.double().sum() for v in state.values()))
    squares = float(sum(v.double().square().sum() for v in state.values()))
    assert total == pytest.approx(checksum["sum"], rel=1e-9, abs=1e-9), "the trunk recipe no longer reproduces"
    assert squares == pytest.approx(checksum["sum_of_squares"], rel=1e-9)
    path = tmp_path_factory.mktemp("lpips") / "squeezenet1_1-seeded.pth"
    torch.save(state, path)
    return str(path)


class RecordedNoise:
    """Serves the reference's recorded noise draws in order, in place of the per-image streams.

    The reference draws each tensor for the whole batch from the global RNG; our inferer asks its streams for one
    batch tensor per draw, in the same order (reconstruction: the forward noise, then one per step with t > 0;
    re-sampling: the start noise, then per level and pass the known part's, the step's and, but after the last
    pass, the jump's).
    """

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws = draws
        self.used = 0

    def __call__(self, shape: Sequence[int], t: int = 0) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise AssertionError("the inferer drew more noise than the reference")
        out = self.draws[self.used]
        assert tuple(out.shape[1:]) == tuple(shape), (self.used, tuple(out.shape), tuple(shape))
        self.used += 1
        return out.clone()


class ReplayingAutoDDPM(AutoDDPMInferer):
    """``AutoDDPMInferer`` whose noise comes from the reference's recording (nothing else changed)."""

    def __init__(self, *args: Any, draws: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draws = draws
        self.streams: list[RecordedNoise] = []

    def noise_streams(self, batch: DetectionBatch) -> RecordedNoise:  # type: ignore[override]
        self.streams.append(RecordedNoise(self.draws))
        return self.streams[-1]


def run_ours(
    case: str, meta: dict[str, Any], shared: dict[str, torch.Tensor], network: torch.nn.Module, trunk: str, **changes
) -> dict[str, torch.Tensor]:
    """Our inferer with the reference's settings of ``case`` (``changes`` override them); all outputs, flat."""
    settings = meta["settings"]
    info = meta["cases"][case]
    perceptual = info["perceptual"]
    options: dict[str, Any] = {
        "noise_level": settings["noise_level_recon"],
        "resample_level": settings["noise_level_inpaint"],
        "resample_passes": settings["resample_steps"],
        # a negative threshold selects the per-image percentile rule, as in the reference
        "mask_threshold": info["masking_threshold"],
        "perceptual": perceptual,
        "lpips_backbone_path": trunk if perceptual == "lpips" else None,
        # the reference trains and infers on [0, 1]
        "model_range": (0.0, 1.0),
        **changes,
    }
    inferer = ReplayingAutoDDPM(ddpm_scheduler(), draws=shared["noise"], **options)
    out = inferer.detect(shared["inputs"], network, return_intermediates=True)
    assert len(inferer.streams) == 1 and inferer.streams[0].used == len(shared["noise"]), "noise left unused"
    return {
        **out.intermediates,
        "anomaly_map": out.anomaly_map,
        "pseudo_healthy": out.pseudo_healthy,
    }


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.float() - b.float()).abs().max())


def test_data_is_what_the_readme_says(meta: dict[str, Any], shared: dict[str, torch.Tensor]) -> None:
    """The saved run: the pinned commit, the draw order of the settings, and masks that cover part of each image."""
    assert meta["reference_commit"] == "f74b894e43ee2c730707e2bc481acbb33e5426b1"
    settings = meta["settings"]
    levels, passes = settings["noise_level_inpaint"], settings["resample_steps"]
    # reconstruction: forward noise + one per step with t > 0; re-sampling: start + per level (known, step) × K + jumps
    expected = (1 + settings["noise_level_recon"]) + 1 + levels * (2 * passes + passes - 1)
    assert len(shared["noise"]) == len(meta["noise_draws"]) == expected
    assert meta["fixed_threshold_as_configured"].startswith("TypeError")
    for case in CASES:
        fractions = meta["cases"][case]["masked_fraction"]
        assert all(0.0 < f < 0.5 for f in fractions), (case, fractions)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(
    case: str, meta: dict[str, Any], shared: dict[str, torch.Tensor], network: torch.nn.Module, trunk_file: str
) -> None:
    """Every intermediate and the final map equal the reference's to ``ATOL`` (measured: bit-identical)."""
    reference = load(f"{case}.pt")
    ours = run_ours(case, meta, shared, network, trunk_file)
    # the reconstruction must have changed the images, or the rest compares little
    assert max_diff(shared["reconstruction"], shared["inputs"]) > 0.05
    pairs = {
        "reconstruction": (ours["reconstruction"], shared["reconstruction"]),
        "mask": (ours["mask"], reference["mask"]),
        "binary_mask": (ours["binary_mask"], reference["binary_mask"]),
        "stitched": (ours["stitched"], reference["stitched"]),
        "inpainted": (ours["inpainted"], reference["inpainted"]),
        "pseudo_healthy": (ours["pseudo_healthy"], reference["inpainted"].clamp(0, 1)),
        "anomaly_map": (ours["anomaly_map"], reference["anomaly_map"]),
        # the reference's image score is the map's mean (ours is the top-1 % mean: compared through the map)
        "score": (ours["anomaly_map"].mean(dim=(1, 2, 3)), reference["score"]),
    }
    diffs = {name: max_diff(a, b) for name, (a, b) in pairs.items()}
    assert all(d <= ATOL for d in diffs.values()), diffs


@pytest.mark.parametrize(
    ("case", "changes", "field"),
    [
        ("lpips_fixed", {"jump_beta_index": "t"}, "inpainted"),
        ("lpips_fixed", {"resample_start": "input"}, "inpainted"),
        ("lpips_fixed", {"model_range": (-1.0, 1.0)}, "reconstruction"),
        ("lpips_fixed", {"mask_threshold": 0.1}, "binary_mask"),
        ("lpips_percentile", {"mask_order": "dilate_binarize"}, "binary_mask"),
        ("lpips_percentile", {"threshold_percentile": 90.0}, "binary_mask"),
        ("ssim_percentile", {"jump_beta_index": "t"}, "inpainted"),
    ],
)
def test_a_changed_setting_is_detected(
    case: str,
    changes: dict[str, Any],
    field: str,
    meta: dict[str, Any],
    shared: dict[str, torch.Tensor],
    network: torch.nn.Module,
    trunk_file: str,
) -> None:
    """The comparison can fail: one setting away from the reference moves the result well beyond ``ATOL``."""
    reference = {**load(f"{case}.pt"), "reconstruction": shared["reconstruction"]}
    ours = run_ours(case, meta, shared, network, trunk_file, **changes)
    assert max_diff(ours[field], reference[field]) > MOVED
    # at these low levels the jump's β changes the final map least: 2.8e-4 (LPIPS), 1.6e-3 (SSIM)
    assert max_diff(ours["anomaly_map"], reference["anomaly_map"]) > 10 * ATOL


def test_lpips_double_mapping_matters(
    meta: dict[str, Any], shared: dict[str, torch.Tensor], trunk_file: str
) -> None:
    """The reference feeds LPIPS 2x − 1 and also asks it to normalize (so the trunk sees 4x − 3): c follows that
    mapping exactly, and the single mapping LPIPS was calibrated on gives another c."""
    reference = load("lpips_fixed.pt")
    x, rec = shared["inputs"], shared["reconstruction"]
    residual = residual_map(x, rec)
    for double, expect_equal in ((True, True), (False, False)):
        distance = PerceptualDistance("squeeze", trunk_file, reference_double_mapping=double)
        c = initial_anomaly_map(residual, distance(x, rec))
        diff = max_diff(c, reference["mask"])
        assert (diff <= ATOL) if expect_equal else (diff > MOVED), (double, diff)

