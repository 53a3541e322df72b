"""Accelerate: a tracker, so that ``Accelerator(log_with="trainguard")`` writes trainguard events.

``Accelerator.log(values, step)`` passes the loop's dict to every tracker and prints nothing, so
a plain Accelerate loop is invisible to a monitor reading its stdout. Importing this module
registers :class:`TrainguardTracker` with accelerate's tracker registry under the name
``trainguard``::

    import trainguard.emitters.accelerate  # registers "trainguard"
    from trainguard.emitters.accelerate import stop_requested

    accelerator = Accelerator(log_with="trainguard")
    accelerator.init_trackers("exp1")       # events in $TRAINGUARD_RUN_DIR, else runs/exp1
    for step, batch in enumerate(loader, 1):
        ...
        accelerator.log({"loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=step)
        if stop_requested(accelerator):      # every rank, at the same point of each step
            break
    accelerator.end_training()

An instance works too (``Accelerator(log_with=[TrainguardTracker(run_dir="runs/exp1")])``).
Accelerate calls trackers on the main process only, so the events are rank 0's; the stop check
(:func:`stop_requested`) is a collective that tells every rank the main process's answer, so all
ranks leave the loop after the same step. Keys pass unchanged: ``--field-map accelerate`` folds
the names hand-written loops use (``train_loss``, ``lr``, ``train/*``).

This module runs in the trainer: it imports accelerate (and torch, inside the stop check of a
multi-process run), never the monitor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from trainguard.control import RUN_DIR_ENV
from trainguard.emitters.writer import EventWriter

__all__ = ["TRACKER_NAME", "TrainguardTracker", "register", "stop_requested"]

TRACKER_NAME = "trainguard"


def _number(value: Any) -> float | None:
    """A logged value as a float metric: numbers, 0-d tensors and numpy scalars; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:  # a 0-d tensor or numpy scalar
        try:
            result = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(result) if isinstance(result, int | float) and not isinstance(
            result, bool) else None
    return None


class TrainguardTracker(GeneralTracker):  # type: ignore[misc]  # accelerate is untyped
    """An accelerate tracker writing trainguard's canonical events, with the stop check."""

    name = TRACKER_NAME
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_name: str | None = None, *, run_dir: str | os.PathLike[str] | None
                 = None, stop_check_interval: float = 0.05) -> None:
        super().__init__()
        if run_dir is None:
            run_dir = os.environ.get(RUN_DIR_ENV) or Path("runs") / (run_name or "trainguard")
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self._interval = stop_check_interval
        self._writer: EventWriter | None = None
        self._step = 0

    def start(self) -> None:
        """Open the events file (accelerate calls this from ``init_trackers``)."""
        if self._writer is None:
            self._writer = EventWriter(self.run_dir, stop_check_interval=self._interval)

    @property
    def tracker(self) -> EventWriter:
        """The :class:`~trainguard.emitters.writer.EventWriter` behind this tracker."""
        self.start()
        assert self._writer is not None
        return self._writer

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Keep the run's configuration (its plain values) in ``run_metadata.json``."""
        plain = {k: v for k, v in values.items()
                 if v is None or isinstance(v, bool | int | str)
                 or isinstance(v, float) and math.isfinite(v)}
        self.tracker.update_metadata({"config": plain})

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Write the numeric values of one step (strings, images, tables are not metrics)."""
        if step is None:
            step = self._step + 1
        self._step = step
        metrics = {k: v for k, v in ((k, _number(v)) for k, v in values.items())
                   if v is not None}
        if metrics:
            self.tracker.log_metrics(step, metrics)

    @property
    def should_stop(self) -> bool:
        """Whether the monitor asked this run to stop (this process's view; see
        :func:`stop_requested` for the answer every rank agrees on)."""
        return self._writer is not None and self._writer.should_stop

    @property
    def stop_reason(self) -> str | None:
        """A one-line reason for the stop, for the trainer's own log."""
        return self._writer.stop_reason if self._writer is not None else None

    def finish(self) -> None:
        """Flush and close the events file (``accelerator.end_training()``)."""
        if self._writer is not None:
            self._writer.close()


def _tracker_of(accelerator: Any) -> TrainguardTracker | None:
    for tracker in getattr(accelerator, "trackers", ()):
        if isinstance(tracker, TrainguardTracker):
            return tracker
    return None


def stop_requested(accelerator: Any) -> bool:
    """True on every rank when the monitor asked the run to stop.

    In a multi-process run this is a collective (one small all-reduce): call it on every rank
    at the same point of every step, or the ranks wait on each other.
    """
    tracker = _tracker_of(accelerator)
    flag = tracker is not None and tracker.should_stop
    if getattr(accelerator, "num_processes", 1) <= 1:
        return flag
    import torch

    vote = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(vote, reduction="sum").item() > 0)


def register() -> None:
    """Register the tracker under ``trainguard`` (done on import; a second call is a no-op)."""
    from accelerate import tracking

    if TRACKER_NAME in tracking.LOGGER_TYPE_TO_CLASS:
        return
    register_class = getattr(tracking, "register_tracker_class", None)
    if register_class is not None:
        register_class(TrainguardTracker)
    else:  # accelerate before register_tracker_class: the registry is this mapping
        tracking.LOGGER_TYPE_TO_CLASS[TRACKER_NAME] = TrainguardTracker


register()
