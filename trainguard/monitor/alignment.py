"""Step alignment across ranks: records evaluated in (step, rank) order once every rank has
reported the step, so that rules across ranks give the same alerts batch and stream.

A rule of scope ``any``, ``all`` or ``mean`` combines the ranks' results, so its alerts depend
on the order in which their records are evaluated; and that order is the order of arrival: a
run read whole (``--once``) brings every record of rank 0 before rank 1's, a run followed live
interleaves them however the writes fell. So with such rules and several streams, a record is
evaluated only once every rank has reported its step (the watermark: the lowest of the ranks'
latest steps), in step order across the ranks. A rank that has not written yet (fewer ranks
than streams) or falls more than :data:`ALIGN_LAG_STEPS` behind is not waited for, and nothing
is held longer than :data:`ALIGN_HOLD_SECONDS`, so a hung rank delays the others' alerts by
that much at most.
"""

from __future__ import annotations

import time

__all__ = ["ALIGN_HOLD_SECONDS", "ALIGN_LAG_STEPS", "QueuedRecord", "StepAlignment"]

#: A rank this many steps behind the newest is not waited for, and no record is held longer
#: than this many seconds.
ALIGN_LAG_STEPS = 256
ALIGN_HOLD_SECONDS = 2.0

#: A step record queued for the engine: ``(rank, step, metrics, time)``.
QueuedRecord = tuple[int, int, dict[str, float], "float | None"]


def _step_rank(record: QueuedRecord) -> tuple[int, int]:
    return record[1], record[0]


class StepAlignment:
    """The records held back for alignment, each rank's latest step, and since when the oldest
    held record waits (the clock is the monitor's: monotonic)."""

    __slots__ = ("held", "rank_high", "held_since")

    def __init__(self) -> None:
        self.held: list[QueuedRecord] = []
        self.rank_high: dict[int, int] = {}
        self.held_since = 0.0

    def aligned(self, queue: list[QueuedRecord], release_all: bool,
                streams: int) -> list[QueuedRecord]:
        """The records of ``queue`` and those held that may be evaluated now, in (step, rank)
        order; the rest held. ``streams``: how many streams the source reads (ranks to wait
        for); ``release_all``: the end of the input, nothing is waited for."""
        held = self.held
        if not held:
            self.held_since = time.monotonic()
        held += queue
        high = self.rank_high
        for rank, step, _, _ in queue:
            if step > high.get(rank, step - 1):
                high[rank] = step
        if not high:
            return []
        top = max(high.values())
        if release_all or time.monotonic() - self.held_since > ALIGN_HOLD_SECONDS:
            mark = top
        elif len(high) < streams:
            mark = top - ALIGN_LAG_STEPS  # a rank not yet seen: wait for it, boundedly
        else:
            mark = min(h for h in high.values() if h >= top - ALIGN_LAG_STEPS)
        ready = [r for r in held if r[1] <= mark]
        if not ready:
            return []
        self.held = [r for r in held if r[1] > mark]
        self.held_since = time.monotonic()
        ready.sort(key=_step_rank)  # stable: one rank's records of one step keep their order
        return ready
