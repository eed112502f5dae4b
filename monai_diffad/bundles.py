# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Helpers that bundle configs call: locating the bundle folder and the shipped resources, listing input images."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.utils import look_up_option

from monai_diffad.networks import ddpm_network
from monai_diffad.noise import NoiseType

__all__ = [
    "bundle_root",
    "bundle_path",
    "resource_path",
    "RESOURCES",
    "bundle_config",
    "brain_mask_beside",
    "image_datalist",
    "shared_ddpm_checkpoint",
    "IMAGE_SUFFIXES",
    "BRAIN_MASK_SUFFIX",
]

logger = logging.getLogger(__name__)

#: file types the ITK and NIfTI readers take; DICOM series are given as folders of ``.dcm`` files.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
#: datalist keys that hold file paths (made absolute, checked to exist)
_PATH_KEYS = ("image", "label", "brain_mask")
#: a file ``<name>_brain_mask<suffix>`` beside an image is that image's brain mask
BRAIN_MASK_SUFFIX = "_brain_mask"
#: the folders that ship beside the package: in a source checkout at its root, in an installed wheel as package data
#: under ``monai_diffad/_resources/`` (setup.cfg), side by side in both, since the bundle configs find the demo data
#: and the shared DDPM weights relative to the folder that holds ``bundles/``
RESOURCES = ("bundles", "demo_data", "monailabel_app")
_CHECKOUT = Path(__file__).resolve().parents[1]
_INSTALLED = Path(__file__).resolve().parent / "_resources"


def bundle_root(name: str) -> str:
    """Absolute path of ``bundles/<name>`` so a bundle runs from the repository root or from its own folder.

    Looked up in order: ``$MONAI_DIFFAD_BUNDLES/<name>``, ``./bundles/<name>``, ``.`` when it is that bundle, the
    source checkout that holds this package (editable installs), and the copy installed with the package (wheels).

    Raises:
        FileNotFoundError: when no candidate holds the bundle's ``metadata.json``.
    """
    candidates = []
    if os.environ.get("MONAI_DIFFAD_BUNDLES"):
        candidates.append(Path(os.environ["MONAI_DIFFAD_BUNDLES"]) / name)
    candidates += [Path.cwd() / "bundles" / name, Path.cwd(), _CHECKOUT / "bundles" / name, _INSTALLED / "bundles" / name]
    for path in candidates:
        if (path / "metadata.json").is_file() and path.name == name:
            return str(path.resolve())
    raise FileNotFoundError(
        f"Bundle '{name}' not found (looked in {[str(c) for c in candidates]}); run from the repository root or set "
        "MONAI_DIFFAD_BUNDLES to the folder holding the bundles, or pass --bundle_root."
    )


