# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The report folder: Markdown and CSV tables in the papers' layout, JSON, PR curves and example maps.

Table 1 follows THOR's Table 1 (methods grouped by noise, columns Average | Small | Medium | Large) for max-Dice,
AUPRC and AUROC, plus the reconstruction SSIM of lesion-free slices; Table 2 gives the operating point (best
threshold, lesion-free pixels flagged there), the label and image thresholds at a healthy false-positive rate,
image-level AUROC, reconstruction errors and run time.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeAlias

import monai
import numpy as np
import torch

import monai_diffad
from monai_diffad.metrics import SIZE_STRATA
from monai_diffad.metrics.healthy_fpr import CALIBRATION_FPR

if TYPE_CHECKING:
    from monai_diffad.evaluate.dataset import EvaluationSet
    from monai_diffad.evaluate.runner import MethodResult

__all__ = [
    "REPORT_FILES",
    "METRIC_COLUMNS",
    "THRESHOLD_SCOPE",
    "run_metadata",
    "run_provenance",
    "trivial_floor",
    "results_markdown",
    "write_report",
]

#: files :func:`write_report` writes
REPORT_FILES = ("results.md", "results.csv", "results.json", "pr_curves.png", "examples.png")
#: metric columns of ``results.csv`` (raw fractions), in order
METRIC_COLUMNS = tuple(
    [f"{m}_{s}" for m in ("dice", "auprc", "auroc") for s in ("all", "small", "medium", "large")]
    + ["threshold_all", "flagged_fraction", "calibrated_threshold", "image_auroc", "ssim", "mse", "mae", "seconds_per_image"]
    + [f"dice_{s}_at_global" for s in ("small", "medium", "large")]
    # last, so the columns of earlier reports keep their positions
    + ["image_threshold"]
)
#: how each max-Dice column picks its threshold (written to ``results.json`` as ``metadata.thresholds``)
THRESHOLD_SCOPE = {
    "dice_all": "global: the one threshold with the best Dice over all slices, chosen on the test labels",
    **{
        f"dice_{s}": f"per stratum: the best threshold for the {s}-lesion slices alone, chosen on their test labels"
        for s in ("small", "medium", "large")
    },
    **{
        f"dice_{s}_at_global": "global: the dice_all threshold, applied to this stratum"
        for s in ("small", "medium", "large")
    },
}
_STRATUM_HEADERS = {"all": "avg", "small": "small", "medium": "medium", "large": "large"}
_SYNTHETIC_NOTE = (
    "Synthetic benchmark (Colin27 slices with painted stroke- and tumour-like lesions, `docs/data.md` Recipe 2): its "
    "numbers are not comparable to the papers' ATLAS/BraTS tables."
)
_METRICS_NOTE = (
    "Pixel metrics pool the brain-mask pixels of all slices of a stratum; *avg* pools every slice, lesion-free ones "
    "included, so their false positives count. max-Dice: best Dice over thresholds 0.00...1.00 (map >= t). AUPRC: "
    "average precision. Thresholds: *avg* max-Dice uses one threshold for every slice; each stratum's max-Dice "
    "(small, medium, large) uses its own best threshold, chosen on that stratum's test labels, so it is an upper "
    "bound; Table 3 gives each stratum's Dice at the one *avg* threshold. *All brain (trivial)*: every brain pixel "
    "flagged, the floor a map must beat (its AUPRC is the lesion share, its AUROC 50). "
    "Strata by lesion pixel count at 128x128: small (3, 71], medium (71, 570], large (570, 10000]. "
    "SSIM/MSE/MAE: pseudo-healthy vs input on lesion-free slices. Image AUROC: image score, lesion vs lesion-free "
    "slices. Dice, AUPRC and AUROC in %; best value per column in bold."
)


