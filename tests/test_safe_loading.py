# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Checkpoints never execute code: malicious pickles are refused by every loading path, without running."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import TINY_UNET, tiny_diffusion_unet
from safetensors.torch import save_file

from monai_diffad.networks import diffusion_unet, load_diffusion_unet, load_state_dict_safely
from monai_diffad.quantization import materialize_int8, quantize_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_UNET


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
    state = dict(tiny_diffusion_unet().state_dict())
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


@pytest.fixture
def malicious_int8(tmp_path):
    """An int8 checkpoint (format tag and all) whose 'other' entries carry the payload; (path, marker)."""
    marker = tmp_path / "pwned_int8"
    checkpoint = quantize_state_dict(tiny_diffusion_unet().state_dict(), min_numel=64)
    checkpoint["other"]["payload"] = _CreatesFile(str(marker))
    path = tmp_path / "model_int8.pt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize(
    "loader",
    [
        load_state_dict_safely,
        lambda p: load_diffusion_unet(p, **TINY),
        lambda p: materialize_int8(str(p), str(p) + ".d"),
    ],
    ids=["load_state_dict_safely", "load_diffusion_unet", "materialize_int8"],
)
def test_malicious_int8_checkpoint_refused_without_running(malicious_int8, loader):
    path, marker = malicious_int8
    with pytest.raises(ValueError, match="Refused to load") as info:
        loader(path)
    assert str(path) in str(info.value) and not marker.exists()


def test_warm_start_refuses_malicious_weights(malicious):
    """Training's warm start (``init_weights``) reads the file through the safe loader."""
    from monai_diffad.training import warm_start

    path, marker = malicious
    network, ema = diffusion_unet(**TINY), diffusion_unet(**TINY)
    with pytest.raises(ValueError, match="Refused to load"):
        warm_start(network, ema, str(path))
    assert not marker.exists()


def test_resume_refuses_malicious_checkpoint(malicious, tmp_path):
    """Resuming: ``latest_checkpoint`` picks the file up and the loader train.json builds for it refuses it."""
    import json

    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    from monai_diffad.training import latest_checkpoint

    path, marker = malicious
    with open(os.path.join(ROOT, "bundles", "ddpm", "train.json")) as f:
        expression = json.load(f)["train_handlers"][0]
    # the handler as train.json writes it (a MONAI CheckpointLoader on @resume_from); rebuilt here with the objects
    # it names, because parsing the whole training config needs its data set
    assert expression.startswith("$monai.handlers.CheckpointLoader(load_path=@resume_from, load_dict=@checkpoint_dict")
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    os.replace(path, ckpt_dir / "checkpoint_iteration=7.pt")
    resume_from = latest_checkpoint(str(ckpt_dir))
    assert resume_from.endswith("checkpoint_iteration=7.pt")
    network = diffusion_unet(**TINY)
    loader = CheckpointLoader(load_path=resume_from, load_dict={"model": network, "ema": diffusion_unet(**TINY)})
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
    net = tiny_diffusion_unet()
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
