# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Packaging: the wheel carries the bundles, demo data and MONAI Label app, and works without the checkout.

The slow test builds the wheel from the files a clone holds, installs it into an empty folder (``pip install
--target``, no dependencies: they come from the test's own environment, which also holds this checkout as an
editable install, so the test checks that the installed copy is the one imported) and runs, from an empty working
folder, ``monai-diffad detect`` on the demo volume and the THOR bundle from its installed location.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from setuptools import find_packages

from monai_diffad import cli
from monai_diffad.bundles import RESOURCES, bundle_path, resource_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOLUME = os.path.join("demo_data", "volumes", "colin27_stack_image.nii.gz")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def test_every_subpackage_is_packaged():
    """setup.cfg lists its packages by hand (the resource folders are mapped in): a new subpackage must be added."""
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = set(find_packages(ROOT, include=["monai_diffad", "monai_diffad.*"]))
    assert found <= listed, f"add to [options] packages in setup.cfg: {sorted(found - listed)}"
    assert {f"monai_diffad._resources.{name}" for name in RESOURCES} <= listed


def test_runtime_requirements_are_explained():
    """Each runtime requirement has its reason in the comment line above it; test-only packages are in 'dev'."""
    text = open(os.path.join(ROOT, "setup.cfg")).read()
    block = text.split("install_requires =\n", 1)[1].split("\n[", 1)[0]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    requirements = [i for i, line in enumerate(lines) if not line.startswith("#")]
    assert requirements and all(i > 0 and lines[i - 1].startswith("#") for i in requirements), lines
    names = " ".join(lines[i] for i in requirements)
    assert not any(name in names for name in ("scikit-learn", "opensimplex", "pytest", "hypothesis", "jsonschema"))
    extras = _setup_cfg()["options.extras_require"]
    assert set(extras) >= {"label", "data", "dev"}
    assert "scikit-learn" in extras["dev"] and "opensimplex" in extras["dev"]


def test_resources_found_from_the_checkout():
    for name in RESOURCES:
        assert resource_path(name) == os.path.join(ROOT, name)
    assert bundle_path("thor", "inference.json").endswith(os.path.join("bundles", "thor", "inference.json"))
    with pytest.raises(FileNotFoundError, match="has no nothing.json"):
        bundle_path("thor", "nothing.json")
    with pytest.raises(ValueError, match="ships bundles, demo_data, monailabel_app"):
        resource_path("weights")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "--method", "nosuch", "x.nii.gz"], "Unknown method 'nosuch'"),
        (["detect", "missing_scan.nii.gz"], "input 'missing_scan.nii.gz' does not exist"),
        (["detect", "--method", "disyre", "--step-stride", "10", DEMO_VOLUME], "has no 'step_stride' setting"),
        (["detect", "--checkpoint", "none.pt", DEMO_VOLUME], "--checkpoint 'none.pt' is not a file"),
        (["detect", "--set", "noise_levle=3", DEMO_VOLUME], "has no key 'noise_levle'"),
        (["detect", "--set", "noise_level", DEMO_VOLUME], "must look like KEY=VALUE"),
        (["detect", "README.md"], "is not an image file"),
        (["train", "--method", "thor", "--output-dir", "x"], "trainable: ddpm, disyre"),
        (["train", "--dataset-dir", "no_such_dir", "--output-dir", "x"], "is not a folder"),
        (["label", "--studies", "no_such_dir"], "is not a folder"),
        (["label", "--studies", "demo_data", "--models", "thor,nosuch"], "unknown method(s) ['nosuch']"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, monkeypatch):
    """Bad input: exit status 2 and one line naming the problem, no traceback."""
    monkeypatch.chdir(ROOT)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_wrapped_commands_report_their_errors(capsys, monkeypatch):
    """evaluate / calibrate / data are the modules' own command lines: argparse's usage and a last line naming the
    problem, exit status 2."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["calibrate", "--bundle", "thor", "--dataset_dir", "no_such_dir"])
    assert exit_.value.code == 2
    assert "dataset_dir 'no_such_dir' does not exist" in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("detect", "train", "evaluate", "calibrate", "data", "label"):
        assert command in text
    for command, options in {
        "detect": ("--method", "--device", "--step-stride", "--checkpoint", "--threshold", "--out", "disyre"),
        "train": ("--method", "--dataset-dir", "--datalist", "--output-dir", "--max-iterations", "--device"),
        "label": ("--studies", "--models", "--port", "--conf"),
        "evaluate": ("--methods", "--data"),
        "calibrate": ("--bundle", "--fpr"),
        "data": ("build",),
    }.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert all(option in text for option in options), (command, text)


def test_label_command(tmp_path, capsys, monkeypatch):
    """The server is started with the packaged app, the studies folder and the chosen models."""
    monkeypatch.setattr(cli, "_monailabel_executable", lambda: "monailabel")
    assert cli.main(["label", "--studies", str(tmp_path), "--models", "thor,ddpm", "--conf", "device", "cpu",
                     "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("monailabel start_server --app " + resource_path("monailabel_app"))
    assert f"--studies {tmp_path}" in line and "--conf models thor,ddpm --conf device cpu" in line


def _build_wheel(tmp_path) -> str:
    """The wheel built from what a clone holds (tracked and new, not ignored, files), outside the checkout."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True)
    (wheel,) = (tmp_path / "dist").glob("monai_diffad-*.whl")
    return str(wheel)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_and_detects_without_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("bundles/ddpm/models/model.pt", "bundles/ddpm/models/model_simplex.pt",
                 "bundles/disyre/models/model.pt", "bundles/thor/inference.json", "bundles/thor/data_license.txt",
                 "demo_data/datalist.json", "demo_data/volumes/colin27_stack_image.nii.gz", "monailabel_app/main.py",
                 "monailabel_app/lib/infers/anomaly.py"):
        assert f"monai_diffad/_resources/{part}" in names, part
    assert not [n for n in names if "/logs/" in n or n.endswith(".pyc")]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel],
                   check=True)
    work = tmp_path / "work"  # an empty folder: no bundles/ or demo_data/ to find there
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MONAI_DIFFAD_BUNDLES"}
    env["PYTHONPATH"] = str(site)

    def python(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    located = json.loads(python("-c", "import json, monai_diffad, monai_diffad.bundles as b; print(json.dumps("
                                "[monai_diffad.__file__, b.bundle_path('thor'), b.resource_path('demo_data')]))"))
    installed = str(site / "monai_diffad")
    assert all(path.startswith(installed) for path in located), located
    volume = os.path.join(located[2], "volumes", "colin27_stack_image.nii.gz")

    # the console script pip wrote, as a user would call it
    script = site / "bin" / "monai-diffad"
    done = subprocess.run([str(script), "detect", "--method", "thor", volume, "--out", "out/", "--step-stride", "50",
                           "--no-progress"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for suffix in cli.OUTPUT_SUFFIXES:
        assert (work / "out" / f"colin27_stack_image{suffix}").is_file(), suffix
    assert "colin27_stack_image" in (work / "out" / "scores.csv").read_text()

    # the bundle itself, run from where it was installed, on the demo data it finds beside it
    python("-m", "monai.bundle", "run", "--config_file", os.path.join(located[1], "inference.json"),
           "--output_dir", "bundle_out", "--step_stride", "50")
    written = sorted(os.listdir(work / "bundle_out"))
    assert len([n for n in written if n.endswith("_anomaly_map.nii.gz")]) == 4 and "scores.json" in written
