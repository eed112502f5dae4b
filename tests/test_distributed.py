# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Multi-process bundles: item splitting and the noise offset in-process; torchrun with 2 CPU (gloo) processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BATCH_ATOL, TINY_UNET, tiny_diffusion_unet

from monai_diffad import DDPMAnomalyInferer
from monai_diffad.evaluate import EvaluationSet, MethodMetrics, evaluate_method
from monai_diffad.evaluate.distributed import deal_items, process_rank, split_items
from monai_diffad.networks import ddpm_scheduler, diffusion_unet, load_state_dict_safely

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
#: seconds allowed for one torchrun job (two processes on CPU)
TIMEOUT_S = 180
TINY_NET = TINY_UNET
#: size class per evaluation item: lesion-free at positions 1 and 5; of 2 ranks, the second has no "small" item
CLASSES = np.array([3, 0, 1, 2, 3, 0, 2, 2])
EVAL_SIZE = 32


def brain_slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` textured ellipse "brains" (N, size, size) in [0, 1] and their uint8 masks."""
    rng = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    brain = ((xx / 0.85) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.uint8)
    texture = [0.45 + 0.15 * np.sin(5 * xx + i) * np.cos(4 * yy) + 0.03 * rng.rand(size, size) for i in range(n)]
    return (brain * np.stack(texture)).astype(np.float32), np.repeat(brain[None], n, 0)


def evaluation_set() -> EvaluationSet:
    """Eight 32 x 32 items with a bright square lesion on the lesion items."""
    images, brains = brain_slices(len(CLASSES), EVAL_SIZE)
    labels = np.zeros_like(brains)
    for i, c in enumerate(CLASSES):
        if c:
            side = {1: 2, 2: 4, 3: 7}[int(c)]
            labels[i, 10 : 10 + side, 9 + i % 4 : 9 + i % 4 + side] = 1
    images = np.where(labels > 0, 0.95, images).astype(np.float32)
    return EvaluationSet(images, labels, brains, CLASSES.astype(np.int64), source="synthetic")


def tiny_network() -> torch.nn.Module:
    return tiny_diffusion_unet()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_module(module: str, args: list[str], cwd: Path, processes: int) -> str:
    """``python -m module args`` under torchrun (loopback, gloo) or as one process; asserts exit code 0, returns output.

    The job runs in its own session, so a timeout ends torchrun's worker processes too (not only the launcher).
    """
    launcher = [sys.executable, "-m", module]
    if processes > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", module,
        ]
    # CPU processes (gloo) even where GPUs exist
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        launcher + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"no exit within {TIMEOUT_S} s:\n{output[-4000:]}")
    errors = [line for line in output.splitlines() if "Error" in line]
    assert proc.returncode == 0, "\n".join(errors[-20:]) + "\n" + output[-3000:]
    return output


def run_bundle(config_files: list[str], overrides: dict[str, str], cwd: Path, processes: int) -> str:
    """``monai.bundle run --config_file config_files --key value ...`` through :func:`run_module`."""
    args = ["run", "--config_file", str(config_files)]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    return run_module("monai.bundle", args, cwd, processes)


# ---------------------------------------------------------------------------------------------- in-process pieces


def test_split_items_consecutive_balanced_blocks():
    assert split_items(8, 1) == [(0, 8)]
    assert split_items(8, 2) == [(0, 4), (4, 8)]
    assert split_items(8, 3) == [(0, 3), (3, 5), (5, 8)]
    # the lesion-free items (positions 0, 7, 8, 9) move the first boundary so that every block holds one
    lesion_free = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    blocks = split_items(10, 4, [lesion_free])
    assert blocks == [(0, 2), (2, 8), (8, 9), (9, 10)]
    assert all(lesion_free[a:b].any() for a, b in blocks)
    # an empty group needs nothing
    assert split_items(4, 2, [np.zeros(4, dtype=bool)]) == [(0, 2), (2, 4)]


@pytest.mark.parametrize(
    "n_items, world_size, required, match",
    [
        (3, 4, [], "only 3 items"),
        (8, 3, [CLASSES == 0], "only 2 items"),
        (4, 2, [np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool)], "consecutive blocks"),
        (4, 0, [], "world_size"),
        (4, 2, [np.ones(3, bool)], "shape"),
    ],
)
def test_split_items_rejects_impossible_splits(n_items, world_size, required, match):
    with pytest.raises(ValueError, match=match):
        split_items(n_items, world_size, required)


def test_no_process_group_is_rank_0_of_1():
    assert process_rank() == (0, 1)


def test_noise_positions_give_each_share_the_single_pass_results():
    """Per image, a share of the items evaluated at their stream positions equals the same images of one pass."""
    dataset = evaluation_set()
    network = tiny_network()
    inferer = DDPMAnomalyInferer(ddpm_scheduler(), noise_level=3, perceptual="ssim")
    everything = list(range(len(dataset)))
    kwargs = {"batch_size": 2, "seed": 5, "example_indices": everything}
    whole = evaluate_method(inferer, network, dataset, everything, **kwargs)
    share = [1, 2, 3, 6, 7]  # two runs (a gap after 3), batches [1, 2], [3], [6, 7]
    dealt = evaluate_method(inferer, network, dataset, share, noise_positions=share, **kwargs)
    unshifted = evaluate_method(inferer, network, dataset, share, **kwargs)
    assert sorted(dealt.examples) == share
    for index in share:  # other batch sizes than the single pass: equal to float rounding
        np.testing.assert_allclose(dealt.examples[index], whole.examples[index], atol=BATCH_ATOL, rtol=0)
    # without the positions the share draws the first images' noise: the maps differ
    assert any(np.abs(unshifted.examples[i] - whole.examples[i]).max() > 100 * BATCH_ATOL for i in share)
    for bad in ([0, -1, 2, 3, 4], [0, 1]):
        with pytest.raises(ValueError, match="noise_positions"):
            evaluate_method(inferer, network, dataset, share, noise_positions=bad)


def test_deal_items_balances_runs_and_keeps_every_group():
    lesion_free = np.zeros(200, dtype=bool)
    lesion_free[150:] = True  # the development set's order: lesion slices first
    assert split_items(200, 2, [lesion_free]) == [(0, 151), (151, 200)]
    dealt = deal_items(200, 2, [lesion_free], chunk=25)
    assert [len(d) for d in dealt] == [100, 100]
    assert dealt[0][:26] == list(range(25)) + [50]
    assert sorted(dealt[0] + dealt[1]) == list(range(200))
    assert all(lesion_free[d].any() for d in dealt)
    # a rank that dealing would leave without a lesion-free item: consecutive blocks instead
    assert deal_items(200, 2, [lesion_free], chunk=100) == [list(range(151)), list(range(151, 200))]
    assert deal_items(5, 3, chunk=2) == [[0, 1], [2, 3], [4]]
    assert deal_items(5, 1, chunk=2) == [list(range(5))]
    for chunk in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunk"):
            deal_items(5, 2, chunk=chunk)
    with pytest.raises(ValueError, match="processes"):
        deal_items(4, 2, [np.array([1, 0, 0, 0], dtype=bool)])


def test_empty_histograms_leave_the_metrics_unchanged():
    dataset = evaluation_set()
    network = tiny_network()
    inferer = DDPMAnomalyInferer(ddpm_scheduler(), noise_level=3, perceptual="ssim")
    batch = dataset.batch([0, 1, 2])  # no small lesion: the "small" stratum has no data
    output = inferer.detect(batch["image"], network, mask=batch["brain_mask"], generator=torch.Generator())
    metrics = MethodMetrics(n_bins=1000)
    metrics.update(output, batch)
    before, _ = metrics.aggregate()
    metrics.add_empty_histograms()
    after, _ = metrics.aggregate()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key] == after[key] or (np.isnan(before[key]) and np.isnan(after[key])), key
    groups = MethodMetrics.item_groups(CLASSES)
    np.testing.assert_array_equal(groups[0], np.ones(8, bool))
    np.testing.assert_array_equal(groups[1], CLASSES == 0)


def test_multi_gpu_train_overlay_follows_train_json():
    """The overlay replaces train.json entries by position: they must still be the ones it means."""
    train = json.loads((REPO / "bundles/ddpm/train.json").read_text())
    overlay = json.loads((REPO / "bundles/ddpm/multi_gpu_train.json").read_text())
    handlers = train["train_handlers"]
    for position, target in ((4, "StatsHandler"), (5, "TensorBoardStatsHandler"), (6, "CheckpointSaver")):
        assert handlers[position]["_target_"] == target and f"train_handlers#{position}#_disabled_" in overlay
    for position, name in ((3, "LossCSVLogger"), (7, "WeightsExporter")):
        assert name in handlers[position]
        assert overlay[f"train_handlers#{position}"] == f"{handlers[position]} if @main_process else None"
    val_handlers = train["evaluator"]["val_handlers"]
    assert [h["_target_"] for h in val_handlers] == ["StatsHandler", "TensorBoardStatsHandler"]
    assert "TimeLimit" in train["run"][1] and "attach_progress_bar" in train["run"][2]
    # the replaced initialize list keeps every step of train.json's
    for step in train["initialize"]:
        assert any(step[1:].rstrip(")") in item for item in overlay["initialize"]), step


# ----------------------------------------------------------------------------------------- torchrun, 2 processes


@pytest.mark.slow
def test_multi_gpu_train_overlay_two_cpu_processes(tmp_path: Path):
    """DDP training from train.json + multi_gpu_train.json: sharded data, rank-0-only files, EMA of the module."""
    images, masks = brain_slices(12, 64)
    validation = np.arange(12) % 3 == 0  # 8 training slices, 4 held out (x2 augmented copies for validation)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(
        data / "train_slices_64.npz", images=images, masks=masks, source=np.array(["synthetic"] * 12),
        z=np.arange(12), validation=validation,
    )
    out, model_file = tmp_path / "out", tmp_path / "model.pt"
    overrides = {
        "dataset_dir": str(data), "output_dir": str(out), "model_file": str(model_file), "num_threads": "1",
        "batch_size": "2", "max_epochs": "5", "val_interval": "1", "checkpoint_interval": "4",
        "autocast_dtype": "none", "time_limit_s": "600", "network_def#channels": "[8,8]",
        "network_def#attention_levels": "[False,False]", "network_def#num_head_channels": "8",
        "network_def#norm_num_groups": "4",
    }
    configs = [str(REPO / "bundles/ddpm/train.json"), str(REPO / "bundles/ddpm/multi_gpu_train.json")]
    run_bundle(configs, overrides, tmp_path, processes=2)

    # 8 training slices over 2 ranks, 2 per batch: 2 iterations per epoch (4 without the DistributedSampler)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_final_iteration=10.pt", "checkpoint_iteration=8.pt"]
    final = torch.load(out / "checkpoints" / checkpoints[0], map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in final["model"])  # saved unwrapped
    exported = load_state_dict_safely(str(model_file))
    diffusion_unet(**TINY_NET).load_state_dict(exported, strict=True)
    for key, value in exported.items():
        torch.testing.assert_close(value, final["ema"][key])
    assert any(not torch.equal(final["ema"][k], final["model"][k]) for k in exported)

    # one writer: TensorBoard files from one process, CSV rows not repeated
    logs = out / "logs"
    writers = {name.split(".")[-2] for name in os.listdir(logs) if name.startswith("events.out.tfevents")}
    assert len(writers) == 1
    with open(logs / "val_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6, 8, 10]
    assert all(np.isfinite(float(r["val_mse"])) for r in rows)
    with open(logs / "train_loss.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [10]


def write_tiny_thor_bundle(root: Path) -> Path:
    """A THOR bundle folder (inference.json with a tiny random network, 4 noise steps) and an 8-item dev set."""
    bundle = root / "bundles" / "thor"
    bundle.mkdir(parents=True)
    checkpoint = root / "model.pt"
    torch.save(tiny_network().state_dict(), checkpoint)
    config = {
        "imports": ["$import torch", "$import monai_diffad", "$import monai_diffad.networks"],
        "device": "$torch.device('cpu')",
        "checkpoint": str(checkpoint),
        "image_size": EVAL_SIZE,
        "network_def": {"_target_": "monai_diffad.networks.diffusion_unet", **TINY_NET},
        "network": "$@network_def.to(@device).eval()",
        "scheduler": "$monai_diffad.networks.ddpm_scheduler()",
        "inferer": {
            "_target_": "monai_diffad.THORInferer", "scheduler": "@scheduler", "noise_level": 4,
            "harmonization_steps": [2], "record_interval": 1, "perceptual": "ssim",
        },
    }
    (bundle / "inference.json").write_text(json.dumps(config, indent=1))
    data = root / "data"
    data.mkdir()
    s = evaluation_set()
    np.savez(
        data / f"dev_{EVAL_SIZE}.npz", images=s.images, masks=s.labels, brain_masks=s.brain_masks,
        size_class=s.size_class,
    )
    return bundle


@pytest.mark.slow
def test_multi_gpu_evaluate_overlay_matches_one_process(tmp_path: Path):
    """evaluate.json + multi_gpu_evaluate.json on 2 ranks: one report, every item once, metrics of one process."""
    bundle = write_tiny_thor_bundle(tmp_path)
    evaluate = str(REPO / "bundles/thor/evaluate.json")
    common = {"bundle_root": str(bundle), "dataset_dir": str(tmp_path / "data")}
    run_bundle(
        [evaluate, str(REPO / "bundles/thor/multi_gpu_evaluate.json")],
        {**common, "output_dir": str(tmp_path / "two")}, tmp_path, processes=2,
    )
    run_bundle([evaluate], {**common, "output_dir": str(tmp_path / "one")}, tmp_path, processes=1)

    reports = {}
    for name in ("one", "two"):
        assert sorted(os.listdir(tmp_path / name)) == sorted(
            ["results.md", "results.csv", "results.json", "pr_curves.png", "examples.png"]
        )
        reports[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert_same_report(reports["one"], reports["two"])


def assert_same_report(one: dict, two: dict) -> None:
    """Two ``results.json`` of the same evaluation (one and two processes): equal data, metrics and curves."""
    assert one["metadata"]["machine"]["processes"] == 1 and two["metadata"]["machine"]["processes"] == 2
    assert two["metadata"]["data"] == one["metadata"]["data"]
    assert two["metadata"]["data"]["items_used"] == len(CLASSES)
    (m1,), (m2,) = one["methods"], two["methods"]
    assert m1["status"] == m2["status"] == "ok"
    # pooled histograms, per-image SSIM/MSE rows and image scores, merged across ranks: the same numbers
    seconds = "seconds_per_image"
    assert {k: v for k, v in m2["metrics"].items() if k != seconds} == {
        k: v for k, v in m1["metrics"].items() if k != seconds
    }
    assert m2["dice_curve"] == m1["dice_curve"]


@pytest.mark.slow
def test_evaluate_command_line_under_torchrun_matches_one_process(tmp_path: Path):
    """``torchrun -m monai_diffad.evaluate``: the command line joins the job itself; one report, one process's numbers.

    Batches of 3 are dealt: rank 0 takes items 0-2 and 6-7, rank 1 items 3-5, each with a lesion-free item.
    """
    write_tiny_thor_bundle(tmp_path)
    reports = {}
    for processes, name in ((2, "two"), (1, "one")):
        args = [
            "--methods", "thor", "--data", str(tmp_path / "data" / f"dev_{EVAL_SIZE}.npz"), "--out",
            str(tmp_path / name), "--bundles", str(tmp_path / "bundles"), "--device", "cpu", "--batch-size", "3",
            "--no-progress",
        ]
        output = run_module("monai_diffad.evaluate", args, tmp_path, processes)
        assert output.count("thor: ok") == 1  # only rank 0 reports
        reports[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert reports["two"]["metadata"]["command"].startswith("torchrun --nproc_per_node=2 -m monai_diffad.evaluate")
    assert_same_report(reports["one"], reports["two"])
