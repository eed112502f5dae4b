# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The ``monai-diffad`` command: detect, train, evaluate, calibrate, build the data sets, serve 3D Slicer.

Every subcommand is a thin layer over what the package already has, so the command and the documented Python and
bundle commands give the same results:

- ``detect`` and ``train`` run a bundle's ``inference.json`` / ``train.json`` with MONAI's ``ConfigWorkflow``, as
  ``python -m monai.bundle run --config_file <bundle>/<config>`` would with the same overrides;
- ``evaluate``, ``calibrate`` and ``data`` are ``python -m monai_diffad.evaluate``, ``python -m
  monai_diffad.calibration`` and ``python -m monai_diffad.data`` (their options are passed on unchanged);
- ``label`` starts ``monailabel start_server`` with the MONAI Label app shipped with the package.

Bad input (a missing file, an unknown method, an option the method does not have) ends the command with one line
naming the problem and exit status 2; ``monai-diffad --debug ...`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai_diffad.methods import MethodSpec

PROG = "monai-diffad"

#: subcommands that are an existing module's command line, passed their arguments unchanged: (module, one line)
WRAPPED: dict[str, tuple[str, str]] = {
    "evaluate": (
        "monai_diffad.evaluate.__main__",
        "benchmark methods on a development set (max-Dice, AUPRC, AUROC per lesion size, report with figures)",
    ),
    "calibrate": (
        "monai_diffad.calibration",
        "calibrate a method's label and image thresholds at a healthy false-positive rate and store them in its "
        "bundle",
    ),
    "data": (
        "monai_diffad.data.__main__",
        "build the training and benchmark sets from the brain templates that installable packages carry",
    ),
}

#: files every detection writes per image (besides scores.csv / scores.json for the run)
OUTPUT_SUFFIXES = ("_anomaly_map.nii.gz", "_anomaly_label.nii.gz", "_pseudo_healthy.nii.gz", "_overlay.png")


class UsageError(Exception):
    """Bad input from the user: reported as one line with exit status 2, without a traceback."""


def _methods() -> list[str]:
    from monai_diffad.methods import get_available_methods

    return get_available_methods()


def _checked_method(name: str) -> MethodSpec:
    """The registered method ``name`` (its :class:`~monai_diffad.methods.MethodSpec`)."""
    from monai_diffad.methods import method_spec

    try:
        return method_spec(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _checked_device(name: str | None) -> Any:
    """``torch.device(name)``, refusing a CUDA device on a machine without one (the run would fail later)."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device '{name}' is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    return device


def _existing_file(path: str, option: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{option} '{path}' is not a file.")
    return os.path.abspath(path)


def _set_overrides(items: Sequence[str], method: str, config: dict[str, Any], config_path: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as bundle overrides (values read as JSON when they are JSON), each checked to be a
    key of the bundle config (nested keys ``a#b``: their parent), so a typing error cannot pass unnoticed."""
    from monai_diffad.methods import parse_overrides

    for item in items:
        if "=" not in item or item.startswith("="):
            raise UsageError(f"--set '{item}' must look like KEY=VALUE, e.g. --set noise_level=200.")
    overrides = parse_overrides([f"{method}.{item}" for item in items], [method])[method]
    for key in overrides:
        if key.split("#")[0] not in config:
            raise UsageError(f"--set {key}: the bundle config {config_path} has no key '{key.split('#')[0]}'.")
    return overrides


def _detect_items(inputs: Sequence[str], split: str) -> list[dict[str, str]]:
    """Datalist items for the images given: files, DICOM-series folders, folders of images or of a datalist.json."""
    from monai_diffad.bundles import (
        IMAGE_SUFFIXES,
        _is_dicom_series,
        _split_suffix,
        brain_mask_beside,
        image_datalist,
    )

    items: list[dict[str, str]] = []
    for given in inputs:
        path = os.path.abspath(given)
        if not os.path.exists(path):
            raise UsageError(f"input '{given}' does not exist.")
        if os.path.isdir(path) and not _is_dicom_series(path):
            try:
                items += image_datalist(path, split=split)
            except (FileNotFoundError, ValueError) as err:
                raise UsageError(str(err)) from None
            continue
        if os.path.isfile(path) and not path.lower().endswith(IMAGE_SUFFIXES):
            raise UsageError(f"input '{given}' is not an image file ({', '.join(IMAGE_SUFFIXES)}) or DICOM folder.")
        mask = brain_mask_beside(path)
        items.append({"image": path, "brain_mask": mask} if mask else {"image": path})
    # the outputs are named after the input (<name>_anomaly_map.nii.gz): two inputs of one name would overwrite
    names = Counter(_split_suffix(os.path.basename(item["image"].rstrip(os.sep)))[0] for item in items)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise UsageError(f"several inputs are named {clashes}; their results would overwrite each other, run them "
                         "separately with different --out folders.")
    return items


def _run_workflow(config_path: str, workflow_type: str, overrides: dict[str, Any],
                  on_start: Callable[[Any], None] | None = None) -> None:
    """Run a bundle config as ``python -m monai.bundle run`` does (its metadata.json and logging.conf beside it).

    ``on_start`` receives the parsed workflow before it runs (e.g. to attach a progress bar to its engine).
    """
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_path, workflow_type=workflow_type, **overrides)
    workflow.initialize()
    if on_start is not None:
        on_start(workflow)
    workflow.run()
    workflow.finalize()


def _image_progress(total: int, label: str, enabled: bool) -> Callable[[Any], None]:
    """A hook for :func:`_run_workflow` that shows a bar over the images as the bundle's evaluator finishes them."""

    def attach(workflow: Any) -> None:
        from ignite.engine import Events
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{label}: images", unit="image", disable=not enabled)
        evaluator = workflow.parser.get_parsed_content("evaluator")

        def advance(engine: Any) -> None:
            batch = engine.state.batch
            bar.update(len(batch) if isinstance(batch, list) else 1)

        evaluator.add_event_handler(Events.ITERATION_COMPLETED, advance)
        evaluator.add_event_handler(Events.COMPLETED, lambda _: bar.close())

    return attach


def cmd_detect(args: argparse.Namespace) -> int:
    from monai.bundle import ConfigParser

    from monai_diffad.bundles import bundle_path

    spec = _checked_method(args.method)
    try:
        config_path = bundle_path(spec.bundle, "inference.json")
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    config = ConfigParser.load_config_file(config_path)
    items = _detect_items(args.inputs, args.split)
    out = os.path.abspath(args.out or os.path.join("outputs", args.method))
    overrides: dict[str, Any] = {
        **spec.overrides,
        "bundle_root": os.path.dirname(config_path),
        "datalist": items,
        "output_dir": out,
    }
    for option, key, value in (
        ("--step-stride", "step_stride", args.step_stride),
        ("--seed", "seed", args.seed),
        ("--threshold", spec.threshold_key, args.threshold),
    ):
        if value is None:
            continue
        if key not in config:
            raise UsageError(f"{option}: method '{args.method}' has no '{key}' setting (bundle {spec.bundle}).")
        overrides[key] = value
    if args.checkpoint:
        overrides["checkpoint"] = _existing_file(args.checkpoint, "--checkpoint")
    if args.device:
        overrides["device"] = _checked_device(args.device)
    if args.no_progress:
        overrides["inferer#progress"] = False
    overrides.update(_set_overrides(args.set, args.method, config, config_path))
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    _run_workflow(config_path, "infer", overrides, _image_progress(len(items), args.method, not args.no_progress))
    seconds = time.perf_counter() - start
    print(f"{args.method}: {len(items)} image(s) in {seconds:.1f} s; results in {out}")
    print(f"  per image: <name>{', <name>'.join(OUTPUT_SUFFIXES)}; scores: scores.csv, scores.json")
    return 0


def _trainable_bundles() -> list[str]:
    """Bundles of registered methods that have a ``train.json`` (the networks that can be trained)."""
    from monai_diffad.bundles import bundle_path
    from monai_diffad.methods import method_spec

    names = []
    for method in _methods():
        bundle = method_spec(method).bundle
        try:
            bundle_path(bundle, "train.json")
        except FileNotFoundError:
            continue
        if bundle not in names:
            names.append(bundle)
    return names


def cmd_train(args: argparse.Namespace) -> int:
    from monai.bundle import ConfigParser

    from monai_diffad.bundles import bundle_path

    trainable = _trainable_bundles()
    if args.method not in trainable:
        raise UsageError(f"--method '{args.method}' has no training config; trainable: {', '.join(trainable)}.")
    config_path = bundle_path(args.method, "train.json")
    config = ConfigParser.load_config_file(config_path)
    if args.dataset_dir and not os.path.isdir(args.dataset_dir):
        raise UsageError(f"--dataset-dir '{args.dataset_dir}' is not a folder.")
    # output_dir is always given, so a run never writes the weights shipped in the bundle (train.json writes them
    # only for its built-in default run)
    overrides: dict[str, Any] = {"bundle_root": os.path.dirname(config_path), "output_dir": os.path.abspath(args.output_dir)}
    if args.dataset_dir:
        overrides["dataset_dir"] = os.path.abspath(args.dataset_dir)
    if args.datalist:
        overrides["datalist"] = _existing_file(args.datalist, "--datalist")
    if args.max_iterations is not None:
        overrides["max_iterations"] = args.max_iterations
    if args.device:
        overrides["device"] = _checked_device(args.device)
    overrides.update(_set_overrides(args.set, args.method, config, config_path))
    os.makedirs(overrides["output_dir"], exist_ok=True)
    _run_workflow(config_path, "train", overrides)
    print(f"{args.method}: weights in {os.path.join(overrides['output_dir'], 'model.pt')} (detect with "
          f"--checkpoint); checkpoints and logs beside them")
    return 0


def _monailabel_executable() -> str:
    """The ``monailabel`` command of this Python environment (or on PATH)."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("monailabel", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if not found:
        raise UsageError("MONAI Label is not installed: pip install 'monai-diffad[label]'.")
    return found


def cmd_label(args: argparse.Namespace) -> int:
    from monai_diffad.bundles import resource_path

    if not os.path.isdir(args.studies):
        raise UsageError(f"--studies '{args.studies}' is not a folder (create it and put the scans there).")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m != "all" and m not in _methods()]
    if not models or unknown:
        raise UsageError(f"--models: unknown method(s) {unknown or [args.models]}; available: "
                         f"{', '.join(_methods())} or all.")
    command = [
        _monailabel_executable(), "start_server", "--app", resource_path("monailabel_app"),
        "--studies", os.path.abspath(args.studies), "--host", args.host, "--port", str(args.port),
        "--conf", "models", ",".join(models),
    ]  # fmt: skip
    for key, value in args.conf:
        command += ["--conf", key, value]
    if args.dry_run:
        print(subprocess.list2cmdline(command))
        return 0
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # Ctrl-C stops the server, which is how it is meant to end
        return 130


def _run_wrapped(name: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(WRAPPED[name][0])
    return int(module.main(list(argv)) or 0)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``monai-diffad`` command (its subcommands and their options)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Diffusion models as unsupervised anomaly detectors for brain MRI (THOR, AutoDDPM, DISYRE, "
        "DDPM, AnoDDPM). Each subcommand has its own --help.",
        epilog="Example: monai-diffad detect --method thor scan.nii.gz --out results/",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    methods = _methods()
    detect = sub.add_parser(
        "detect",
        help="anomaly maps, labels and pseudo-healthy images for scans",
        description="Run a method's bundle (inference.json) on scans: skull-stripped T1 brain MRI as NIfTI, NRRD, "
        "MHA/MHD or DICOM-series folders, 2D or 3D, any orientation and spacing. A file <name>_brain_mask<ext> "
        "beside <name><ext> is its brain mask. Writes per image, on the scan's own grid: <name>_anomaly_map.nii.gz "
        "(float in [0, 1]), <name>_anomaly_label.nii.gz (1 where map >= threshold), <name>_pseudo_healthy.nii.gz, "
        "<name>_overlay.png; and scores.csv / scores.json (image-level scores).",
        epilog="Examples: monai-diffad detect scan.nii.gz --out results/ ; monai-diffad detect --method autoddpm "
        "--device cuda /data/patients --out results/ ; monai-diffad detect --step-stride 10 --set noise_level=250 "
        "scan.nii.gz",
    )
    detect.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, DICOM-series folders, or folders of images (a folder holding a decathlon "
                        "datalist.json is read through it)")
    detect.add_argument("--method", default="thor", metavar="NAME",
                        help=f"detection method: {', '.join(methods)} (default: thor)")
    detect.add_argument("--out", metavar="DIR", help="output folder (default: outputs/<method>)")
    detect.add_argument("--device", metavar="DEVICE",
                        help="cpu, cuda or cuda:N (default: the first GPU when there is one, else the CPU)")
    detect.add_argument("--step-stride", type=_positive_int, metavar="S",
                        help="visit every S-th level of the reverse diffusion: about S times fewer network calls, "
                        "slightly lower accuracy (default: the bundle's, 1)")
    detect.add_argument("--checkpoint", metavar="FILE", help="network weights to use instead of the shipped ones "
                        "(e.g. model.pt from 'monai-diffad train')")
    detect.add_argument("--threshold", type=float, metavar="T",
                        help="label threshold on the anomaly map (default: the bundle's value, calibrated at 5%% "
                        "healthy false-positive rate; 'monai-diffad calibrate' measures one for your scans)")
    detect.add_argument("--seed", type=int, metavar="N", help="random seed (default: the bundle's, 0)")
    detect.add_argument("--split", default="test", metavar="NAME",
                        help="list of a folder's datalist.json to run (default: test)")
    detect.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other key of the bundle's inference.json, value as JSON when it is JSON, e.g. "
                        "--set noise_level=250 --set 'harmonization_steps=[200,100]' (repeatable)")
    detect.add_argument("--no-progress", action="store_true", help="no progress bars")
    detect.set_defaults(func=cmd_detect)

    train = sub.add_parser(
        "train",
        help="train a network on healthy scans (a bundle's train.json)",
        description="Train the network of a bundle on healthy, skull-stripped T1 scans with its train.json: the "
        "shared DDPM (--method ddpm; used by thor, thor_simplex, autoddpm, ddpm, anoddpm) or DISYRE's network. "
        "Every scan goes through the bundle's geometry contract. Writes <output-dir>/model.pt (the weights; give "
        "them to 'detect --checkpoint'), checkpoints/ (running the same command again resumes) and logs/. "
        "Without --dataset-dir or --datalist, trains on the built-in template set (needs "
        "'pip install monai-diffad[data]'; built in ./data_cache on first use).",
        epilog="Example: monai-diffad train --method ddpm --dataset-dir /data/healthy --output-dir runs/ddpm "
        "--max-iterations 20000",
    )
    train.add_argument("--method", default="ddpm", metavar="BUNDLE",
                       help="ddpm (the shared DDPM) or disyre (default: ddpm)")
    train.add_argument("--dataset-dir", metavar="DIR",
                       help="folder of healthy scans (NIfTI, NRRD, MHA/MHD, DICOM-series sub-folders; a "
                       "<name>_brain_mask file beside a scan is its mask) or holding a decathlon datalist.json")
    train.add_argument("--datalist", metavar="FILE",
                       help="decathlon JSON with a 'training' list (and optionally 'validation'), paths relative "
                       "to the file")
    train.add_argument("--output-dir", required=True, metavar="DIR", help="where weights, checkpoints and logs go")
    train.add_argument("--max-iterations", type=_positive_int, metavar="N",
                       help="stop after N iterations in all (resumed ones included)")
    train.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: the first GPU, else CPU)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other key of the bundle's train.json, e.g. --set noise_type=simplex --set "
                       "batch_size=32 (repeatable)")
    train.set_defaults(func=cmd_train)

    for name, (_, summary) in WRAPPED.items():
        # parsed by the wrapped module itself (main() hands over before this parser runs); listed for --help
        sub.add_parser(name, help=f"{summary} (options: monai-diffad {name} --help)", add_help=False)

    label = sub.add_parser(
        "label",
        help="start the MONAI Label server for 3D Slicer",
        description="Start MONAI Label with the app shipped with monai-diffad (needs 'pip install "
        "monai-diffad[label]'). In 3D Slicer's MONAI Label module, connect to http://HOST:PORT, fetch a study and "
        "run a model under Auto Segmentation: the suspicious regions arrive as the 'anomaly' segment.",
        epilog="Example: monai-diffad label --studies studies/ --models thor,autoddpm",
    )
    label.add_argument("--studies", required=True, metavar="DIR",
                       help="folder of scans to serve (NIfTI, NRRD, DICOM; <name>_brain_mask files beside them are "
                       "used as brain masks)")
    label.add_argument("--models", default="thor", metavar="NAMES",
                       help=f"comma-separated methods to serve: {', '.join(methods)} or all (default: thor)")
    label.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    label.add_argument("--port", type=_positive_int, default=8000, help="port (default: 8000)")
    label.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                       help="further app option, e.g. --conf device cuda (see the app's README); repeatable")
    label.add_argument("--dry-run", action="store_true", help="print the monailabel command instead of running it")
    label.set_defaults(func=cmd_label)
    return parser


def _innermost(err: BaseException) -> BaseException:
    """The original error under the wrappers MONAI and ignite put around it (transforms, engines)."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-diffad`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    command = argv[0] if argv else None
    try:
        if command in WRAPPED:
            return _run_wrapped(command, argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args))
    except UsageError as err:
        if debug:
            raise
        print(f"{PROG} {command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        # bad input found during a run (a corrupt header, a brain mask on another grid, a missing weights file)
        # arrives wrapped by MONAI's transforms or ignite's engine; report the original message, not the traceback
        cause = _innermost(err)
        if debug or not isinstance(cause, (ValueError, TypeError, OSError)):
            raise
        print(f"{PROG} {command}: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