def _git_commit() -> str:
    """HEAD of the checkout holding this package, with ``-dirty`` for uncommitted changes; ``unknown`` outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(monai_diffad.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def run_provenance() -> dict[str, Any]:
    """What ran, taken when a run starts (a checkout changed during a long run must not be recorded instead):
    commit (``-dirty`` with uncommitted changes), start date, the exact ``sys.argv``, interpreter and directory."""
    return {
        "git_commit": _git_commit(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "argv": list(sys.argv),
        "executable": sys.executable,
        "cwd": os.getcwd(),
    }


def trivial_floor(dataset: EvaluationSet, indices: Sequence[int]) -> dict[str, dict[str, float]]:
    """The scores of a map flagging every brain pixel, per reported stratum: max-Dice 2L / (L + B) and AUPRC L / B
    for L lesion and B brain pixels pooled over the stratum's slices (``nan`` without lesion pixels)."""
    index = np.asarray(indices, dtype=np.int64)
    classes = dataset.size_class[index]
    brain = dataset.brain_masks[index] > 0
    lesion = (dataset.labels[index] > 0) & brain
    floors = {}
    for name in ("all", "small", "medium", "large"):
        chosen = np.ones(len(index), bool) if name == "all" else classes == SIZE_STRATA.index(name)
        n_lesion, n_brain = float(lesion[chosen].sum()), float(brain[chosen].sum())
        positive = n_lesion > 0
        floors[name] = {
            "max_dice": 2 * n_lesion / (n_lesion + n_brain) if positive else float("nan"),
            "auprc": n_lesion / n_brain if positive else float("nan"),
            "auroc": 0.5 if positive else float("nan"),
        }
    return floors


