# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Checkpoints never execute code: malicious pickles are refused by every loading path, without running."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from monai_diffad.networks import diffusion_unet, load_diffusion_unet, load_state_dict_safely

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"channels": (8, 8), "attention_levels": (False, False), "num_head_channels": 8, "norm_num_groups": 4}


class _CreatesFile:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path):
    """A torch checkpoint holding real weights plus a payload; returns (checkpoint path, marker path)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    state = dict(diffusion_unet(**TINY).state_dict())
    state["payload"] = _CreatesFile(str(marker))
    torch.save(state, path)
    assert not marker.exists()
    return path, marker


def test_payload_is_live(tmp_path):
    """Guard against a vacuous test: plain pickle does run the payload."""
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(_CreatesFile(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("loader", [load_state_dict_safely, lambda p: load_diffusion_unet(p, **TINY)])
def test_malicious_pickle_refused_without_running(malicious, loader):
    path, marker = malicious
    with pytest.raises(ValueError, match="Refused to load") as info:
        loader(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_pickle_refused_by_bundle_paths(malicious, monkeypatch):
    """The bundle's ``check_weights`` (run by ``initialize``) and its ``CheckpointLoader`` handler both refuse."""
    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    path, marker = malicious
    monkeypatch.chdir(ROOT)
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "thor", "inference.json"))
    parser["checkpoint"] = str(path)
    parser["device"] = "$torch.device('cpu')"
    with pytest.raises(RuntimeError, match="load_state_dict_safely") as info:  # MONAI wraps expression errors
        parser.get_parsed_content("check_weights")
    assert isinstance(info.value.__cause__, ValueError) and "Refused to load" in str(info.value.__cause__)
    loader = parser.get_parsed_content("handlers")[0]
    assert type(loader).__name__ == "CheckpointLoader"
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        loader(Engine(lambda engine, batch: None))
    assert not marker.exists()


def test_malicious_lpips_backbone_refused(malicious):
    import lpips

    from monai_diffad.maps import load_lpips_backbone

    path, marker = malicious
    model = lpips.LPIPS(net="squeeze", pretrained=False, pnet_rand=True, verbose=False)
    with pytest.raises(pickle.UnpicklingError):
        load_lpips_backbone(model, path)
    assert not marker.exists()


def test_safetensors_round_trip(tmp_path):
    net = diffusion_unet(**TINY)
    path = tmp_path / "model.safetensors"
    save_file(net.state_dict(), str(path))
    loaded = load_diffusion_unet(path, **TINY)
    assert not loaded.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_corrupt_safetensors_gives_value_error(malicious, tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(malicious[0].read_bytes())  # a pickle under a safetensors name
    with pytest.raises(ValueError, match="safetensors") as info:
        load_state_dict_safely(fake)
    assert "fake.safetensors" in str(info.value)
    assert not malicious[1].exists()


def test_truncated_checkpoint_gives_value_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(diffusion_unet(**TINY).state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="Refused to load"):
        load_state_dict_safely(path)


def test_mismatched_architecture_names_keys(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(diffusion_unet(**TINY).state_dict(), path)
    with pytest.raises(ValueError, match="does not match the network architecture") as info:
        load_diffusion_unet(path)  # the three-level demo network
    assert "missing e.g. ['" in str(info.value) and "down_blocks.2" in str(info.value)


def test_mismatched_widths_name_the_resized_keys(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(diffusion_unet(**{**TINY, "channels": (16, 16)}).state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch e.g. \\['") as info:
        load_diffusion_unet(path, **TINY)
    assert "conv_in.conv.weight" in str(info.value)


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    for loader in (load_state_dict_safely, load_diffusion_unet):
        with pytest.raises(FileNotFoundError, match="nowhere") as info:
            loader(missing)
        assert "bundles/ddpm/train.json" in str(info.value)  # says how to get one


@pytest.mark.parametrize(
    "content, match",
    [([1, 2], "state dict of tensors"), ({"model": {"w": "text"}}, "state dict of tensors"), ({}, "non-empty")],
)
def test_non_state_dict_content_refused(tmp_path, content, match):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        load_state_dict_safely(path)


def test_missing_key_named(tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"model": diffusion_unet(**TINY).state_dict()}, path)
    assert load_state_dict_safely(path)  # unwrapped automatically
    with pytest.raises(ValueError, match="no entry 'ema'"):
        load_state_dict_safely(path, key="ema")
