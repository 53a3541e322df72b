"""The verdict of a monitoring session: the exit code that says it to CI, and what was seen.

A blind monitor is never healthy: a session that judged nothing (no metric events, or none a
loaded rule reads) is ``degraded``, never clean (:func:`what_was_seen`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.ingest.gather import Counters, SkipExample

if TYPE_CHECKING:
    from trainguard.monitor.engine.engine import Engine

__all__ = ["ConfigReport", "EXIT_ALERT", "EXIT_CLEAN", "EXIT_DEGRADED", "FEW_EVENTS_FRACTION",
           "FEW_EVENTS_MIN_LINES", "UNREAD_LISTED", "Verdict", "what_was_seen"]

EXIT_CLEAN = 0
EXIT_DEGRADED = 1
EXIT_ALERT = 2
#: Fewer step records than this fraction of the lines read (at least FEW_EVENTS_MIN_LINES of
#: them) is said in the verdict: most of the input was not understood.
FEW_EVENTS_FRACTION = 0.1
FEW_EVENTS_MIN_LINES = 20
#: Names of unread metrics the verdict lists; the count says the rest.
UNREAD_LISTED = 8


@dataclass(slots=True)
class Verdict:
    """The outcome of a monitoring session, and the exit code that says it to CI."""

    exit_code: int
    alerts: list[Alert]
    problems: list[str]
    events: int
    records: int
    skips: Counter[str]
    skip_examples: list[SkipExample]
    #: What was seen, said even when the verdict is clean: few events for the lines read,
    #: metrics no loaded rule reads, nothing judged at all (see :func:`what_was_seen`).
    notes: list[str] = field(default_factory=list)
    #: Lines read from every stream.
    lines: int = 0
    #: Whether any loaded rule evaluated any value: False means nothing could be judged, and
    #: the verdict is ``degraded`` (exit 1), never clean.
    judged: bool = True

    @property
    def status(self) -> str:
        """``alert``, ``degraded`` or ``clean``."""
        return {EXIT_ALERT: "alert", EXIT_DEGRADED: "degraded"}.get(self.exit_code, "clean")



@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What a session found of the trainer's config (monitor/packs.py): the ``config/``
    metrics given, and where they were looked for (said when some rule lacked them)."""

    given: frozenset[str]
    looked_in: str


def _config_note(engine: Engine, config: ConfigReport) -> str | None:
    """The note on rules that read config fields nobody gave, if any."""
    blind: list[str] = []
    missing: set[str] = set()
    for compiled in engine.rules:
        lacking = {m for m in compiled.condition.metrics
                   if m.startswith("config/") and m not in config.given}
        if lacking:
            blind.append(compiled.rule.id)
            missing |= lacking
    if not blind:
        return None
    listed = ", ".join(sorted(blind)[:3]) + (f" and {len(blind) - 3} more" if len(blind) > 3
                                             else "")
    fields = ", ".join(sorted(m.removeprefix("config/") for m in missing))
    rules = "rule" if len(blind) == 1 else "rules"
    return (f"config unknown: {len(blind)} {rules} ({listed}) had no {fields} to judge "
            f"(looked in: {config.looked_in}); the TRL callback's run directory records the "
            "config, and trainguard run or a pipe straight from the trainer reads its "
            "command-line flags")


def what_was_seen(counters: Counters, lines: int, engine: Engine, seen: set[str],
                  config: ConfigReport | None = None) -> tuple[list[str], bool]:
    """Notes on what a session saw (``seen``: the metric keys, mapped, of each rank's first
    and last records; ``config``: what was found of the trainer's config, if a pack selector
    looked), and whether anything was judged (the last note then says why not)."""
    c = counters
    notes: list[str] = []
    if c.records == 0 and not engine.judged():  # GPU samples alone can be judged
        skipped = sum(c.skips.values())
        how = (f"{lines} lines read" if lines else "no line read") + (
            f", {skipped} skipped" if skipped else "")
        notes.append(f"nothing judged: no metric events ({how}); is the format right? "
                     "(--regex for trainer stdout; a run directory reads *.jsonl)")
        return notes, False
    if lines >= FEW_EVENTS_MIN_LINES and c.records < FEW_EVENTS_FRACTION * lines:
        notes.append(f"few events: {c.records} steps from {lines} lines; the rest was not "
                     "understood (prose, or a format that needs --regex)")
    rules = engine.rules
    read = {name for r in rules for name in r.condition.metrics}
    unread = sorted(k for k in seen if k not in read)
    judged = engine.judged()
    if unread:
        listed = ", ".join(unread[:UNREAD_LISTED]) + (
            f" and {len(unread) - UNREAD_LISTED} more" if len(unread) > UNREAD_LISTED else "")
        notes.append(f"{len(unread)} of {len(seen)} metrics are read by no loaded rule: "
                     f"{listed}")
    config_note = _config_note(engine, config) if config is not None and judged else None
    if config_note:
        notes.append(config_note)
    if not judged:
        notes.append(f"nothing judged: {c.records} steps read, but none of their metrics is "
                     f"read by the {len(rules)} loaded rules; load a pack for this trainer "
                     "(--rules) or map its names (--field-map)")
    return notes, judged