def run_metadata(
    command: str,
    seed: int,
    device: torch.device,
    dataset: EvaluationSet,
    indices: Sequence[int],
    limit: int | None,
    bundles_dir: str,
    processes: int = 1,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a reader needs to reproduce the run: command, seed, versions, commit, date, machine and data.

    ``processes`` is the number of ``torch.distributed`` ranks that shared the items (``machine.processes``).
    ``provenance`` is :func:`run_provenance` taken when the run started (taken now when None); ``git_commit`` is the
    commit then, and ``git_commit_at_end`` is added when the checkout changed before the report was written.
    """
    provenance = run_provenance() if provenance is None else dict(provenance)
    classes = dataset.size_class[np.asarray(indices, dtype=np.int64)]
    machine = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "processes": int(processes),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    at_end = _git_commit()
    return {
        "command": command,
        "argv": provenance["argv"],
        "executable": provenance["executable"],
        "cwd": provenance["cwd"],
        "seed": int(seed),
        "limit": limit,
        "started": provenance["started"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": provenance["git_commit"],
        **({"git_commit_at_end": at_end} if at_end != provenance["git_commit"] else {}),
        "versions": {
            "monai_diffad": monai_diffad.__version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "machine": machine,
        "bundles_dir": bundles_dir,
        "bundles_dir_resolved": os.path.abspath(bundles_dir),
        "thresholds": THRESHOLD_SCOPE,
        "trivial_floor": trivial_floor(dataset, indices),
        "data": {
            "source": dataset.source,
            "items_used": len(indices),
            "items_in_set": len(dataset),
            "image_shape": list(dataset.spatial_shape),
            "items_per_stratum": {name: int((classes == c).sum()) for c, name in enumerate(SIZE_STRATA)},
        },
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    return f"{value * scale:.{digits}f}" if _is_number(value) else "n/a"


def _percent(value: float) -> str:
    return _fmt(value, 100.0, 2)


def _noise_label(noise: str, short: bool = False) -> str:
    if short:
        return {"gaussian": "G", "simplex": "S", "none": "-"}.get(noise, noise)
    return {"gaussian": "Gaussian", "simplex": "Simplex", "none": "none (synthetic corruption)"}.get(noise, noise)


#: a table column: header, cell text of a method, and the value whose highest is set in bold (None: no bold)
_Column: TypeAlias = "tuple[str, Callable[[MethodResult], str], Callable[[MethodResult], float] | None]"


def _markdown_table(results: Sequence[MethodResult], columns: Sequence[_Column]) -> list[str]:
    """Rows of a Markdown table; a column with a value getter has its highest value (of ok methods) in bold."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    best = []
    for _, _, value in columns:
        values = [value(r) for r in results] if value is not None else []
        numbers = [v for v in values if _is_number(v)]
        best.append(max(numbers) if len(numbers) > 1 else None)
    for r in results:
        cells = []
        for (_, text, value), top in zip(columns, best):
            cell = text(r)
            if top is not None and value is not None and _is_number(value(r)) and value(r) == top:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metric_column(header: str, key: str, fmt: Callable[[float], str], bold: bool = True) -> _Column:
    def value(r: MethodResult) -> float:
        return r.metrics.get(key, float("nan"))

    return header, (lambda r: fmt(value(r))), (value if bold else None)


def _constant_column(header: str, text: str) -> _Column:
    """A column with the same ``text`` in every row (a reference value), never in bold."""
    return header, (lambda r: text), None


def _display_path(path: str) -> str:
    """Relative to the working directory when inside it (shorter, and machine-independent in committed reports)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _settings_line(r: MethodResult) -> str:
    s = r.settings
    parts = [f"`{s.get('inferer', '?')}`", f"noise {s.get('noise', r.noise)}"]
    for key in ("noise_level", "harmonization_steps", "resample_level", "resample_passes", "step_size", "perceptual"):
        if key in s:
            parts.append(f"{key}={s[key]}")
    if "checkpoint" in s:
        parts.append(f"weights `{_display_path(s['checkpoint'])}` (sha256 {s['checkpoint_sha256'][:12]})")
    if s.get("overrides"):
        parts.append(f"overrides `{json.dumps(s['overrides'])}`")
    return f"- **{r.name}** ({r.label}): " + ", ".join(parts)


def results_markdown(results: Sequence[MethodResult], metadata: dict[str, Any]) -> str:
    """The ``results.md`` text."""
    ran = [r for r in results if r.status == "ok"]
    pixel: list[_Column] = [
        ("Noise", lambda r: _noise_label(r.noise), None),
        ("Method", lambda r: r.label, None),
    ]
    for metric, name in (("dice", "max-Dice"), ("auprc", "AUPRC"), ("auroc", "AUROC")):
        pixel += [_metric_column(f"{name} {_STRATUM_HEADERS[s]}", f"{metric}_{s}", _percent) for s in _STRATUM_HEADERS]
    pixel.append(_metric_column("recon SSIM", "ssim", lambda v: _fmt(v, digits=3)))
    operating: list[_Column] = [
        ("Method", lambda r: f"{r.label} ({_noise_label(r.noise)})", None),
        _metric_column("best threshold", "threshold_all", lambda v: _fmt(v), bold=False),
        _metric_column("lesion-free px flagged (%)", "flagged_fraction", _percent, bold=False),
        _metric_column(f"threshold at {CALIBRATION_FPR:.0%} healthy FPR", "calibrated_threshold", lambda v: _fmt(v, digits=3), False),
        _metric_column(
            f"image threshold at {CALIBRATION_FPR:.0%} healthy FPR", "image_threshold", lambda v: _fmt(v, digits=4),
            bold=False,
        ),
        _metric_column("image AUROC", "image_auroc", _percent),
        _metric_column("recon SSIM", "ssim", lambda v: _fmt(v, digits=3)),
        _metric_column("recon MSE", "mse", lambda v: _fmt(v, digits=4), bold=False),
        _metric_column("recon MAE", "mae", lambda v: _fmt(v, digits=4), bold=False),
        _metric_column("s / image", "seconds_per_image", lambda v: _fmt(v, digits=2), bold=False),
    ]
    floors = metadata.get("trivial_floor", {})
    global_columns: list[_Column] = [("Method", lambda r: f"{r.label} ({_noise_label(r.noise)})", None)]
    for s in ("small", "medium", "large"):
        floor = _percent(floors.get(s, {}).get("max_dice", float("nan")))
        global_columns += [
            _metric_column(f"{s}: global threshold", f"dice_{s}_at_global", _percent),
            _metric_column(f"{s}: own threshold", f"dice_{s}", _percent, bold=False),
            _constant_column(f"{s}: all brain", floor),
        ]
    data = metadata["data"]
    lines = ["# Anomaly detection results", "", _SYNTHETIC_NOTE, ""]
    lines += ["## Table 1: segmentation by lesion size", "", _METRICS_NOTE, ""]
    lines += _markdown_table(ran, pixel) + [_floor_row(metadata, len(pixel))] if ran else ["No method was evaluated."]
    lines += ["", "## Table 2: operating point, healthy slices, run time", ""]
    lines += _markdown_table(ran, operating) if ran else ["No method was evaluated."]
    lines += [
        "",
        "Best threshold: the one giving the avg max-Dice; *lesion-free px flagged*: share of the brain pixels of the "
        "lesion-free slices with map >= that threshold. "
        f"*Threshold at {CALIBRATION_FPR:.0%} healthy FPR*: the label threshold a bundle stores (lowest one flagging "
        "at most that share of their brain pixels), measured on the lesion-free slices; "
        f"*image threshold at {CALIBRATION_FPR:.0%} healthy FPR*: the lowest image score reached by at most that "
        "share of the lesion-free slices (an image is called anomalous at score >= it); "
        "`python -m monai_diffad.calibration --from-results` writes both into the bundle.",
        "",
        "## Table 3: max-Dice per stratum at one global threshold",
        "",
        "The threshold of the *avg* max-Dice (Table 2's best threshold) applied to every stratum, next to each "
        "stratum's own best (Table 1), and the all-brain floor.",
        "",
        *(_markdown_table(ran, global_columns) if ran else ["No method was evaluated."]),
        "",
        "![precision-recall curves](pr_curves.png)",
        "",
        "![example slices](examples.png)",
        "",
    ]
    not_run = [r for r in results if r.status != "ok"]
    if not_run:
        lines += ["## Not evaluated", ""] + [f"- **{r.name}**: {r.status}: {r.reason}" for r in not_run] + [""]
    if ran:
        lines += ["## Method settings", ""] + [_settings_line(r) for r in ran] + [""]
    versions = ", ".join(f"{k} {v}" for k, v in metadata["versions"].items())
    machine = ", ".join(f"{k} {v}" for k, v in metadata["machine"].items())
    strata = ", ".join(f"{k} {v}" for k, v in data["items_per_stratum"].items())
    lines += [
        "## Reproduce",
        "",
        "```bash",
        metadata["command"],
        "```",
        "",
        f"- as run: `{shlex.join(metadata['argv'])}` in `{metadata['cwd']}`" if "argv" in metadata else "",
        f"- bundles: `{metadata['bundles_dir']}`" + (
            f" (`{metadata['bundles_dir_resolved']}`)"
            if metadata.get("bundles_dir_resolved", metadata["bundles_dir"]) != metadata["bundles_dir"]
            else ""
        ),
        f"- seed: {metadata['seed']}; limit: {metadata['limit']}",
        f"- data: `{_display_path(data['source'])}`, {data['items_used']} of {data['items_in_set']} slices "
        f"({data['image_shape'][0]}x{data['image_shape'][1]}; {strata})",
        f"- versions: {versions}",
        f"- git commit when the run started: {metadata['git_commit']}"
        + (f" (at the end: {metadata['git_commit_at_end']})" if "git_commit_at_end" in metadata else ""),
        f"- started: {metadata.get('started', 'not recorded')}; report written: {metadata['date']}",
        f"- machine: {machine}",
        "",
    ]
    return "\n".join(lines)


def _floor_row(metadata: dict[str, Any], n_columns: int) -> str:
    """Table 1's row of the all-brain map: max-Dice, AUPRC and AUROC per stratum (no reconstruction)."""
    floors = metadata.get("trivial_floor", {})
    cells = ["-", "All brain (trivial)"]
    for metric in ("max_dice", "auprc", "auroc"):
        cells += [_percent(floors.get(s, {}).get(metric, float("nan"))) for s in _STRATUM_HEADERS]
    cells += ["n/a"] * (n_columns - len(cells))
    return "| " + " | ".join(cells) + " |"


def _write_csv(path: str, results: Sequence[MethodResult]) -> None:
    # MONAI's MetricsSaver writes an ignite engine's metrics per key; this table is one row per method, with the
    # methods that failed or were skipped, which no engine ran
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "noise", "status", "reason", *METRIC_COLUMNS])
        for r in results:
            values = [r.metrics.get(k, float("nan")) for k in METRIC_COLUMNS]
            writer.writerow(
                [r.name, r.label, r.noise, r.status, r.reason, *[f"{v:.6g}" if _is_number(v) else "" for v in values]]
            )


