"""A block of one-metric lines, one metric a step, taken as columns instead of a record a line.

In the canonical one-metric form (``{"time", "step", "name", "value"}``) a step that carries
one metric is one line, and the record path builds a :class:`~trainguard.events.Record` and a
dict for each, which the engine then reads back into arrays: at a million lines that was most
of the cost of reading a run. When a decoded block (:mod:`.line_forms`) is all one rank's and
one kind's, :func:`metric_steps` hands its lines to the loop as one :class:`MetricSteps`, and
the loop (``Monitor._evaluate_steps``) reads their columns straight into the engine's batch
if no two consecutive lines share a step (each line is then a step of its own); else they are
gathered record by record. The results are the same (``tests/test_metric_steps.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

__all__ = ["MIN_COLUMN_LINES", "MetricSteps", "metric_steps"]

#: Fewer lines than this are gathered record by record: a batch this small costs numpy more
#: than it saves (the engine's ``BATCH_MIN`` is of the same size).
MIN_COLUMN_LINES = 64

_ranks = attrgetter("rank")
_kinds = attrgetter("kind")


@dataclass(slots=True)
class MetricSteps:
    """Consecutive one-metric lines of one stream, rank and kind, as decoded (each has
    ``time``, ``step``, ``name``, ``value``, ``host`` and ``local_rank``)."""

    stream: str
    rank: int
    kind: str
    lines: Sequence[Any]
    #: The metric every line names, once known (the decoder checked it, or the loop did).
    name: str | None = None

    def __len__(self) -> int:
        return len(self.lines)


def _uniform(column: list[Any]) -> bool:
    """Whether every item of a non-empty column equals the first (a C loop, no frame)."""
    return column.count(column[0]) == len(column)


def _steps_of_their_own(decoded: Sequence[Any]) -> bool:
    """Whether a few lines spread over the block each have a step of their own: a block of
    steps of several metrics fails here at once, before any pass over it."""
    last = len(decoded) - 1
    return all(decoded[i].step != decoded[i + 1].step for i in (0, 1, last // 2, last - 1))


def metric_steps(stream: str, decoded: Sequence[Any], raw: bytes, plain: bool,
                 name: str | None = None) -> MetricSteps | None:
    """The decoded one-metric lines of a block of ``stream`` (``raw``: its bytes; ``plain``:
    decoded as the four keys alone, so of rank 0 and kind ``train``; ``name``: the metric
    every line names, if the decoder checked it), or None when they are of more than one rank
    or kind, too few to be worth it, or steps of several metrics.

    A key no line of the block names is at its default in every line, so ``raw`` is searched
    for ``"rank"`` and ``"kind"`` before their columns are read.
    """
    if len(decoded) < MIN_COLUMN_LINES or not _steps_of_their_own(decoded):
        return None
    rank = 0
    kind: Any = "train"
    if not plain:
        if b'"rank"' in raw:
            ranks = list(map(_ranks, decoded))
            if not _uniform(ranks):
                return None
            rank = ranks[0]
        if b'"kind"' in raw:
            kinds = list(map(_kinds, decoded))
            if not _uniform(kinds):
                return None
            kind = kinds[0]
            if type(kind) is not str:
                kind = "train"  # as the record path reads a kind that is no string
    return MetricSteps(stream, rank, kind, decoded, name)