def bundle_path(name: str, file: str | None = None) -> str:
    """Absolute path of bundle ``name`` (found as by :func:`bundle_root`), or of ``file`` inside it.

    Works from a checkout and from an installed wheel alike: ``bundle_path("thor", "inference.json")`` is the config
    to give ``python -m monai.bundle run --config_file``.

    Raises:
        FileNotFoundError: no such bundle, or the bundle has no ``file``.
    """
    root = bundle_root(name)
    if file is None:
        return root
    path = os.path.join(root, file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Bundle '{name}' has no {file} (looked for {path}).")
    return path


def resource_path(name: str) -> str:
    """Absolute path of a folder shipped with the package: ``"bundles"``, ``"demo_data"`` or ``"monailabel_app"``.

    The source checkout's folder when the package runs from one (editable installs), otherwise the copy installed
    with the package.

    Raises:
        ValueError: ``name`` is not one of :data:`RESOURCES`.
        FileNotFoundError: neither place holds it (an installation without its package data).
    """
    if name not in RESOURCES:
        raise ValueError(f"Unknown resource '{name}'; the package ships {', '.join(RESOURCES)}.")
    for base in (_CHECKOUT, _INSTALLED):
        # the checkout's root is only taken for one: site-packages may hold unrelated 'bundles' folders
        if (base / name).is_dir() and (base / "bundles" / "meta_schema.json").is_file():
            return str(base / name)
    raise FileNotFoundError(
        f"'{name}' is neither in the source checkout ({_CHECKOUT}) nor installed with the package ({_INSTALLED}); "
        "reinstall monai-diffad from its wheel or run from a checkout."
    )


def bundle_config(
    name: str, config_file: str = "inference.json", overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """A parser of ``bundles/<name>/<config_file>`` with ``overrides`` applied, as ``monai.bundle run`` would build it.

    Code that needs a piece of a bundle (its ``preprocessing``, ``network``, ``inferer``) takes it from here, so the
    bundle stays the one definition of what a method does with an image.

    Args:
        name: bundle name (located by :func:`bundle_root`, unless ``overrides`` gives ``bundle_root``).
        config_file: the config inside the bundle folder.
        overrides: ``{key: value}`` set before parsing (``"a#b"`` paths allowed), e.g. ``{"image_size": 128}``.

    Raises:
        FileNotFoundError: the bundle or its config does not exist.
    """
    root = (overrides or {}).get("bundle_root") or bundle_root(name)
    path = os.path.join(root, config_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Bundle '{name}' has no {config_file} (looked for {path}).")
    parser = ConfigParser()
    parser.read_config(path)
    parser["bundle_root"] = root
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _is_dicom_series(path: str) -> bool:
    return os.path.isdir(path) and any(f.lower().endswith(".dcm") for f in os.listdir(path))


def _weights_file(models: str, stem: str) -> str:
    """``<stem>.pt``, or the float file rebuilt from ``<stem>_int8.pt`` where only the int8 copy ships."""
    plain = os.path.join(models, f"{stem}.pt")
    int8 = os.path.join(models, f"{stem}_int8.pt")
    if os.path.isfile(plain) or not os.path.isfile(int8):
        return plain
    # imported here: the package imports this module, and `python -m monai_diffad.quantization` must find its
    # module not yet loaded
    from monai_diffad.quantization import materialize_int8

    return materialize_int8(int8)


def shared_ddpm_checkpoint(repo_root: str, noise_type: str = "gaussian", network: str = "demo") -> str:
    """The shared DDPM weights for a noise type and network, from ``bundles/ddpm/models/``.

    - ``network="demo"`` (shipped, 64x64): ``model.pt`` (Gaussian) or ``model_simplex.pt``.
    - ``network="demo128"`` (the demo network at 128x128, trained with ``bundles/ddpm/train_128.json``):
      ``model_128.pt`` or ``model_128_simplex.pt``.
    - ``network="paper"`` (the reference network at 128x128, trained with ``bundles/ddpm/train_paper.json``):
      ``model_paper.pt`` or ``model_paper_simplex.pt``.

    Where only the shipped int8 copy ``<name>_int8.pt`` exists, the floating-point file rebuilt from it
    (:func:`monai_diffad.quantization.materialize_int8`) is returned.

    A DDPM restores from the noise it was trained on, so AnoDDPM and THOR-Simplex use the Simplex-trained weights.
    Where they do not exist, the Gaussian weights of the same network are returned with a warning (the methods then
    run off their training distribution and detect worse).

    Args:
        repo_root: the folder that holds ``bundles/``.
        noise_type: ``"gaussian"`` or ``"simplex"``.
        network: a key of :data:`monai_diffad.networks.DDPM_NETWORKS` (``"demo"``, ``"demo128"``, ``"paper"``).

    Raises:
        ValueError: an unknown noise type or network.
    """
    stem = ddpm_network(network).weights_stem
    models = os.path.join(repo_root, "bundles", "ddpm", "models")
    gaussian = _weights_file(models, stem)
    if look_up_option(noise_type, NoiseType) == NoiseType.GAUSSIAN:
        return gaussian
    simplex = _weights_file(models, f"{stem}_simplex")
    if os.path.isfile(simplex):
        return simplex
    logger.warning("No Simplex-trained DDPM at %s: using the Gaussian-trained weights %s.", simplex, gaussian)
    return gaussian


def image_datalist(dataset_dir: str, datalist: str | None = None, split: str = "test") -> list[dict[str, str]]:
    """Items ``{"image": path}`` to run inference on.

    Args:
        dataset_dir: folder with images (NIfTI, NRRD, MHA/MHD or DICOM-series sub-folders), or with a decathlon-style
            ``datalist.json``.
        datalist: explicit datalist JSON; default ``<dataset_dir>/datalist.json`` when it exists.
        split: the datalist list to use.

    Returns:
        Items in a stable order; datalist entries keep their other keys (label, brain_mask, ...), with paths made
        absolute. In a folder, ``<name>_brain_mask<suffix>`` files are not images but the ``brain_mask`` of
        ``<name><suffix>``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no image, or the datalist lists a file that does not
            exist.
        ValueError: the datalist has no ``split`` list, or an item without ``image``.
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir '{dataset_dir}' does not exist.")
    datalist = datalist or os.path.join(dataset_dir, "datalist.json")
    if os.path.isfile(datalist):
        with open(datalist) as f:
            content = json.load(f)
        if split not in content:
            raise ValueError(f"Datalist '{datalist}' has no '{split}' list (has {sorted(content)}).")
        base = os.path.dirname(os.path.abspath(datalist))
        items = [
            {k: (os.path.join(base, v) if isinstance(v, str) and not os.path.isabs(v) and k in _PATH_KEYS else v)
             for k, v in item.items()}
            for item in content[split]
        ]
        for item in items:
            if "image" not in item:
                raise ValueError(f"Datalist '{datalist}': an item of '{split}' has no 'image' key: {item}.")
            for key in _PATH_KEYS:
                if key in item and not os.path.exists(item[key]):
                    raise FileNotFoundError(f"Datalist '{datalist}' lists {key} '{item[key]}', which does not exist.")
        return items
    paths = sorted(
        p
        for p in glob.glob(os.path.join(dataset_dir, "*"))
        if (os.path.isfile(p) and p.lower().endswith(IMAGE_SUFFIXES)) or _is_dicom_series(p)
    )
    images = [p for p in paths if not _split_suffix(p)[0].endswith(BRAIN_MASK_SUFFIX)]
    if not images:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)} or DICOM folders) found in '{dataset_dir}'.")
    items = []
    for path in images:
        mask = brain_mask_beside(path)
        items.append({"image": path, "brain_mask": mask} if mask else {"image": path})
    return items


def brain_mask_beside(image_path: str) -> str | None:
    """``<name>_brain_mask<ext>`` beside ``<name><ext>`` (a file or a DICOM folder) when it exists, else ``None``.

    A path that is itself such a mask has none.
    """
    stem, suffix = _split_suffix(image_path)
    if stem.endswith(BRAIN_MASK_SUFFIX):
        return None
    candidate = stem + BRAIN_MASK_SUFFIX + suffix
    return candidate if os.path.exists(candidate) else None


def _split_suffix(path: str) -> tuple[str, str]:
    """``("/a/b", ".nii.gz")`` for ``/a/b.nii.gz``; DICOM folders have no suffix."""
    for suffix in IMAGE_SUFFIXES:
        if path.lower().endswith(suffix):
            return path[: -len(suffix)], path[-len(suffix) :]
    return path, ""
