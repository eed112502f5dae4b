# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers MONAI does not ship: weight EMA, periodic weight export, CSV loss log, tqdm progress."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from torch.nn import DataParallel
from torch.nn.parallel import DistributedDataParallel

__all__ = ["EMAHandler", "WeightsExporter", "LossCSVLogger", "attach_progress_bar", "loss_of"]


def loss_of(output: Any) -> float:
    """The scalar training loss from a ``SupervisedTrainer`` output (a dict, or a decollated list of dicts)."""
    if isinstance(output, Sequence) and not isinstance(output, str):
        output = output[0]
    loss = output["loss"]
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class EMAHandler:
    """Exponential moving average of the trained network's weights, updated after every iteration.

    The averaged weights are what we ship: for short DDPM training they give much cleaner samples than the raw
    weights. The decay warms up as ``min(decay, (1 + n) / (10 + n))`` with ``n`` the engine iteration, so the handler
    has no state of its own and a resumed run (which restores the EMA network and the iteration) continues exactly.

    The trained network is ``engine.network``; a ``DistributedDataParallel`` or ``DataParallel`` wrapper is looked
    through (its ``state_dict`` keys carry a ``module.`` prefix), so ``ema_network`` is a copy of the plain module.

    ignite's ``EMAHandler`` is not used: it makes its own copy of the network and warms its momentum up by its own
    schedule, whereas here the EMA network is the one the bundle's checkpoint, validator and exporter share, and the
    warm-up is the one every shipped weight file was trained with.

    Args:
        ema_network: a copy of the trained network that receives the average (not trained itself).
        decay: the long-run decay in ``(0, 1)``.
    """

    def __init__(self, ema_network: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}.")
        self.ema_network = ema_network
        self.decay = decay

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        n = engine.state.iteration
        decay = min(self.decay, (1 + n) / (10 + n))
        network = engine.network  # type: ignore[attr-defined]  # MONAI's trainers add .network to ignite's Engine
        if isinstance(network, (DataParallel, DistributedDataParallel)):
            network = network.module
        source = network.state_dict()
        for name, value in self.ema_network.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(source[name].to(value.device), 1.0 - decay)
            else:
                value.copy_(source[name])


class WeightsExporter:
    """Save a network's plain ``state_dict`` to one fixed file every ``interval_s`` seconds and at the end.

    The file loads with ``monai.handlers.CheckpointLoader(load_dict={"model": net})`` (a single-entry ``load_dict``
    accepts a plain state dict) and with :func:`monai_diffad.networks.load_state_dict_safely`. Writes go to a
    temporary file first, so a reader never sees a half-written checkpoint.

    Args:
        network: the module to export (e.g. the EMA network).
        filename: target path, e.g. ``bundles/ddpm/models/model.pt``.
        interval_s: seconds between exports (wall clock).
    """

    def __init__(self, network: torch.nn.Module, filename: str, interval_s: float = 600.0) -> None:
        self.network = network
        self.filename = filename
        self.interval_s = float(interval_s)
        self._last = time.monotonic()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _maybe_save(self, engine: Engine) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.save(engine)

    def save(self, engine: Engine | None = None) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        tmp = f"{self.filename}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.filename)
        self._last = time.monotonic()


class LossCSVLogger:
    """Append the training loss (mean over ``interval`` iterations) and validation metrics to CSV files.

    ``train_loss.csv`` gets ``iteration,epoch,loss,elapsed_s`` and ``val_loss.csv`` gets ``iteration,epoch,<metrics>``.
    Files are appended to, so a resumed run continues the same log.

    Args:
        log_dir: folder of the CSV files.
        validator: the evaluator run by ``ValidationHandler``; its metrics are logged after each validation round.
            Attach this logger after the ``ValidationHandler``.
        interval: iterations averaged per training row.
        loss_transform: extracts the scalar loss from ``engine.state.output``.
    """

    def __init__(
        self,
        log_dir: str,
        validator: Engine | None = None,
        interval: int = 10,
        loss_transform: Callable[[Any], float] = loss_of,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.log_dir = log_dir
        self.validator = validator
        self.interval = interval
        self.loss_transform = loss_transform
        self._losses: list[float] = []
        self._start = time.monotonic()
        self._last_val_epoch = -1

    def attach(self, engine: Engine) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._log_train)
        if self.validator is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_validation)

    def _append(self, name: str, header: list[str], row: list[Any]) -> None:
        path = os.path.join(self.log_dir, name)
        new = not os.path.isfile(path)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            writer.writerow(row)

    def _log_train(self, engine: Engine) -> None:
        self._losses.append(self.loss_transform(engine.state.output))
        if engine.state.iteration % self.interval == 0:
            mean = sum(self._losses) / len(self._losses)
            elapsed = time.monotonic() - self._start
            self._append(
                "train_loss.csv",
                ["iteration", "epoch", "loss", "elapsed_s"],
                [engine.state.iteration, engine.state.epoch, f"{mean:.6f}", f"{elapsed:.1f}"],
            )
            self._losses = []

    def _log_validation(self, engine: Engine) -> None:
        assert self.validator is not None  # attach() registers this handler only when there is a validator
        state = self.validator.state
        if state.epoch != engine.state.epoch or state.epoch == self._last_val_epoch or not state.metrics:
            return
        self._last_val_epoch = state.epoch
        names = sorted(state.metrics)
        self._append(
            "val_loss.csv",
            ["iteration", "epoch", *names],
            [engine.state.iteration, engine.state.epoch, *(f"{float(state.metrics[k]):.6f}" for k in names)],
        )


def attach_progress_bar(engine: Engine, mininterval: float = 10.0) -> ProgressBar:
    """Attach a tqdm progress bar showing the running loss (refreshed at most every ``mininterval`` seconds)."""
    bar = ProgressBar(persist=True, mininterval=mininterval)
    bar.attach(engine, output_transform=lambda output: {"loss": loss_of(output)})
    return bar
