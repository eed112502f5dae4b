# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DISYRE parity with the authors' reference code (snavalm/disyre at e149f29f4dc55b96c0a14213a7f14f0d9370691f).

``tests/data/parity/disyre/`` holds what the reference computed (``scripts/parity/disyre_reference.py``; the data's
README says how it was made): its full-evaluation scoring (``mean-single-step``, steps 99, 74, 49, 24, foreground
weighting per window, its own sliding window for other sizes) and its multi-step restoration, on small phantoms, with
one tiny network with seeded non-zero weights. These tests run our :class:`DISYREInferer` with the reference settings
by name on the same weights and inputs; neither the network nor the reference code is needed.

Measured max |Δ| (CPU, float32; tolerance :data:`TOLERANCE`):

- schedule tables (β, ᾱ, √ᾱ), the training map α → t_ref on 2001 α, the inference timesteps and the update α:
  identical (0; the update α within 2.4e-8, our float64 against its float32);
- whole 32² images: x̂0 per call 0, residual map per call 0, final map 3.0e-8;
- sliding windows (16² windows, stride 4): 28² (windows tile the image) 8.9e-8, 26 x 22 (the reference pads to whole
  strides; ``sw_padding="stride"``) 6.3e-8 (0.29 with MONAI's windows, ``"none"``), 12 x 20 (smaller than the
  window) 3.0e-8;
- multi-step restoration (``update="cold"``): x̂0 per call 3.9e-6, residual map per call 2.0e-6, restored image
  3.9e-6, final map 6.2e-7 once our map is masked as the reference masks it (by the restored image > 0; masked by
  the input > 0, as ours is, it differs by 0.32).

Every reference setting matters on these data: our defaults differ by 0.13–0.23, and changing any one setting back
differs by 0.04 or more (:func:`test_each_setting_changes_the_map`), so the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from monai_diffad.disyre_schedule import (
    corruption_alphas,
    disyre_scheduler,
    reference_restoration_steps,
    reference_timestep,
    restoration_timesteps,
    timestep_for_alpha,
)
from monai_diffad.inferers.disyre import DISYREInferer, disyre_unet

DATA = Path(__file__).parent / "data" / "parity" / "disyre"
#: Largest |Δ| accepted between our tensors and the reference's.
TOLERANCE = 1e-5
#: The reference evaluation's settings, each by name (the window settings are our defaults, spelled out).
REFERENCE_SETTINGS: dict[str, Any] = {
    "scoring": "mean_single_step",
    "step_schedule": "reference",
    "clamp_x0": "after",
    "foreground_weighting": "window",
    "foreground_mask": True,
    "sw_padding": "stride",
    "sw_overlap": 0.75,
    "sw_sigma_scale": 0.125,
}
#: The reference's multi-step restoration: its cold-diffusion update, the state updated between calls.
REFERENCE_MULTI_STEP = {**REFERENCE_SETTINGS, "scoring": "multi_step", "update": "cold"}
SCORING_CASES = ("whole", "window", "window_padded", "window_small")


def _load(name: str) -> dict[str, Any]:
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.double() - b.double()).abs().max())


def _window_weight(images: torch.Tensor) -> torch.Tensor:
    """The reference's ``weight_foreground`` on whole images: the fraction of pixels > 0, ``(B, 1, 1, 1)``."""
    return (images > 0).flatten(1).float().mean(1)[:, None, None, None]


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    saved = _load("network")
    net = disyre_unet(saved["size"], **saved["overrides"])
    net.load_state_dict(saved["state_dict"])
    return net.eval()


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, Any]]:
    return {name: _load(name) for name in (*SCORING_CASES, "multi_step")}


def _detect(case: dict[str, Any], network: torch.nn.Module, **settings: Any) -> Any:
    inferer = DISYREInferer(patch_size=case["sample_size"].tolist(), **settings)
    # the per-call tensors exist for the whole-image cases, where the reference's steps were recorded
    return inferer.detect(case["inputs"], network, return_intermediates="step_x0_raw" in case)


def test_data_is_small_float32_and_safe_to_load():
    files = sorted(DATA.glob("*.pt"))
    assert {f.stem for f in files} == {"network", "scheduler", "multi_step", *SCORING_CASES}
    assert sum(f.stat().st_size for f in DATA.iterdir()) < 1_000_000
    for path in files:
        saved = torch.load(path, weights_only=True)
        tensors = list(saved["state_dict"].values()) if "state_dict" in saved else list(saved.values())
        for value in tensors:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float32, path.name


def test_schedule_tables_and_step_levels_match_the_reference():
    ref = _load("scheduler")
    ours = disyre_scheduler()
    assert _max_abs(ours.betas, ref["betas"]) == 0
    assert _max_abs(ours.alphas_cumprod, ref["alphas_cumprod"]) == 0
    # float32 sqrt may differ by one ulp between CPU instruction sets (vectorised or not): allow that, no more
    assert _max_abs(ours.alphas_cumprod.sqrt(), ref["sqrt_alphas_cumprod"]) < 1e-7
    # the reference's training map t_ref = argmin |√ᾱ_t − α|
    assert torch.equal(reference_timestep(ref["alpha_grid"], ours), ref["map_alpha_to_timestep"])
    # its "trailing" inference timesteps and the steps between them are ours − 1 with s = T / steps
    step_size = ours.num_train_timesteps // int(ref["num_inference_steps"])
    reference_steps = [t - 1 for t in restoration_timesteps(ours.num_train_timesteps, step_size)]
    assert ref["timesteps"].tolist() == reference_steps
    assert ref["previous_timesteps"].tolist() == [t - step_size for t in reference_steps]
    # what our network is called at, and the α the reference's update reads, for step_schedule="reference"
    steps, update_alphas = reference_restoration_steps(ours, step_size)
    assert steps == ref["network_timestep_map"][ref["timesteps"]].tolist()
    assert steps == timestep_for_alpha(ref["sqrt_alphas_cumprod"][ref["timesteps"]], corruption_alphas(ours)).tolist()
    assert _max_abs(torch.tensor(update_alphas), ref["step_alpha"]) < 1e-7


