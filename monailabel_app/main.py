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
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.configs import task_configs
from lib.infers.params import InvalidInferRequest
from lib.triage import AnomalyScore, MostAnomalous, TriageDatastore

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
#: the triage method by default: DISYRE, 4 network calls per batch of slices
DEFAULT_TRIAGE = "disyre"
#: schedule stride of a DDPM-based triage method (THOR: 351 -> 36 network calls per batch)
DEFAULT_TRIAGE_STRIDE = 10


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
        # saved maps go to the datastore's labels folder, one tag per model (LocalDatastore's "labels" default)
        self.map_dir = os.path.join(studies, "labels") if local_studies else None
        self.task_configs = {name: self._task_config(name, conf, app_dir) for name in names}
        self.triage = conf.get("triage", DEFAULT_TRIAGE).strip().lower()
        if self.triage not in ("", "none") and self.triage not in task_configs():
            raise ValueError(
                f"--conf triage: unknown method {self.triage!r}; available: {list(task_configs())} or none."
            )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-diffad anomaly detection",
            description="Unsupervised anomaly maps from diffusion models (THOR, AutoDDPM, DDPM, AnoDDPM, DISYRE)",
            version=monai_diffad.__version__,
        )

    def _task_config(self, name: str, conf: dict[str, str], app_dir: str, **bundle_overrides: Any) -> Any:
        cls = task_configs()[name]
        if bundle_overrides:
            cls = type(cls.__name__, (cls,), {"bundle_overrides": {**cls.bundle_overrides, **bundle_overrides}})
        config = cls()
        config.init(name, os.path.join(app_dir, "model"), conf, None, repo_root=REPO_ROOT, map_dir=self.map_dir)
        return config

    def init_datastore(self) -> Datastore:
        """MONAI Label's local datastore, made safe for the scoring process's writes (:class:`TriageDatastore`)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return TriageDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _triage_scoring(self) -> AnomalyScore | None:
        """The ``anomaly_score`` method of ``--conf triage`` (``none`` for no triage), built once."""
        if getattr(self, "_anomaly_score", None) is not None or self.triage in ("", "none"):
            return getattr(self, "_anomaly_score", None)
        config = self._task_config(self.triage, self.conf, self.app_dir)
        stride = None
        if config.bundle_method.raw("step_stride") is not None:  # DDPM-based: a strided schedule keeps it fast
            stride = int(self.conf.get("triage_step_stride", DEFAULT_TRIAGE_STRIDE))
            config = self._task_config(self.triage, self.conf, self.app_dir, step_stride=stride)
        task = config.infer()
        self._anomaly_score = None if task is None else AnomalyScore(task, self.triage, stride)
        return self._anomaly_score

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        scoring = self._triage_scoring()
        return {} if scoring is None else {"anomaly_score": scoring}

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        scoring = self._triage_scoring()
        if scoring is not None:
            # listed first: Slicer preselects the first strategy of /info/
            strategies = {"most_anomalous": MostAnomalous(scoring), **strategies}
        return strategies

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
            result = super().infer(request, datastore)
        except InvalidInferRequest as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        if (result.get("params") or {}).get("map_file"):
            # the map was written into a label tag folder: register it, so /datastore/label serves it
            (datastore or self.datastore()).refresh()
        return result
