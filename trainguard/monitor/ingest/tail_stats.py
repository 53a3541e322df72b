"""Per-stream counters: what a source yielded and what it skipped, by reason.

Every source reports one :class:`TailStats` per stream (a file, stdin, a tracker run), so a
report says where each skipped line was without keeping them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["MAX_EXAMPLES", "TailStats"]

#: Skips reported with their line number, per file; the rest are only counted.
MAX_EXAMPLES = 5


@dataclass(slots=True)
class TailStats:
    """What one followed file yielded and what it skipped, by reason (first few located)."""

    lines: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    rotations: int = 0
    truncations: int = 0
    #: ``(line_number, reason, detail)`` for the first :data:`MAX_EXAMPLES` skips.
    examples: list[tuple[int, str, str]] = field(default_factory=list)

    def merge(self, later: TailStats) -> TailStats:
        """Add the counts of ``later`` (the same stream, read by a new tail) to these."""
        self.lines += later.lines
        self.skips.update(later.skips)
        self.rotations += later.rotations
        self.truncations += later.truncations
        self.examples += later.examples[:max(0, MAX_EXAMPLES - len(self.examples))]
        return self

    def skip(self, line: int, reason: str, detail: str = "") -> None:
        """Count one skip, remembering where the first few were."""
        self.skips[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((line, reason, detail))
