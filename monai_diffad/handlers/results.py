# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Writes per-image scores (CSV + JSON) and PNG overlays from an evaluator's post-processed outputs."""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any

import torch
from monai.engines import Evaluator
from monai.utils import min_version, optional_import

from monai_diffad.maps.scoring import top_fraction_mean
from monai_diffad.transforms.io import atomic_path
from monai_diffad.visualize import save_overlay_png

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["AnomalyResultsWriter"]

logger = logging.getLogger(__name__)


def _source_name(item: dict[str, Any], image_key: str) -> str:
    img = item.get(image_key)
    meta = getattr(img, "meta", {}) if img is not None else {}
    source = meta.get("filename_or_obj", "image")
    source = source[0] if isinstance(source, (list, tuple)) else source
    base = os.path.basename(str(source).rstrip("/"))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


class AnomalyResultsWriter:
    """After each iteration, score every output item and draw its overlay; at the end, write the score tables.

    Files in ``output_dir``: ``<name>_overlay.png`` per image, ``scores.csv`` and ``scores.json`` (image-level score =
    mean of the top ``top_fraction`` of the map, the threshold used and the fraction of voxels above it), each written
    atomically (temporary file + ``os.replace``): complete or absent.

    Args:
        output_dir: destination folder.
        threshold: the label threshold, recorded with each score.
        map_key, healthy_key, label_key, image_key: keys of the post-processed item dict.
        top_fraction: share of the highest map values averaged into the score.
        png: draw overlays.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float,
        map_key: str = "pred_anomaly_map",
        healthy_key: str = "pred_pseudo_healthy",
        label_key: str = "anomaly_label",
        image_key: str = "image",
        top_fraction: float = 0.01,
        png: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.threshold = float(threshold)
        self.keys = {"map": map_key, "healthy": healthy_key, "label": label_key, "image": image_key}
        self.top_fraction = top_fraction
        self.png = png
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Evaluator) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Evaluator) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            amap = torch.as_tensor(item[self.keys["map"]]).float()
            name = _source_name(item, self.keys["image"])
            score = float(top_fraction_mean(amap[None], self.top_fraction)[0])
            row = {
                "image": name,
                "score": round(score, 6),
                "threshold": self.threshold,
                "fraction_above_threshold": round(float((amap >= self.threshold).float().mean()), 6),
                "max": round(float(amap.max()), 6),
            }
            if self.png:
                row["overlay"] = save_overlay_png(
                    os.path.join(self.output_dir, f"{name}_overlay.png"),
                    item[self.keys["image"]],
                    item[self.keys["healthy"]],
                    amap,
                    item.get(self.keys["label"]),
                    title=f"{name}: score {score:.3f}, threshold {self.threshold:.3f}",
                )
            self.rows.append(row)

    def completed(self, engine: Evaluator) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        # each table appears complete or not at all, even if the run is interrupted while writing
        with atomic_path(os.path.join(self.output_dir, "scores.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        with atomic_path(os.path.join(self.output_dir, "scores.json")) as tmp, open(tmp, "w") as f:
            json.dump(self.rows, f, indent=2)
        message = f"{len(self.rows)} image(s) processed; results written to {os.path.abspath(self.output_dir)}"
        logger.info(message)
        if not (logger.isEnabledFor(logging.INFO) and logger.hasHandlers()):
            print(message)  # logging is not set up (e.g. the Python API): still tell the user where results are
