"""Restart without losing or repeating: where each file was, what was recorded, what fired.

The monitor is at-least-once on ingest (like Filebeat or Vector) and idempotent on effects:

* **Positions** of every file (offset of the end of the last complete line, line number and the
  file's fingerprint) and the ``--record`` file's length are saved together, only at points
  where every line read has been evaluated, so a restart resumes there and truncates the record
  back to match: each event is recorded exactly once.
* **Alert ledger**: which ``(rule, rank)`` are firing (and how severe), which alert keys
  ``(rule, rank, step, state)`` were already raised and which stops were sent. Events between the
  last checkpoint and a crash are evaluated again after the restart; the ledger suppresses the
  alerts and stops they would raise a second time. The ledger is saved at once whenever it
  changes (with the last consistent positions), so no alert is raised twice.

The state file is written atomically (:func:`trainguard.control.write_json_atomic`); a missing,
empty or garbled file is a cold start with a warning, never a crash. The engine stays pure:
duplicates are suppressed here, from the fields of
:class:`~trainguard.monitor.engine.alerts.Alert` alone.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from typing import Any, Protocol

from trainguard.control import write_json_atomic
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.record import Recorder
from trainguard.rules.models import SEVERITY_ORDER

__all__ = ["AlertLedger", "Checkpointer", "STATE_VERSION", "load_state"]

STATE_VERSION = 1
#: Alert keys remembered for deduplication; older ones are forgotten first.
MAX_RAISED_KEYS = 10_000


class _Positioned(Protocol):
    def positions(self) -> dict[str, dict[str, Any]]:
        """Checkpointable positions per stream."""


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """The saved state and a warning; an absent file is ``({}, None)``, a bad one a warning."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read state {path}: {exc.strerror}; starting cold"
    try:
        data = json.loads(raw)
    except ValueError:
        return {}, f"state {path} is empty or damaged; starting cold"
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}, f"state {path} has an unknown format; starting cold"
    return data, None


class AlertLedger:
    """What was already raised, so a restarted monitor raises and stops nothing twice."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.firing: dict[tuple[str, int | None], str] = {}
        for rule, rank, severity in saved.get("firing", []):
            self.firing[(str(rule), rank)] = str(severity)
        self.raised: OrderedDict[tuple[str, int | None, int, str], None] = OrderedDict(
            ((str(r), k, int(s), str(st)), None) for r, k, s, st in saved.get("raised", []))
        self.stops: set[tuple[str, int | None]] = {(str(r), k) for r, k in saved.get("stops", [])}
        #: The most severe alert any session raised, resolved since or not: a restart must not
        #: change the verdict (a NaN at step 500 that resolved before a crash is still a NaN).
        worst = saved.get("worst", -1)
        self.worst = worst if type(worst) is int else -1
        self.suppressed = 0
        #: Notifications queued and not yet delivered (monitor/sinks/notify.py): alert key ->
        #: the alert as JSON; the next session sends them.
        pending = saved.get("notify_pending")
        self.notify_pending: dict[str, Any] = dict(pending) if isinstance(pending, dict) else {}

    def admit(self, alert: Alert) -> bool:
        """True when ``alert`` is new and must be delivered; False for a repeat."""
        key = (alert.rule, alert.rank)
        full = (alert.rule, alert.rank, alert.step, alert.state)
        if full in self.raised:
            self.suppressed += 1
            return False
        if alert.state == "firing":
            if key in self.firing:  # the engine restarted and sees it again: already told
                self.suppressed += 1
                return False
            self.firing[key] = alert.severity
            self.worst = max(self.worst, SEVERITY_ORDER.get(alert.severity, -1))
        else:
            self.firing.pop(key, None)
        self.raised[full] = None
        while len(self.raised) > MAX_RAISED_KEYS:
            self.raised.popitem(last=False)
        return True

    def stop_sent(self, alert: Alert) -> bool:
        """True when a stop for this rule and rank was already sent (in any session)."""
        return (alert.rule, alert.rank) in self.stops

    def note_stop(self, alert: Alert) -> None:
        """Remember that a stop was sent for this rule and rank."""
        self.stops.add((alert.rule, alert.rank))

    @property
    def max_severity(self) -> int:
        """The most severe alert raised in this or a previous session, firing or resolved since
        (-1 for none)."""
        firing = max((SEVERITY_ORDER.get(s, -1) for s in self.firing.values()), default=-1)
        return max(firing, self.worst)

    def to_json(self) -> dict[str, Any]:
        """The ledger as JSON."""
        return {"firing": [[r, k, s] for (r, k), s in self.firing.items()],
                "raised": [list(key) for key in self.raised],
                "stops": [list(key) for key in sorted(self.stops, key=str)],
                "worst": self.worst, "notify_pending": dict(self.notify_pending)}


class Checkpointer:
    """Saves positions, record length and ledger to one state file, atomically."""

    def __init__(self, path: str | os.PathLike[str], source: object, ledger: AlertLedger,
                 recorder: Recorder | None = None, *, interval: float = 1.0) -> None:
        self.path = str(path)
        self.source = source
        self.ledger = ledger
        self.recorder = recorder
        self.interval = interval
        self.saves = 0
        # Until the first commit, a ledger save must point at where this session started:
        # nothing has been read yet, so the start is a consistent point.
        positions = getattr(source, "positions", None)
        self._positions: dict[str, dict[str, Any]] = positions() if positions is not None else {}
        self._record_length = recorder.commit() if recorder is not None else None
        self._last = time.monotonic()
        if recorder is not None:
            # Saved at once: the recorder's buffer reaches the file whenever it fills, so a
            # session killed before its first commit must still leave a state that says how
            # long the record was when it started, or the next session would append to lines
            # it is about to record again.
            self._write()

    def due(self, factor: float = 1.0) -> bool:
        """True when the last consistent save is older than ``factor`` intervals."""
        return time.monotonic() - self._last >= self.interval * factor

    def commit(self) -> None:
        """Save at a consistent point: every line read so far has been evaluated."""
        positions = getattr(self.source, "positions", None)
        before = (self._positions, self._record_length)
        self._positions = positions() if positions is not None else {}
        if self.recorder is not None:
            self._record_length = self.recorder.commit()
        self._last = time.monotonic()
        if self.saves and before == (self._positions, self._record_length):
            return  # idle: the file on disk already says this (1,024 idle ranks cost nothing)
        self._write()

    def save_ledger(self) -> None:
        """Save the ledger now, with the last consistent positions (after an alert or stop)."""
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, {
            "version": STATE_VERSION, "saved_at": time.time(),
            "positions": self._positions, "record_length": self._record_length,
            "alerts": self.ledger.to_json(),
        })
        self.saves += 1
