# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Render the loss curve written by :class:`monai_diffad.training.LossCSVLogger` as a PNG.

Usage: ``python -m monai_diffad.training.plot_loss LOG_DIR OUT.png``
(``LOG_DIR`` holds ``train_loss.csv`` and, optionally, ``val_loss.csv``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence

__all__ = ["read_csv_columns", "plot_loss"]


def read_csv_columns(path: str) -> dict[str, list[float]]:
    """Read a numeric CSV into ``{column: values}``.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}


def plot_loss(log_dir: str, out_png: str, smooth: int = 5) -> str:
    """Plot the training loss (raw and moving-average over ``smooth`` rows) and the validation loss per iteration.

    A resumed run appends to the same CSV; its rows keep increasing iteration numbers, so the curve is continuous.

    Args:
        log_dir: folder with ``train_loss.csv`` (and optionally ``val_loss.csv``).
        out_png: output image path.
        smooth: moving-average window in rows (1 = none).

    Returns:
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_csv_columns(os.path.join(log_dir, "train_loss.csv"))
    fig, ax = plt.subplots(figsize=(7, 4))
    it, loss = train["iteration"], train["loss"]
    ax.plot(it, loss, color="tab:blue", alpha=0.3, lw=1, label="train loss (per logged interval)")
    if smooth > 1 and len(loss) >= smooth:
        avg = [sum(loss[i - smooth + 1 : i + 1]) / smooth for i in range(smooth - 1, len(loss))]
        ax.plot(it[smooth - 1 :], avg, color="tab:blue", lw=2, label=f"train loss ({smooth}-row mean)")
    val_path = os.path.join(log_dir, "val_loss.csv")
    if os.path.isfile(val_path):
        val = read_csv_columns(val_path)
        for key in (k for k in val if k not in ("iteration", "epoch")):
            ax.plot(val["iteration"], val[key], "o-", color="tab:orange", label=f"validation {key} (EMA weights)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("epsilon MSE")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_diffad.training.plot_loss", description=__doc__.splitlines()[0]
    )
    parser.add_argument("log_dir")
    parser.add_argument("out_png")
    parser.add_argument("--smooth", type=int, default=5)
    args = parser.parse_args(argv)
    print(plot_loss(args.log_dir, args.out_png, args.smooth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