def _json_safe(value: Any) -> Any:
    """nan -> None, numpy -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: str, results: Sequence[MethodResult], metadata: dict[str, Any]) -> None:
    methods: list[dict[str, Any]] = [
        {
            "name": r.name,
            "label": r.label,
            "noise": r.noise,
            "status": r.status,
            "reason": r.reason,
            "metrics": r.metrics,
            "settings": r.settings,
            "dice_curve": r.curves.get("dice", []),
        }
        for r in results
    ]
    with open(path, "w") as f:
        json.dump(_json_safe({"metadata": metadata, "methods": methods}), f, indent=1, allow_nan=False)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_pr_curves(path: str, results: Sequence[MethodResult]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    curves = [r for r in results if r.status == "ok" and "precision" in r.curves]
    for r in curves:
        label = f"{r.label} ({_noise_label(r.noise)}), AP {_percent(r.metrics.get('auprc_all', float('nan')))}%"
        ax.plot(r.curves["recall"], r.curves["precision"], label=label, linewidth=1.2)
    if curves:
        # precision at full recall is the share of lesion pixels: a random map's curve
        prevalence = float(curves[0].curves["precision"][-1])
        ax.axhline(prevalence, color="grey", linestyle="--", linewidth=0.8, label=f"chance ({prevalence * 100:.2f}%)")
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no method was evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Pixel PR curves (brain pixels, all slices)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_examples(
    path: str, results: Sequence[MethodResult], dataset: EvaluationSet, example_indices: Sequence[int]
) -> None:
    plt = _pyplot()
    ran = [r for r in results if r.status == "ok"]
    rows = [i for i in example_indices if all(i in r.examples for r in ran)]
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no example slices", ha="center", va="center")
        ax.axis("off")
    else:
        columns = 2 + len(ran)
        # one colour scale per method (its largest example value, stated in the title) so that weak maps stay visible
        map_scales = [max(max(float(r.examples[i].max()) for i in rows), 1e-6) for r in ran]
        fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.0 * len(rows) + 0.3), squeeze=False)
        for row_index, index in enumerate(rows):
            image, label = dataset.images[index], dataset.labels[index]
            panels = [("input", image, "gray"), ("lesion", label, "gray")]
            panels += [
                (f"{r.label} ({_noise_label(r.noise, short=True)})\nmap 0 to {top:.2g}", r.examples[index], "inferno")
                for r, top in zip(ran, map_scales)
            ]
            for column, (title, array, cmap) in enumerate(panels):
                ax = axes[row_index, column]
                vmax = 1.0 if column < 2 else map_scales[column - 2]
                # RAS [x, y] arrays, shown with anterior up (as monai_diffad.visualize does)
                ax.imshow(np.rot90(array), cmap=cmap, vmin=0.0, vmax=vmax)
                if column >= 2 and label.any():
                    ax.contour(np.rot90(label), levels=[0.5], colors="cyan", linewidths=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
                if row_index == 0:
                    ax.set_title(title, fontsize=8)
            size_class = int(dataset.size_class[index])
            stratum = SIZE_STRATA[size_class] if size_class >= 0 else "other"
            axes[row_index, 0].set_ylabel(f"#{index} {stratum}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    output_dir: str,
    results: Sequence[MethodResult],
    metadata: dict[str, Any],
    dataset: EvaluationSet,
    example_indices: Sequence[int],
) -> dict[str, str]:
    """Write every file of :data:`REPORT_FILES` into ``output_dir``.

    Args:
        output_dir: created if needed; existing report files are replaced.
        results: one result per method, in table order (skipped and failed ones are listed with their reason).
        metadata: from :func:`run_metadata`.
        dataset: the evaluated set (for the example slices).
        example_indices: items shown in ``examples.png`` (their maps must be in each result's ``examples``).

    Returns:
        ``{file name: path}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in REPORT_FILES}
    with open(paths["results.md"], "w") as f:
        f.write(results_markdown(results, metadata))
    _write_csv(paths["results.csv"], results)
    _write_json(paths["results.json"], results, metadata)
    _plot_pr_curves(paths["pr_curves.png"], results)
    _plot_examples(paths["examples.png"], results, dataset, example_indices)
    return paths
