"""Time to detect, computed from a rule: the earliest record it can fire at, and how many
records after an onset it may take. Static (read from the compiled condition's nodes), so
``trainguard rules explain`` prints it and a test holds every built-in rule to its budget.

Counted in records that carry the rule's metrics (logged steps):

* ``first``: the earliest record of the run the rule can fire at, when the failure is there
  from the first record: ``max(warmup + 1, fill + for - 1)``, where ``fill`` is the record its
  condition is first known at (a window's ``min_count``, a baseline's length plus one).
* ``after_onset``: once the windows hold history, how many records after the failure starts
  the rule fires at the latest: ``reaction + for - 1`` (``reaction``: 1 for a comparison of
  the current value, up to the window's length for a window aggregate).

The budgets (:data:`BUDGETS`) by the rule's ``timing``: ``exact`` signatures (non-finite,
exactly zero, every completion truncated) fire within 3 records, from the start or after an
onset; ``noisy`` ones within 5 after an onset and by record 10 from the start (a baseline of
a few values first); ``slow`` trends within 30 and by record 50.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainguard.rules.models import Rule

__all__ = ["BUDGETS", "Timing", "rule_timing"]

#: timing kind -> (budget after an onset, budget for the first firing), in records.
BUDGETS: dict[str, tuple[int, int]] = {"exact": (3, 3), "noisy": (5, 10), "slow": (30, 50)}


@dataclass(frozen=True, slots=True)
class Timing:
    """When a rule can fire, in records carrying its metrics (see the module docstring)."""

    first: int
    after_onset: int
    fill: int
    kind: str

    @property
    def budget(self) -> tuple[int, int]:
        """(after an onset, first firing) allowed for this rule's timing kind."""
        return BUDGETS[self.kind]

    @property
    def within_budget(self) -> bool:
        """Whether both figures are within the budget of the rule's kind."""
        onset, first = self.budget
        return self.after_onset <= onset and self.first <= first

    def describe(self) -> str:
        """One line for ``trainguard rules explain``."""
        onset, first = self.budget
        verdict = "within" if self.within_budget else "OVER"
        return (f"earliest firing at logged step {self.first} of a run (condition known from "
                f"step {self.fill}); within {self.after_onset} logged step(s) of an onset; "
                f"{self.kind} budget: {onset} after an onset, first by step {first} "
                f"({verdict} budget)")


def rule_timing(rule: Rule, fill: int, reaction: int) -> Timing:
    """The timing of ``rule`` whose compiled condition has ``fill`` and ``reaction``."""
    fill = max(fill, 1)
    first = max(rule.warmup + 1, fill + rule.for_ - 1)
    return Timing(first=first, after_onset=max(reaction, 1) + rule.for_ - 1, fill=fill,
                  kind=rule.timing)
