# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Triage: score every study with a fast method in the background, and offer the most suspicious one next.

- :class:`AnomalyScore` (scoring method ``anomaly_score``) runs one anomaly task (DISYRE by default, or a DDPM-based
  method with a strided schedule) over every study of the datastore and stores, per study, the image-level score,
  the per-slice maxima and ``pred_label`` in the study's info (``info["anomaly_score"]``). MONAI Label runs scoring
  methods in a subprocess of their own (``/scoring/<method>``, at start-up and after each *Next Sample*), so
  inference requests are never queued behind it. A study already scored with the same *version* (method, SHA-256 of
  the weights, calibrated threshold and schedule stride) is skipped, so a restart costs nothing but the check.
- :class:`MostAnomalous` (strategy ``most_anomalous``) returns the unlabelled study with the highest score of the
  current version (studies not scored yet come last, in datastore order).
- :class:`TriageDatastore` makes the two processes' writes to ``datastore_v2.json`` safe: MONAI Label's
  ``LocalDatastore`` writes its whole in-memory copy, so without it the server would overwrite the scores the
  scoring process stored (and the scoring process the labels saved meanwhile).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from lib.infers.anomaly import AnomalyInferTask

__all__ = ["SCORE_KEY", "AnomalyScore", "MostAnomalous", "TriageDatastore", "is_brain_mask_study"]

logger = logging.getLogger(__name__)

#: image-info key of a study's triage result
SCORE_KEY = "anomaly_score"
#: suffix of the brain-mask files MONAI Label lists among the studies (``<name>_brain_mask<ext>``)
_MASK_SUFFIX = "_brain_mask"


def is_brain_mask_study(image_id: str, image_ids: set[str] | list[str]) -> bool:
    """Whether ``image_id`` is the brain mask of another study (its ``<name>_brain_mask`` file), not a scan."""
    return image_id.endswith(_MASK_SUFFIX) and image_id[: -len(_MASK_SUFFIX)] in image_ids


