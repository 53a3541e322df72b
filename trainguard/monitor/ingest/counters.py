"""What the monitor counts of what it reads: :class:`Counters` (events, step records, skips by
reason) and :class:`SkipExample` (where a skipped line is, for the user to look at). Filled in by
:class:`~trainguard.monitor.ingest.gather.StepGathering`, reported in the verdict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["MAX_SKIP_EXAMPLES", "Counters", "SkipExample"]

MAX_SKIP_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class SkipExample:
    """Where a line was skipped and why, for the user to go and look."""

    stream: str
    line: int
    reason: str
    detail: str


@dataclass(slots=True)
class Counters:
    """What was read: metric events, step records, and skips by reason with examples."""

    events: int = 0
    records: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    examples: list[SkipExample] = field(default_factory=list)
