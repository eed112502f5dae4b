# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Int8 weight storage: round trip, loading through the safe loader and the bundles, damaged files."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY_ATTENTION_UNET, tiny_diffusion_unet

from monai_diffad.networks import load_diffusion_unet, load_state_dict_safely
from monai_diffad.quantization import (
    INT8_FORMAT,
    dequantize_state_dict,
    is_int8_state_dict,
    main,
    materialize_int8,
    quantize_state_dict,
)

TINY = TINY_ATTENTION_UNET


@pytest.fixture
def state():
    return tiny_diffusion_unet(**TINY).state_dict()


def test_round_trip_error_within_half_a_step(state):
    checkpoint = quantize_state_dict(state)
    assert checkpoint["format"] == INT8_FORMAT and is_int8_state_dict(checkpoint)
    restored = dequantize_state_dict(checkpoint)
    assert set(restored) == set(state)
    for name, value in state.items():
        assert restored[name].dtype == value.dtype and restored[name].shape == value.shape
        if name in checkpoint["int8"]:
            step = checkpoint["scale"][name].reshape(-1, *([1] * (value.ndim - 1)))
            # rounding to the nearest step: never more than half a step off, per output channel
            assert torch.all((restored[name] - value).abs() <= step / 2 + 1e-7)
        else:
            assert torch.equal(restored[name], value)
    assert checkpoint["int8"], "the convolution weights of the UNet are large enough to be quantized"


def test_small_and_integer_tensors_kept(state):
    state = dict(state, counter=torch.arange(5000), zero=torch.zeros(64, 64))
    checkpoint = quantize_state_dict(state, min_numel=2048)
    assert "counter" in checkpoint["other"]
    assert all(v.numel() >= 2048 and v.ndim >= 2 for v in checkpoint["int8"].values())
    assert torch.equal(dequantize_state_dict(checkpoint)["zero"], torch.zeros(64, 64))  # all-zero channels stay zero


def test_int8_checkpoint_loads_into_the_network(state, tmp_path):
    path = tmp_path / "model_int8.pt"
    torch.save(quantize_state_dict(state), path)
    assert os.path.getsize(path) < 0.4 * sum(v.numel() * v.element_size() for v in state.values())
    network = load_diffusion_unet(path, **TINY)
    reference = tiny_diffusion_unet(**TINY)
    x, t = torch.rand(2, 1, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        expected, out = reference(x, timesteps=t), network(x, timesteps=t)
    # weight-only int8 moves this random network's output by 2 % on average (measured 1.9 %); a wrong scale by far more
    assert expected.abs().mean() > 0.1
    assert (out - expected).abs().mean() < 0.1 * expected.abs().mean()


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda c: c["scale"].pop(next(iter(c["scale"]))), "inconsistent"),
        (lambda c: c["int8"].update({k: v.float() for k, v in c["int8"].items()}), "malformed"),
        (lambda c: c["dtype"].update({k: "no_such_type" for k in c["dtype"]}), "malformed"),
    ],
)
def test_damaged_int8_checkpoint_named(state, tmp_path, damage, match):
    checkpoint = quantize_state_dict(state)
    damage(checkpoint)
    path = tmp_path / "bad_int8.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=f"damaged int8 checkpoint.*{match}"):
        load_state_dict_safely(path)


def test_dequantize_refuses_plain_state_dict(state):
    with pytest.raises(ValueError, match="Not an int8 checkpoint"):
        dequantize_state_dict(state)


def test_materialize_is_cached_by_content(state, tmp_path):
    path = tmp_path / "model_paper_int8.pt"
    torch.save(quantize_state_dict(state), path)
    first = materialize_int8(str(path), str(tmp_path / "cache"))
    assert first == materialize_int8(str(path), str(tmp_path / "cache"))
    restored = torch.load(first, weights_only=True)
    assert set(restored) == set(state) and not is_int8_state_dict(restored)
    torch.save(quantize_state_dict({k: v * 2 for k, v in state.items()}), path)  # new content, new file
    assert materialize_int8(str(path), str(tmp_path / "cache")) != first
    with pytest.raises(FileNotFoundError, match="missing_int8.pt"):
        materialize_int8(str(tmp_path / "missing_int8.pt"))


def test_bundles_use_the_int8_copy_when_no_float_file(state, tmp_path, monkeypatch):
    from monai_diffad.bundles import shared_ddpm_checkpoint

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    models = tmp_path / "bundles" / "ddpm" / "models"
    models.mkdir(parents=True)
    torch.save(quantize_state_dict(state), models / "model_paper_int8.pt")
    path = shared_ddpm_checkpoint(str(tmp_path), "gaussian", "paper")
    assert path.startswith(str(tmp_path / "tmp")) and set(torch.load(path, weights_only=True)) == set(state)
    assert shared_ddpm_checkpoint(str(tmp_path), "simplex", "paper") == path  # Gaussian fallback, rebuilt as well
    torch.save(state, models / "model_paper.pt")  # a float file, where present, wins
    assert shared_ddpm_checkpoint(str(tmp_path), "gaussian", "paper") == str(models / "model_paper.pt")


def test_cli_writes_int8(state, tmp_path, capsys):
    torch.save(state, tmp_path / "model.pt")
    assert main([str(tmp_path / "model.pt"), str(tmp_path / "model_int8.pt")]) == 0
    assert "tensors in int8" in capsys.readouterr().out
    assert is_int8_state_dict(torch.load(tmp_path / "model_int8.pt", weights_only=True))
