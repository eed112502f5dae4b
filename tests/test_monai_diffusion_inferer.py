# Copyright (c) MONAI Consortium
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""MONAI's own ``DiffusionInferer`` tests, run with each of our five inferers in place of ``DiffusionInferer``.

Origin: ``tests/inferers/test_diffusion_inferer.py`` of Project-MONAI/MONAI at tag ``1.5.0``, Copyright (c) MONAI
Consortium, Apache License 2.0 (header above). Every case and assertion of that file is kept; the changes are:

- tests whose bodies differ only in the scheduler, its T, the conditioning or ``cfg`` share one body, parametrised
  by MONAI's test name (``CALL_TESTS``, ``SAMPLE_TESTS``): all 15 of MONAI's tests are here, each for both network
  cases but test_normal_cdf, which has none;
- each test runs for each of DDPMAnomalyInferer, AnoDDPMInferer, THORInferer, AutoDDPMInferer and DISYREInferer
  (pytest parametrisation in place of ``unittest`` + ``parameterized``, which this project does not install);
- each test body runs twice from the same seed, once with MONAI's ``DiffusionInferer`` and once with ours, and the
  outputs must be identical (``torch.equal``): the subclass must stand wherever the parent stands;
- the network's zero-initialised layers get seeded values (``conftest.nonzero_init_``), because an untrained
  ``DiffusionModelUNet`` outputs exactly 0 and any two runs would then agree trivially;
- the conditioned tests copy ``model_params`` instead of changing the shared case in place.

What MONAI's file skips without einops or scipy is skipped the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import nonzero_init_
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from monai.utils import optional_import

from monai_diffad import AnoDDPMInferer, AutoDDPMInferer, DDPMAnomalyInferer, DISYREInferer, THORInferer

_, has_scipy = optional_import("scipy")
_, has_einops = optional_import("einops")

requires_einops = pytest.mark.skipif(not has_einops, reason="Requires einops")

_MODEL_2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [8],
    "norm_num_groups": 8,
    "attention_levels": [True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
}
TEST_CASES = [
    [_MODEL_2D, (2, 1, 8, 8)],
    [{**_MODEL_2D, "spatial_dims": 3}, (2, 1, 8, 8, 8)],
]

#: our five inferers, each standing in for DiffusionInferer
OURS = [DDPMAnomalyInferer, AnoDDPMInferer, THORInferer, AutoDDPMInferer, DISYREInferer]

cases = pytest.mark.parametrize("model_params, input_shape", TEST_CASES, ids=["2d", "3d"])
ours = pytest.mark.parametrize("inferer_cls", OURS, ids=[c.__name__ for c in OURS])

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"


def _model(model_params: dict[str, Any]) -> DiffusionModelUNet:
    """MONAI's test network, with seeded values in its zero-initialised layers, on DEVICE in eval mode."""
    return nonzero_init_(DiffusionModelUNet(**model_params)).to(DEVICE).eval()


def _assert_identical(expected: Any, actual: Any) -> None:
    """Tensors equal bit for bit, recursively through tuples and lists."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape
        assert torch.equal(actual, expected), f"differs from the parent by {(actual - expected).abs().max()}"
        return
    assert isinstance(actual, (tuple, list)) and len(actual) == len(expected)
    for e, a in zip(expected, actual):
        _assert_identical(e, a)


def _same_as_parent(run: Callable[[type], Any], inferer_cls: type) -> None:
    """``run(DiffusionInferer)`` and ``run(inferer_cls)`` from the same seed give identical outputs."""
    torch.manual_seed(0)
    expected = run(DiffusionInferer)
    torch.manual_seed(0)
    actual = run(inferer_cls)
    _assert_identical(expected, actual)


def _concat_params(model_params: dict[str, Any], n_concat_channel: int) -> dict[str, Any]:
    """MONAI's concat-conditioning network: the conditioning channels are concatenated to the input."""
    return {
        **model_params,
        "in_channels": model_params["in_channels"] + n_concat_channel,
        "cross_attention_dim": None,
        "with_conditioning": False,
    }


#: MONAI's test name -> (scheduler class, T, conditioning: None, "crossattn" or "concat")
CALL_TESTS = {
    "test_call": (DDPMScheduler, 10, None),
    "test_call_conditioned_concat": (DDPMScheduler, 10, "concat"),
    "test_call_conditioned_concat_rflow": (RFlowScheduler, 1000, "concat"),
}


