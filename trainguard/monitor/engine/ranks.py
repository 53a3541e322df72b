"""Cross-rank views: which rank is a straggler.

A rule sees one rank's record at a time, so a question about one rank *relative to the others*
needs the records of a step gathered first. :class:`StragglerScores` does that for step time,
with the arithmetic of NVIDIA's nvidia-resiliency-ext straggler detector: over a window of recent
steps, ``score_r = min over ranks of median_r / median_r``; 1.0 is the fastest rank, 0.5 a rank
twice as slow. It hands back one derived record per rank (``ranks/straggler_score``) for each
step that is complete on every rank, and the engine evaluates those like any other metric, so the
rule (``common.straggler``) and its thresholds stay data.

Pure and bounded: no clocks or I/O; at most ``max_pending`` steps wait for their slowest rank
(older ones are dropped, counted in ``dropped_steps``), and each rank keeps ``window`` values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from statistics import median

__all__ = ["SCORE_METRIC", "STEP_TIME_KEYS", "StragglerScores"]

#: The derived metric rules read.
SCORE_METRIC = "ranks/straggler_score"
#: Step-time keys of the trainers we know (TRL's GRPO/RLOO, verl, OpenRLHF), first found wins.
STEP_TIME_KEYS = ("step_time", "perf/time_per_step", "timing/step_total", "timing_s/step")


class StragglerScores:
    """Gathers per-rank step times by step and scores each rank against the fastest."""

    def __init__(self, keys: Iterable[str] = STEP_TIME_KEYS, *, window: int = 10,
                 max_pending: int = 1 << 16) -> None:
        self.keys = tuple(keys)
        self.window = window
        self.max_pending = max_pending
        self.dropped_steps = 0
        self._ranks: set[int] = set()
        #: step -> ({rank: step time}, time of the first record) until every rank reported it.
        self._pending: dict[int, tuple[dict[int, float], float | None]] = {}
        self._history: dict[int, deque[float]] = {}
        self._done = -1  # steps at or below this were scored (or dropped)

    def observe(self, rank: int, step: int, metrics: Mapping[str, float],
                time: float | None = None) -> None:
        """Note one record of ``rank`` (cheap: a few dict lookups)."""
        self._ranks.add(rank)
        value = None
        for key in self.keys:
            value = metrics.get(key)
            if value is not None:
                break
        if value is None or not value > 0.0:  # also skips NaN
            return
        if step <= self._done:
            # A step already judged without this rank (it appeared late: its file was read
            # after the others'). No score for it now, but its window fills with its own step
            # times, so its later scores are those a whole-run read gives.
            history = self._history.get(rank)
            if history is None:
                history = self._history[rank] = deque(maxlen=self.window)
            history.append(value)
            return
        entry = self._pending.get(step)
        if entry is None:
            entry = self._pending[step] = ({}, time)
            if len(self._pending) > self.max_pending:
                oldest = min(self._pending)
                del self._pending[oldest]
                self.dropped_steps += 1
                self._done = max(self._done, oldest)
        entry[0][rank] = value

    def scores(self) -> list[tuple[int, int, dict[str, float], float | None]]:
        """``(rank, step, {SCORE_METRIC: score}, time)`` for every rank of every step that is
        now complete on all the ranks seen so far, in step order.

        Called once per batch of records, not per record: a batch read from a directory holds
        lines of every rank file, so the set of ranks is known before any step is judged
        complete, whatever order the files were read in.
        """
        if len(self._ranks) < 2 or not self._pending:
            return []
        n = len(self._ranks)
        complete = [s for s, (times, _) in self._pending.items() if len(times) >= n]
        if not complete:
            return []
        out: list[tuple[int, int, dict[str, float], float | None]] = []
        last = max(complete)
        # Steps before the last complete one that are still incomplete were skipped by a rank.
        for step in sorted(s for s in self._pending if s <= last):
            times, time = self._pending.pop(step)
            if len(times) < n:
                continue
            for rank, value in times.items():
                history = self._history.get(rank)
                if history is None:
                    history = self._history[rank] = deque(maxlen=self.window)
                history.append(value)
            medians = {rank: median(self._history[rank]) for rank in times}
            fastest = min(medians.values())
            out += [(rank, step, {SCORE_METRIC: fastest / m}, time)
                    for rank, m in sorted(medians.items())]
        self._done = last
        return out