class TriageDatastore(LocalDatastore):
    """``LocalDatastore`` whose writes keep the triage scores another process stored.

    Every write of ``datastore_v2.json`` happens under the datastore's file lock; this class merges the
    :data:`SCORE_KEY` entries found on disk into memory first (the newer entry wins), and :meth:`store_score`
    reloads the whole file under the lock before it adds a score, so neither process writes back a stale copy.
    """

    def _disk_model(self) -> LocalDatastoreModel | None:
        """The datastore file as on disk (call with the lock held)."""
        if not os.path.exists(self._datastore_config_path):
            return None
        with open(self._datastore_config_path) as f:
            model = LocalDatastoreModel.model_validate_json(f.read())
        model.base_path = self._datastore_path
        return model

    def _merge_scores_from_disk(self) -> None:
        disk = self._disk_model()
        if disk is None:
            return
        for image_id, obj in self._datastore.objects.items():
            stored = disk.objects.get(image_id)
            theirs = stored.image.info.get(SCORE_KEY) if stored else None
            ours = obj.image.info.get(SCORE_KEY)
            if theirs and (not ours or theirs.get("ts", 0) > ours.get("ts", 0)):
                obj.image.info[SCORE_KEY] = theirs

    def _update_datastore_file(self, lock: bool = True) -> None:
        if lock:
            with FileLock(self._lock_file):
                self._merge_scores_from_disk()
                super()._update_datastore_file(lock=False)
        else:  # the caller holds the lock (MONAI Label's add_image, save_label)
            self._merge_scores_from_disk()
            super()._update_datastore_file(lock=False)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self._init_from_datastore_file()  # reloads only when the file changed: scores of the scoring process
        return super().get_image_info(image_id)

    def json(self) -> dict[str, Any]:
        self._init_from_datastore_file()  # /datastore/ shows the scores the scoring process stored
        return super().json()

    def store_score(self, image_id: str, entry: dict[str, Any]) -> None:
        """Set ``info[SCORE_KEY]`` of ``image_id`` on the file's current content (labels saved meanwhile kept)."""
        with FileLock(self._lock_file):
            disk = self._disk_model()
            if disk is not None:
                self._datastore = disk
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                logger.warning(f"anomaly_score: {image_id} left the datastore; score not stored.")
                return
            obj.image.info[SCORE_KEY] = entry
            super()._update_datastore_file(lock=False)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class AnomalyScore(ScoringMethod):
    """Scoring method ``anomaly_score``: a fast anomaly method over every study, results in the studies' info.

    Args:
        task: the anomaly task that scores (built from the triage method's bundle, with its schedule stride).
        method: the triage method's name.
        step_stride: the schedule stride it runs with (``None`` for a method without a reverse schedule).
        seed: seed of the method's noise (fixed, so a score does not change between runs).
    """

    def __init__(self, task: AnomalyInferTask, method: str, step_stride: int | None, seed: int = 0) -> None:
        stride = f", every {step_stride}th step" if step_stride and step_stride > 1 else ""
        super().__init__(
            f"Anomaly score of every study with {method}{stride} (image score, per-slice maxima, pred_label), "
            "stored in the study's info for the most_anomalous strategy."
        )
        self.task = task
        self.method = method
        self.step_stride = step_stride
        self.seed = seed

    def version(self) -> dict[str, Any]:
        """What a stored score depends on: a study scored with another version is scored again."""
        return {
            "method": self.method,
            "checkpoint_sha256": _sha256(self.task.get_path()),
            "calibration_threshold": self.task.calibration_threshold,
            "step_stride": self.step_stride,
            "seed": self.seed,
        }

    def info(self) -> dict[str, Any]:
        return {**super().info(), "method": self.method, "step_stride": self.step_stride}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Score every study not yet scored with this version; returns ``{"scored", "skipped", "failed"}`` ids.

        One study that cannot be processed (corrupt, empty) is logged and left unscored; the others go on.
        """
        if not self.task.is_valid():
            logger.warning(f"anomaly_score: no weights at {self.task.path}; nothing scored.")
            return {"scored": [], "skipped": [], "failed": []}
        version = self.version()
        ids = datastore.list_images()
        done: dict[str, list[str]] = {"scored": [], "skipped": [], "failed": []}
        for image_id in ids:
            if is_brain_mask_study(image_id, ids):
                continue
            if datastore.get_image_info(image_id).get(SCORE_KEY, {}).get("version") == version:
                done["skipped"].append(image_id)
                continue
            start = time.perf_counter()
            try:
                entry = self._score(datastore.get_image_uri(image_id), request.get("device", "cuda"))
            except Exception as e:  # one bad study must not stop the triage of the others
                logger.warning(f"anomaly_score: {image_id} not scored: {e}")
                done["failed"].append(image_id)
                continue
            entry.update(version=version, ts=time.time(), seconds=round(time.perf_counter() - start, 3))
            if isinstance(datastore, TriageDatastore):
                datastore.store_score(image_id, entry)
            else:
                datastore.update_image_info(image_id, {SCORE_KEY: entry})
            logger.info(
                f"anomaly_score: {image_id}: {entry['score_calibrated']:.3f} (pred_label {entry['pred_label']})"
            )
            done["scored"].append(image_id)
        logger.info(f"anomaly_score: {len(done['scored'])} scored, {len(done['skipped'])} already scored, "
                    f"{len(done['failed'])} failed")  # fmt: skip
        return done

    def _score(self, image_path: str, device: str) -> dict[str, Any]:
        """The task's result on one study, reduced to what triage keeps (no file is left behind)."""
        path, result = self.task({"image": image_path, "output": "map", "seed": self.seed, "device": device})
        if path and os.path.exists(path):
            os.remove(path)
        keys = ("score", "score_calibrated", "pred_label", "pred_label_rule", "flagged_brain_share", "slice_max")
        return {k: result[k] for k in keys}


class MostAnomalous(Strategy):
    """Strategy ``most_anomalous``: the unlabelled study with the highest current ``anomaly_score``.

    Args:
        scoring: the scoring method whose version counts (scores of another method or weights are ignored).
    """

    def __init__(self, scoring: AnomalyScore) -> None:
        super().__init__(
            "The unlabelled study with the highest anomaly score (run the anomaly_score scoring first; unscored "
            "studies come last)."
        )
        self.scoring = scoring

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        datastore.refresh()  # the scoring process stored its scores in the file; LocalDatastore reloads it if changed
        ids = datastore.list_images()
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        images = [i for i in images if not is_brain_mask_study(i, ids)]
        if not images:
            return None
        scores = {i: datastore.get_image_info(i).get(SCORE_KEY) for i in images}
        version = self.scoring.version()
        current = {i: s["score_calibrated"] for i, s in scores.items() if s and s.get("version") == version}
        ranked = sorted((i for i in images if i in current), key=lambda i: current[i], reverse=True)
        if not ranked:
            logger.info("most_anomalous: no study scored yet; the first unlabelled one is offered.")
            return {"id": images[0], "weight": 0.0}
        best = ranked[0]
        entry = scores[best]
        logger.info(f"most_anomalous: {best} (score {current[best]:.3f}; {len(ranked)} scored, unlabelled)")
        return {
            "id": best,
            "weight": current[best],
            "anomaly_score": current[best],
            "pred_label": entry.get("pred_label"),
            "slice_max": entry.get("slice_max"),
        }
