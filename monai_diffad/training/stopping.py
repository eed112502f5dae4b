# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Stop a training run after a number of iterations, the way a finished run ends (weights and checkpoint written)."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

__all__ = ["IterationLimit"]

logger = logging.getLogger(__name__)


class IterationLimit:
    """Terminate the engine once ``engine.state.iteration`` reaches ``max_iterations``.

    ``engine.terminate()`` ends the run after the current iteration and still fires ``COMPLETED``, so the handlers
    that write the final weights (``WeightsExporter``) and the final checkpoint (``CheckpointSaver(save_final=True)``)
    run as at the end of a full run. The count is the engine's, which a resumed run restores from its checkpoint: a
    run resumed at or past the limit stops at once (attach this after the ``CheckpointLoader``, which restores the
    state on ``STARTED``). The epoch-level handlers (validation) of an epoch the limit cuts short do not run.

    Every process of a multi-GPU run counts the same iterations, so all stop after the same step without talking.

    Args:
        max_iterations: the last iteration to run, ``>= 1``.
    """

    def __init__(self, max_iterations: int) -> None:
        if int(max_iterations) < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}.")
        self.max_iterations = int(max_iterations)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration >= self.max_iterations:
            logger.info("max_iterations %d reached (iteration %d): stopping.", self.max_iterations,
                        engine.state.iteration)
            engine.terminate()
