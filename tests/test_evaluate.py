# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation runner and report: metrics against direct oracles, report files, skipped/failed methods, CLI, bundle."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_UNET, tiny_diffusion_unet
from monai.bundle import run as bundle_run
from sklearn.metrics import average_precision_score, roc_auc_score

from monai_diffad import DDPMAnomalyInferer
from monai_diffad.calibration import main as calibration_main
from monai_diffad.calibration import threshold_from_results
from monai_diffad.evaluate import (
    METRIC_COLUMNS,
    REPORT_FILES,
    EvaluationSet,
    evaluate_method,
    load_evaluation_set,
    resolve_data_path,
    run_evaluation,
    select_items,
)
from monai_diffad.evaluate.__main__ import main
from monai_diffad.evaluate.report import run_metadata, run_provenance
from monai_diffad.evaluate.runner import MethodMetrics
from monai_diffad.inferers import AnomalyOutput
from monai_diffad.methods import MethodSpec, parse_overrides, register_method, unregister_method
from monai_diffad.metrics import ReconstructionMetric, best_dice, healthy_fpr_threshold, image_threshold_at_fpr
from monai_diffad.networks import ddpm_scheduler

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
#: size class per item: two of each stratum, interleaved
CLASSES = np.array([3, 0, 2, 1, 3, 0, 2, 1])
#: lesion square side per size class (any lesion for class != 0; the runner uses the given classes)
SIDES = {1: 2, 2: 4, 3: 7}
TINY_NET = TINY_UNET


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Textured ellipse "brains" in [0, 1] with a bright square lesion on the lesion items."""
    rng = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    brain = ((xx / 0.85) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.uint8)
    images, masks = [], []
    for i, c in enumerate(CLASSES):
        image = brain * (0.45 + 0.15 * np.sin(5 * xx + i) * np.cos(4 * yy) + 0.03 * rng.rand(SIZE, SIZE))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if c:
            r0, c0 = 10 + i % 3, 9 + i % 4
            mask[r0 : r0 + SIDES[c], c0 : c0 + SIDES[c]] = 1
            image = np.where(mask > 0, 0.95, image)
        images.append(image.astype(np.float32))
        masks.append(mask)
    return {
        "images": np.stack(images),
        "masks": np.stack(masks),
        "brain_masks": np.repeat(brain[None], len(CLASSES), 0),
        "size_class": CLASSES.astype(np.int64),
    }


def tiny_network(seed: int = 0) -> torch.nn.Module:
    return tiny_diffusion_unet(seed)


def write_bundle(bundles: Path, name: str, checkpoint: Path, inferer: dict, image_size: int = SIZE) -> Path:
    """A bundle-like ``inference.json`` with the keys the evaluation reads (network, checkpoint, inferer)."""
    config = {
        "imports": ["$import torch", "$import monai_diffad", "$import monai_diffad.networks"],
        "device": "$torch.device('cpu')",
        "checkpoint": str(checkpoint),
        "image_size": image_size,
        "network_def": {"_target_": "monai_diffad.networks.diffusion_unet", **TINY_NET},
        "network": "$@network_def.to(@device).eval()",
        "scheduler": "$monai_diffad.networks.ddpm_scheduler()",
        "inferer": {"scheduler": "@scheduler", "perceptual": "ssim", **inferer},
    }
    folder = bundles / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inference.json").write_text(json.dumps(config, indent=1))
    return folder


@pytest.fixture
def workspace(tmp_path: Path):
    """Tiny set as npz, a checkpoint, and bundles: ddpm (runs), thor (weights missing), wrong_size (64 expected, a
    method registered as a plugin would register it)."""
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / f"dev_{SIZE}.npz", **synthetic_arrays())
    checkpoint = tmp_path / "model.pt"
    torch.save(tiny_network().state_dict(), checkpoint)
    bundles = tmp_path / "bundles"
    ddpm = {"_target_": "monai_diffad.DDPMAnomalyInferer", "noise_level": 3}
    write_bundle(bundles, "ddpm", checkpoint, ddpm)
    write_bundle(bundles, "wrong_size", checkpoint, ddpm, image_size=64)
    thor = {"_target_": "monai_diffad.THORInferer", "noise_level": 4, "harmonization_steps": [2], "record_interval": 1}
    write_bundle(bundles, "thor", tmp_path / "missing.pt", thor)
    register_method(MethodSpec("wrong_size", "Wrong size", "wrong_size", "a DDPM bundle for 64x64 images"))
    yield {"data": data / f"dev_{SIZE}.npz", "bundles": bundles, "out": tmp_path / "report"}
    unregister_method("wrong_size")


def test_select_items_takes_strata_in_turn():
    classes = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    assert select_items(classes, 4) == [0, 3, 5, 6]
    assert select_items(classes, 6) == [0, 1, 3, 4, 5, 6]
    assert select_items(classes) == list(range(8))
    assert select_items(classes, 100) == list(range(8))
    assert select_items(classes, 3, order=(3, 2, 1, 0)) == [6, 5, 3]
    with pytest.raises(ValueError, match="limit"):
        select_items(classes, 0)


def test_parse_overrides():
    parsed = parse_overrides(
        ["all.noise_level=100", "thor.noise_level=50", "thor.noise_type=simplex", "ddpm.inferer#x=[1, 2]",
         "ddpm.a=null"],
        ["thor", "ddpm"],
    )
    assert parsed["all"] == {"noise_level": 100}
    assert parsed["thor"] == {"noise_level": 50, "noise_type": "simplex"}
    assert parsed["ddpm"] == {"inferer#x": [1, 2], "a": None}
    with pytest.raises(ValueError, match="not among"):
        parse_overrides(["thr.noise_level=1"], ["thor"])
    with pytest.raises(ValueError, match="METHOD.KEY=VALUE"):
        parse_overrides(["noise_level=1"], ["thor"])


def test_evaluate_method_matches_direct_oracles():
    arrays = synthetic_arrays()
    dataset = EvaluationSet(arrays["images"], arrays["masks"], arrays["brain_masks"], arrays["size_class"])
    network = tiny_network()
    inferer = DDPMAnomalyInferer(ddpm_scheduler(), noise_level=3, perceptual="ssim")
    result = evaluate_method(inferer, network, dataset, name="ddpm", batch_size=3, seed=7, example_indices=[0, 1])

    # the same calls, by hand
    generator = torch.Generator().manual_seed(7)
    outputs = [
        inferer.detect(
            torch.as_tensor(arrays["images"][i : i + 3, None]), network,
            mask=torch.as_tensor(arrays["brain_masks"][i : i + 3, None]), generator=generator,
        )
        for i in range(0, len(CLASSES), 3)
    ]
    maps = torch.cat([o.anomaly_map for o in outputs]).numpy()
    healthy = torch.cat([o.pseudo_healthy for o in outputs])
    scores = torch.cat([o.score for o in outputs]).numpy()
    labels, brain = arrays["masks"][:, None], arrays["brain_masks"][:, None].astype(bool)
    m = result.metrics

    dice, threshold = best_dice(maps, labels, brain)
    assert m["dice_all"] == pytest.approx(dice) and m["threshold_all"] == pytest.approx(threshold)
    for c, stratum in ((1, "small"), (2, "medium"), (3, "large")):
        keep = CLASSES == c
        assert m[f"dice_{stratum}"] == pytest.approx(best_dice(maps[keep], labels[keep], brain[keep])[0])
        sel = brain[keep]
        assert m[f"auroc_{stratum}"] == pytest.approx(roc_auc_score(labels[keep][sel], maps[keep][sel]), abs=1e-3)
    assert m["auprc_all"] == pytest.approx(average_precision_score(labels[brain], maps[brain]), abs=1e-3)
    assert m["auroc_all"] == pytest.approx(roc_auc_score(labels[brain], maps[brain]), abs=1e-3)
    free = CLASSES == 0
    flagged = (maps[free] >= np.float32(threshold)) & brain[free]
    assert m["flagged_fraction"] == pytest.approx(flagged.sum() / brain[free].sum())
    # the bundle calibration's threshold, measured on the same lesion-free maps
    assert m["calibrated_threshold"] == healthy_fpr_threshold(maps[free], brain[free], 0.05)
    assert m["calibration_fpr"] == 0.05
    # the image threshold from the lesion-free items' scores: 2 of them at 5 %, so none may reach it
    assert m["image_threshold"] == image_threshold_at_fpr(scores[free], 0.05) > scores[free].max()
    assert m["image_auroc"] == pytest.approx(roc_auc_score(CLASSES != 0, scores))
    images = torch.as_tensor(arrays["images"][:, None])
    assert m["mse"] == pytest.approx(float(((healthy[free] - images[free]) ** 2).mean()), rel=1e-5)
    oracle_ssim = ReconstructionMetric()(healthy[free], images[free])[:, 0].mean()
    assert m["ssim"] == pytest.approx(float(oracle_ssim), rel=1e-5)
    assert set(result.examples) == {0, 1}
    np.testing.assert_allclose(result.examples[1], maps[1, 0])
    assert result.status == "ok" and result.noise == "gaussian" and result.settings["noise_level"] == 3
    assert result.curves["dice"].shape == (101,)


def _scored_batch(scores: list[float], size_class: list[int]) -> tuple[AnomalyOutput, dict[str, torch.Tensor]]:
    """A batch of 16x16 items (SSIM needs 11x11) whose maps and images are 0.5, with detection scores ``scores``."""
    n = len(scores)
    maps = torch.full((n, 1, 16, 16), 0.5)
    output = AnomalyOutput(anomaly_map=maps, pseudo_healthy=maps.clone(), score=torch.tensor(scores))
    classes = torch.tensor(size_class)
    labels = torch.zeros(n, 1, 16, 16)
    labels[classes > 0, :, :2, :2] = 1
    batch = {"image": maps.clone(), "label": labels, "brain_mask": torch.ones(n, 1, 16, 16), "size_class": classes}
    return output, batch


def test_method_metrics_image_threshold_from_lesion_free_scores_only():
    metrics = MethodMetrics(n_bins=100, calibration_fpr=0.25)
    # lesion items score highest: they must not move the threshold of the lesion-free ones
    metrics.update(*_scored_batch([0.9, 0.1, 0.4, 0.95], [2, 0, 0, 3]))
    metrics.update(*_scored_batch([0.3, 0.4, 0.2, 0.99], [0, 0, 0, 1]))
    values, _ = metrics.aggregate()
    healthy = torch.tensor([0.1, 0.4, 0.3, 0.4, 0.2])
    # 5 lesion-free items at 25 %: k = 1, but 0.4 is tied, so only a threshold above it leaves one at most
    assert values["image_threshold"] == image_threshold_at_fpr(healthy, 0.25) > 0.4
    assert values["calibration_fpr"] == 0.25
    lesions_only = MethodMetrics(n_bins=100)
    lesions_only.update(*_scored_batch([0.9, 0.8], [1, 2]))
    assert np.isnan(lesions_only.aggregate()[0]["image_threshold"])
    assert np.isnan(MethodMetrics(n_bins=100).image_threshold())


def test_run_evaluation_writes_report_and_skips_unavailable(workspace):
    results = run_evaluation(
        ["ddpm", "thor", "anoddpm"], str(workspace["data"]), str(workspace["out"]),
        bundles_dir=str(workspace["bundles"]), device="cpu", limit=6, progress=False, command="pytest run",
    )
    assert [(r.name, r.status) for r in results] == [("ddpm", "ok"), ("thor", "skipped"), ("anoddpm", "skipped")]
    assert "weights" in results[1].reason and "bundle" in results[2].reason
    for name in REPORT_FILES:
        assert (workspace["out"] / name).stat().st_size > 0
    text = (workspace["out"] / "results.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Noise | Method"))
    for column in ("max-Dice avg", "max-Dice small", "max-Dice medium", "max-Dice large", "AUPRC avg",
                   "AUROC large", "recon SSIM"):
        assert f"| {column} |" in header
    operating = next(line for line in text.splitlines() if line.startswith("| Method | best threshold"))
    assert "| image threshold at 5% healthy FPR |" in operating
    row = next(line for line in text.splitlines() if line.startswith("| DDPM (Gaussian) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    headers = [c.strip() for c in operating.strip("|").split("|")]
    image_threshold = results[0].metrics["image_threshold"]
    assert cells[headers.index("image threshold at 5% healthy FPR")] == f"{image_threshold:.4f}"
    rows = [line for line in text.splitlines() if line.startswith("| Gaussian | ")]
    assert len(rows) == 1 and rows[0].startswith("| Gaussian | DDPM |")
    assert rows[0].count("|") == header.count("|")
    assert "**thor**: skipped" in text and "**anoddpm**: skipped" in text
    assert "pytest run" in text and "seed: 0" in text and "git commit" in text
    with open(workspace["out"] / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["ddpm", "thor", "anoddpm"]
    assert list(table[0])[5:] == list(METRIC_COLUMNS)
    assert 0 <= float(table[0]["dice_all"]) <= 1 and table[1]["dice_all"] == ""
    assert float(table[0]["image_threshold"]) == pytest.approx(image_threshold, rel=1e-5)

    def refuse(constant: str) -> None:
        raise AssertionError(f"results.json holds {constant}")

    report = json.loads((workspace["out"] / "results.json").read_text(), parse_constant=refuse)
    assert report["metadata"]["data"]["items_per_stratum"] == {"none": 2, "small": 2, "medium": 1, "large": 1}
    assert report["methods"][0]["settings"]["checkpoint_sha256"]


def test_report_records_provenance_floor_and_threshold_scope(workspace):
    results = run_evaluation(
        ["ddpm"], str(workspace["data"]), str(workspace["out"]), bundles_dir=str(workspace["bundles"]),
        device="cpu", progress=False,
    )
    meta = json.loads((workspace["out"] / "results.json").read_text())["metadata"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    head = head.stdout.strip()
    assert meta["git_commit"].removesuffix("-dirty") == head and "git_commit_at_end" not in meta
    assert meta["argv"] == sys.argv and meta["cwd"] == os.getcwd() and meta["started"] <= meta["date"]
    # a checkout that changed between start and report: the start is recorded, the end named beside it
    dataset = load_evaluation_set(str(workspace["data"]))
    started = {**run_provenance(), "git_commit": "0" * 40}
    moved = run_metadata("cmd", 0, torch.device("cpu"), dataset, [0, 1], None, "bundles", provenance=started)
    assert moved["git_commit"] == "0" * 40 and moved["git_commit_at_end"] == meta["git_commit"]

    # the trivial floor is what the metric gives a map flagging every brain pixel, per stratum
    brain, labels = dataset.brain_masks.astype(np.float32), dataset.labels
    for stratum, classes in (("all", (0, 1, 2, 3)), ("small", (1,)), ("large", (3,))):
        chosen = np.isin(dataset.size_class, classes)
        all_brain = torch.as_tensor(brain[chosen])
        dice, _ = best_dice(all_brain, torch.as_tensor(labels[chosen]), all_brain)
        assert meta["trivial_floor"][stratum]["max_dice"] == pytest.approx(dice, abs=1e-9)
    assert set(meta["thresholds"]) >= {"dice_all", "dice_small", "dice_small_at_global"}
    assert meta["thresholds"]["dice_all"].startswith("global") and meta["thresholds"]["dice_large"].startswith("per")
    metrics = results[0].metrics
    for s in ("small", "medium", "large"):  # a stratum's own best threshold bounds its Dice at the global one
        assert metrics[f"dice_{s}_at_global"] <= metrics[f"dice_{s}"] + 1e-12
    text = (workspace["out"] / "results.md").read_text()
    assert "| - | All brain (trivial) |" in text and "Table 3" in text and "when the run started" in text


def test_benchmark_run_calibrates_the_bundle_it_ran(workspace, capsys):
    run_evaluation(
        ["ddpm"], str(workspace["data"]), str(workspace["out"]), bundles_dir=str(workspace["bundles"]),
        device="cpu", progress=False,
    )
    results = workspace["out"] / "results.json"
    recorded = json.loads(results.read_text())["methods"][0]["metrics"]
    measured, measured_image = recorded["calibrated_threshold"], recorded["image_threshold"]
    assert "healthy FPR" in (workspace["out"] / "results.md").read_text()
    result = threshold_from_results(str(results), "ddpm", str(workspace["bundles"]))
    assert result["threshold"] == measured and result["fpr"] == 0.05 and result["num_images"] == 2
    assert result["image_threshold"] == measured_image and np.isfinite(measured_image)
    # --write edits the bundle's thresholds, noting the run they came from
    bundle = workspace["bundles"] / "ddpm"
    config = json.loads((bundle / "inference.json").read_text())
    (bundle / "inference.json").write_text(json.dumps({**config, "threshold": 0.5, "image_threshold": None}, indent=1))
    (bundle / "metadata.json").write_text('{"version": "0.1.0"}')
    argv = ["--bundle", "ddpm", "--from-results", str(results), "--bundles_dir", str(workspace["bundles"])]
    assert calibration_main([*argv, "--write"]) == 0
    written = json.loads((bundle / "inference.json").read_text())
    assert written["threshold"] == round(measured, 4)
    # 6 decimals, rounded up: not below the measured threshold, so no more lesion-free slices reach it
    assert measured_image <= written["image_threshold"] < measured_image + 1e-6
    meta = json.loads((bundle / "metadata.json").read_text())
    assert str(results) in meta["threshold_calibration"] and str(results) in meta["image_threshold_calibration"]
    assert "image_threshold = " in capsys.readouterr().out
    # another fpr, other weights, a method the run lacks and a report from before the threshold was recorded
    for extra, match in ((["--fpr", "0.01"], "fpr 0.05"),):
        with pytest.raises(SystemExit):
            calibration_main([*argv, *extra])
        assert match in capsys.readouterr().err
    with pytest.raises(ValueError, match="no completed run of 'thor'"):
        threshold_from_results(str(results), "thor", str(workspace["bundles"]))
    report = json.loads(results.read_text())
    # a report from before the image threshold was recorded still calibrates the label threshold
    del report["methods"][0]["metrics"]["image_threshold"]
    old = workspace["out"] / "old.json"
    old.write_text(json.dumps(report))
    assert threshold_from_results(str(old), "ddpm", str(workspace["bundles"]))["image_threshold"] is None
    del report["methods"][0]["metrics"]["calibrated_threshold"]
    old.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="rerun the benchmark"):
        threshold_from_results(str(old), "ddpm", str(workspace["bundles"]))
    with pytest.raises(ValueError, match="not a readable results.json"):
        threshold_from_results(str(workspace["data"]), "ddpm", str(workspace["bundles"]))
    torch.save(tiny_network(seed=1).state_dict(), json.loads((bundle / "inference.json").read_text())["checkpoint"])
    with pytest.raises(ValueError, match="now holds"):
        threshold_from_results(str(results), "ddpm", str(workspace["bundles"]))


def test_cli_overrides_failures_and_exit_status(workspace, capsys):
    common = ["--data", str(workspace["data"]), "--bundles", str(workspace["bundles"]), "--device", "cpu",
              "--limit", "4", "--no-progress", "--examples", "2"]
    out = workspace["out"]
    # "all" overrides go where the id exists (the tiny bundles have no top-level noise_level)
    argv = ["--methods", "ddpm", "--out", str(out), *common, "--override", "ddpm.inferer#noise_level=2", "all.seed=1"]
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["methods"][0]["settings"]["noise_level"] == 2
    assert report["methods"][0]["settings"]["overrides"] == {"inferer#noise_level": 2}
    assert report["metadata"]["command"].startswith("python -m monai_diffad.evaluate --methods ddpm")
    # a bad setting and a data/network size mismatch fail those methods only, with the reason in the report
    argv = ["--methods", "ddpm,wrong_size,thor", "--out", str(out), *common,
            "--override", "ddpm.inferer#noise_level=5000", "thor.noise_levl=3"]
    assert main(argv) == 1
    text = (out / "results.md").read_text()
    assert "**ddpm**: failed: " in text and "noise_level=5000" in text
    assert "**wrong_size**: failed" in text and "expects 64x64" in text
    assert "**thor**: failed: ValueError: override 'noise_levl'" in text
    with pytest.raises(SystemExit):
        main(["--methods", "ddpm", "--out", str(out), *common, "--override", "thor.noise_level=2"])
    assert "not among" in capsys.readouterr().err


def test_thor_evaluate_json_runs_through_the_same_entry_point(workspace):
    # the shipped evaluate.json, pointed at a tiny bundle and a data folder (dev_<image_size>.npz is picked)
    bundle_run(
        config_file=str(REPO / "bundles" / "thor" / "evaluate.json"),
        meta_file=str(REPO / "bundles" / "thor" / "metadata.json"),
        bundle_root=str(workspace["bundles"] / "ddpm"),
        dataset_dir=str(workspace["data"].parent),
        output_dir=str(workspace["out"]),
        limit=4,
    )
    report = json.loads((workspace["out"] / "results.json").read_text())
    assert [(m["name"], m["status"]) for m in report["methods"]] == [("ddpm", "ok")]
    assert report["metadata"]["data"]["items_used"] == 4


def test_load_datalist_and_resolve(tmp_path: Path):
    arrays = synthetic_arrays()
    items = []
    for i in range(3):
        item = {}
        for key, array, dtype in (("image", "images", np.float32), ("label", "masks", np.uint8),
                                  ("brain_mask", "brain_masks", np.uint8)):
            path = tmp_path / key / f"{i}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arrays[array][i].astype(dtype), np.eye(4)), path)
            item[key] = os.path.relpath(path, tmp_path)
        items.append(item)
    (tmp_path / "datalist.json").write_text(json.dumps({"test": items[:2], "validation": items[2:]}))
    dataset = load_evaluation_set(resolve_data_path(str(tmp_path)))
    np.testing.assert_allclose(dataset.images, arrays["images"][:3])
    np.testing.assert_array_equal(dataset.labels, arrays["masks"][:3])
    np.testing.assert_array_equal(dataset.brain_masks, arrays["brain_masks"][:3])
    # no size_class in the items: from the masks, pixel counts scaled to 128 x 128 (x16 at 32 x 32)
    # 49 px -> 784 (large), 1 lesion-free, 16 px -> 256 (medium)
    np.testing.assert_array_equal(dataset.size_class, [3, 0, 2])
    with pytest.raises(FileNotFoundError, match="dev_64.npz"):
        resolve_data_path(str(tmp_path / "label"), 64)
    with pytest.raises(ValueError, match="shape"):
        EvaluationSet(arrays["images"], arrays["masks"][:, :4], arrays["brain_masks"], arrays["size_class"])


def test_calibrate_bundle_runs_the_benchmark_loop_on_lesion_free_items(workspace):
    from monai_diffad.calibration import calibrate_bundle

    strict, loose = (
        calibrate_bundle("ddpm", str(workspace["data"]), fpr, device="cpu", bundles_dir=str(workspace["bundles"]))
        for fpr in (0.01, 0.5)
    )
    assert strict["num_images"] == loose["num_images"] == 2
    # a larger tolerated share of labelled healthy pixels can only lower the threshold
    assert 0.0 < loose["threshold"] < strict["threshold"] < 1.0
    # of 2 lesion-free images, 1 may reach the threshold at 50 % (the higher score), none at 1 % (just above it)
    assert loose["image_threshold"] < strict["image_threshold"] == np.nextafter(loose["image_threshold"], np.inf)
    assert "32x32 development slice" in strict["image_score"]
