# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label app serving monai-diffad's anomaly detectors as pre-annotations (3D Slicer, OHIF, REST).

Start from the repository root::

    monailabel start_server --app monailabel_app --studies <folder of NIfTI/NRRD/DICOM> --conf models thor

``--conf models`` takes a comma-separated list of the registered methods (:mod:`monai_diffad.methods`: ``thor``
(default), ``thor_simplex``, ``autoddpm``, ``ddpm``, ``anoddpm``, ``disyre``) or ``all``. Further ``--conf`` options are described in ``lib/configs/base.py`` and the
README next to this file.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

try:
    import monai_diffad  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: the package sits next to this app folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    import monai_diffad  # noqa: F401

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.configs import task_configs
from lib.infers.params import InvalidInferRequest

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _names(value: str, what: str) -> list[str]:
    """Parse a comma-separated ``--conf`` list of method names (``all`` for every method).

    Raises:
        ValueError: an unknown name.
    """
    available = list(task_configs())
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if "all" in names:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--conf {what}: unknown method(s) {unknown}; available: {available} or 'all'.")
    return list(dict.fromkeys(names))


class AnomalyDetectionApp(MONAILabelApp):
    """One infer task per selected method; client errors are answered with 4xx codes instead of MONAI Label's 500.

    ``--conf bundles <names>`` is accepted as a synonym of ``--conf models`` for our bundles: MONAI Label's
    ``BundleInferTask`` cannot serve their layout (README, "Bundle mode"), while the app's own task for the same
    method is built from ``bundles/<name>/inference.json`` (preprocessing, network, weights, inferer, threshold).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = _names(conf.get("models", "thor"), "models")
        if conf.get("bundles"):
            bundles = _names(conf["bundles"], "bundles")
            logger.info(
                f"--conf bundles {bundles}: served by the app's own tasks, built from bundles/<name>/inference.json "
                "(MONAI Label's BundleInferTask needs a configs/ layout and a label output; see README)."
            )
            names = list(dict.fromkeys(names + bundles)) if "models" in conf else bundles
        local_studies = not studies.startswith(("http://", "https://"))
        self.task_configs = {}
        classes = task_configs()
        for name in names:
            config = classes[name]()
            config.init(
                name,
                os.path.join(app_dir, "model"),
                conf,
                None,
                repo_root=REPO_ROOT,
                map_dir=os.path.join(studies, "anomaly_maps") if local_studies else None,
            )
            self.task_configs[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-diffad anomaly detection",
            description="Unsupervised anomaly maps from diffusion models (THOR, AutoDDPM, DDPM, AnoDDPM, DISYRE)",
            version=monai_diffad.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, config in self.task_configs.items():
            task = config.infer()
            if task is not None:
                infers[name] = task
        logger.info(f"Anomaly models: {list(infers)}")
        return infers

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's inference with HTTP status codes a client can act on.

        Raises:
            HTTPException: 404 for an unknown model or image, 503 for a model whose weights are missing, 422 for
                invalid options or an image the model cannot process.
        """
        model = request.get("model")
        task = self._infers.get(model)
        if task is None:
            raise HTTPException(status_code=404, detail=f"Unknown model {model!r}; available: {list(self._infers)}.")
        if not task.is_valid():
            raise HTTPException(status_code=503, detail=f"Model {model!r} has no weights at {task.path}.")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            if not (datastore or self.datastore()).get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"Unknown image {image!r}.")
        try:
            return super().infer(request, datastore)
        except InvalidInferRequest as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