def test_whole_images_per_call(network, cases):
    ref = cases["whole"]
    out = _detect(ref, network, **REFERENCE_SETTINGS)
    inter = out.intermediates
    assert inter["timesteps"].tolist() == ref["network_t_paper"].tolist() == [3, 10, 25, 50]
    assert ref["network_t_ref"].tolist() == [99, 74, 49, 24]
    # x̂0: ours is the clamped prediction, the reference keeps the raw one (and clamps nothing in this method)
    assert _max_abs(inter["x0"].transpose(0, 1), ref["step_x0_raw"].clamp(0, 1)) <= TOLERANCE
    # per-call residuals |x − P(x, t)|: ours carry the window weight, the reference applies it to their mean
    weighted = ref["step_anomaly_score"] * _window_weight(ref["inputs"])
    assert _max_abs(inter["maps"].transpose(0, 1), weighted) <= TOLERANCE
    # the network overshoots [0, 1] somewhere, so scoring the raw prediction is exercised
    assert bool(((ref["step_x0_raw"] < 0) | (ref["step_x0_raw"] > 1)).any())


@pytest.mark.parametrize("name", SCORING_CASES)
def test_reference_scoring(network, cases, name):
    ref = cases[name]
    score = ref["anomaly_score"]
    # our detect() clamps maps to [0, 1], the reference does not: the data stay inside, so that is not compared
    assert float(score.max()) <= 1.0 and float(score.std()) > 1e-2
    assert ref["pipeline_kwargs"]["method"] == "mean-single-step"
    out = _detect(ref, network, **REFERENCE_SETTINGS)
    assert _max_abs(out.anomaly_map, score) <= TOLERANCE


def test_window_placement_matters_where_the_reference_pads(network, cases):
    ref = cases["window_padded"]
    monai_grid = _detect(ref, network, **{**REFERENCE_SETTINGS, "sw_padding": "none"})
    assert _max_abs(monai_grid.anomaly_map, ref["anomaly_score"]) > 100 * TOLERANCE
    # where the windows tile the image, or the image is smaller than the window, both placements agree
    for name in ("window", "window_small"):
        agree = _detect(cases[name], network, **{**REFERENCE_SETTINGS, "sw_padding": "none"})
        assert _max_abs(agree.anomaly_map, cases[name]["anomaly_score"]) <= TOLERANCE


def test_multi_step_restoration(network, cases):
    ref = cases["multi_step"]
    assert ref["pipeline_kwargs"]["method"] == "multi-step-restoration"
    out = _detect(ref, network, **{**REFERENCE_MULTI_STEP, "foreground_mask": False})
    inter = out.intermediates
    assert inter["timesteps"].tolist() == ref["network_t_paper"].tolist()
    assert _max_abs(inter["x0"].transpose(0, 1), ref["step_x0_raw"].clamp(0, 1)) <= TOLERANCE
    weighted = ref["step_anomaly_score"] * _window_weight(ref["inputs"])
    assert _max_abs(inter["maps"].transpose(0, 1), weighted) <= TOLERANCE
    # the state after each update is the next call's input; the last is the clamped last x̂0, our pseudo-healthy
    assert _max_abs(ref["step_prev_sample"][-1], ref["images"]) == 0
    assert _max_abs(out.pseudo_healthy, ref["images"]) <= TOLERANCE
    # the reference masks its multi-step map by the *restored* image > 0; ours (foreground_mask) by the input > 0
    restored_mask = (ref["images"] > 0).to(out.anomaly_map.dtype)
    assert _max_abs(out.anomaly_map * restored_mask, ref["anomaly_score"]) <= TOLERANCE
    input_masked = _detect(ref, network, **REFERENCE_MULTI_STEP).anomaly_map
    assert _max_abs(input_masked, ref["anomaly_score"]) > 100 * TOLERANCE


@pytest.mark.parametrize(
    "name, changed",
    [
        ("whole", None),  # our defaults
        ("window_padded", None),
        ("whole", {"step_schedule": "paper"}),
        ("whole", {"clamp_x0": "before"}),
        ("whole", {"foreground_weighting": "none"}),
        ("window", {"foreground_weighting": "image"}),
        ("whole", {"scoring": "multi_step"}),
        ("whole", {"foreground_mask": False}),
        ("window_padded", {"sw_padding": "none"}),
    ],
)
def test_each_setting_changes_the_map(network, cases, name, changed):
    """The comparison can fail: our defaults, or any one reference setting changed back, give another map."""
    ref = cases[name]
    settings = {} if changed is None else {**REFERENCE_SETTINGS, **changed}
    out = _detect(ref, network, **settings)
    assert _max_abs(out.anomaly_map, ref["anomaly_score"]) > 100 * TOLERANCE


def test_sw_padding_is_a_named_option():
    assert DISYREInferer().sw_padding == "none"  # the default is unchanged
    with pytest.raises(ValueError, match="sw_padding|stride"):
        DISYREInferer(sw_padding="reflect")
