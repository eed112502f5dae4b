# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""A bundle's inference pre- and post-processing (the geometry contract), for code outside ``monai.bundle run``.

The contract itself is written declaratively in every bundle's ``inference.json`` (keys ``preprocessing`` and
``postprocessing``; see ``docs/geometry.md``): load → channel first → RAS → in-plane resampling to ``pixel_size_mm``
→ brain mask → masked percentile normalisation → ``field_of_view_mm`` square around the brain centroid → resize to
``image_size``; afterwards every output is inverted onto the input's grid, restricted to the brain and labelled.
Training, calibration and the MONAI Label app take it from the bundle through :func:`inference_transforms`, so
there is one definition of how an image reaches a network.
"""

from __future__ import annotations

from typing import Any

from monai.transforms import Compose

from monai_diffad.bundles import bundle_config

__all__ = ["inference_transforms", "OUTPUT_KEYS"]

#: keys of the post-processed items: ``pred_<field>`` for each stacked inferer output, and the label.
OUTPUT_KEYS = {"anomaly_map": "pred_anomaly_map", "pseudo_healthy": "pred_pseudo_healthy", "label": "anomaly_label"}


def inference_transforms(bundle: str = "thor", **overrides: Any) -> tuple[Compose, Compose]:
    """The bundle's ``preprocessing`` and ``postprocessing``, parsed together so the latter inverts the former.

    Args:
        bundle: bundle name (see :func:`monai_diffad.bundles.bundle_root`).
        overrides: bundle keys to set first, e.g. ``image_size=128``, ``output_dir=None`` or ``save_outputs=False``
            (no files written), ``threshold=0.3``.

    Returns:
        ``(preprocessing, postprocessing)``: the first maps ``{"image": path[, "brain_mask": path]}`` to
        ``(1, image_size, image_size[, D])`` float32 MetaTensors in [0, 1] (image and brain mask); the second takes
        an item with the inferer's stacked ``"pred"`` added and returns ``pred_<output>`` maps, the brain mask and
        the ``anomaly_label`` on the input's grid. Unusable inputs raise ``ValueError`` naming the file (wrapped in
        MONAI's ``RuntimeError`` when a ``Compose`` runs them).
    """
    parser = bundle_config(bundle, overrides=overrides)
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