@ours
@cases
@requires_einops
@pytest.mark.parametrize("monai_test", sorted(CALL_TESTS))
def test_call(inferer_cls, model_params, input_shape, monai_test):
    """MONAI's training-call tests (``inferer(inputs, model, noise, timesteps)``), one body for the three."""
    scheduler_cls, num_train_timesteps, conditioned = CALL_TESTS[monai_test]
    n_concat_channel = 2
    if conditioned == "concat":
        model_params = _concat_params(model_params, n_concat_channel)

    def run(cls: type) -> torch.Tensor:
        model = _model(model_params)
        input = torch.randn(input_shape).to(DEVICE)
        noise = torch.randn(input_shape).to(DEVICE)
        kwargs: dict[str, Any] = {}
        if conditioned == "concat":
            conditioning_shape = list(input_shape)
            conditioning_shape[1] = n_concat_channel
            kwargs = {"condition": torch.randn(conditioning_shape).to(DEVICE), "mode": "concat"}
        scheduler = scheduler_cls(num_train_timesteps=num_train_timesteps)
        inferer = cls(scheduler=scheduler)
        scheduler.set_timesteps(num_inference_steps=10)
        timesteps = torch.randint(0, scheduler.num_train_timesteps, (input_shape[0],), device=input.device).long()
        sample = inferer(inputs=input, noise=noise, diffusion_model=model, timesteps=timesteps, **kwargs)
        assert sample.shape == input_shape
        return sample

    _same_as_parent(run, inferer_cls)


#: MONAI's test name -> (scheduler class, T, conditioning: None, "crossattn" or "concat", cfg)
SAMPLE_TESTS = {
    "test_sample_intermediates": (DDPMScheduler, 10, None, None),
    "test_sample_cfg": (DDPMScheduler, 10, None, 5),
    "test_ddpm_sampler": (DDPMScheduler, 1000, None, None),
    "test_ddim_sampler": (DDIMScheduler, 1000, None, None),
    "test_rflow_sampler": (RFlowScheduler, 1000, None, None),
    "test_sampler_conditioned": (DDIMScheduler, 1000, "crossattn", None),
    "test_sampler_conditioned_rflow": (RFlowScheduler, 1000, "crossattn", None),
    "test_sampler_conditioned_concat": (DDIMScheduler, 1000, "concat", None),
    "test_sampler_conditioned_concat_cfg": (DDIMScheduler, 1000, "concat", 5),
    "test_sampler_conditioned_concat_rflow": (RFlowScheduler, 1000, "concat", None),
}


@ours
@cases
@requires_einops
@pytest.mark.parametrize("monai_test", sorted(SAMPLE_TESTS))
def test_sample(inferer_cls, model_params, input_shape, monai_test):
    """MONAI's ``sample`` tests, one body for the ten; each asserts what MONAI's asserts (the intermediates' count,
    or the sample's shape for test_sample_cfg), and both here."""
    scheduler_cls, num_train_timesteps, conditioned, cfg = SAMPLE_TESTS[monai_test]
    n_concat_channel = 2
    if conditioned == "crossattn":
        model_params = {**model_params, "with_conditioning": True, "cross_attention_dim": 3}
    elif conditioned == "concat":
        model_params = _concat_params(model_params, n_concat_channel)

    def run(cls: type) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = _model(model_params)
        noise = torch.randn(input_shape).to(DEVICE)
        kwargs: dict[str, Any] = {} if cfg is None else {"cfg": cfg}
        if conditioned == "concat":
            conditioning_shape = list(input_shape)
            conditioning_shape[1] = n_concat_channel
            kwargs.update(conditioning=torch.randn(conditioning_shape).to(DEVICE), mode="concat")
        scheduler = scheduler_cls(num_train_timesteps=num_train_timesteps)
        inferer = cls(scheduler=scheduler)
        scheduler.set_timesteps(num_inference_steps=10)
        if conditioned == "crossattn":
            kwargs["conditioning"] = torch.randn([input_shape[0], 1, 3]).to(DEVICE)
        sample, intermediates = inferer.sample(
            input_noise=noise,
            diffusion_model=model,
            scheduler=scheduler,
            save_intermediates=True,
            intermediate_steps=1,
            **kwargs,
        )
        assert len(intermediates) == 10
        assert sample.shape == noise.shape
        return sample, intermediates

    _same_as_parent(run, inferer_cls)


@ours
@cases
@requires_einops
def test_get_likelihood(inferer_cls, model_params, input_shape):
    def run(cls: type) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = _model(model_params)
        input = torch.randn(input_shape).to(DEVICE)
        scheduler = DDPMScheduler(num_train_timesteps=10)
        inferer = cls(scheduler=scheduler)
        scheduler.set_timesteps(num_inference_steps=10)
        likelihood, intermediates = inferer.get_likelihood(
            inputs=input, diffusion_model=model, scheduler=scheduler, save_intermediates=True
        )
        assert intermediates[0].shape == input.shape
        assert likelihood.shape[0] == input.shape[0]
        return likelihood, intermediates

    _same_as_parent(run, inferer_cls)


@ours
@pytest.mark.skipif(not has_scipy, reason="Requires scipy library.")
def test_normal_cdf(inferer_cls):
    from scipy.stats import norm

    def run(cls: type) -> torch.Tensor:
        scheduler = DDPMScheduler(num_train_timesteps=10)
        inferer = cls(scheduler=scheduler)

        x = torch.linspace(-10, 10, 20)
        cdf_approx = inferer._approx_standard_normal_cdf(x)
        cdf_true = norm.cdf(x)
        torch.testing.assert_allclose(cdf_approx, cdf_true, atol=1e-3, rtol=1e-5)
        return cdf_approx

    _same_as_parent(run, inferer_cls)
