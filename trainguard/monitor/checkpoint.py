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
  changes: an *intent* is appended to a journal next to the state file before the alert is
  delivered, and a *done* mark after; the state save clears the journal. A restart replays the
  journal, so no alert is raised twice, and delivers again (idempotently: the alerts file is
  checked for it first) what was journaled but not marked done.

The state file is written atomically (:func:`trainguard.monitor.sinks.files.write_atomic`, never
through a symlink); a missing, empty, garbled or damaged file (one that parses but holds the
wrong shapes) is a cold start with a warning, never a crash. The engine stays pure:
duplicates are suppressed here, from the fields of
:class:`~trainguard.monitor.engine.alerts.Alert` alone.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from typing import Any, Protocol

from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.files import open_output, read_regular, write_atomic
from trainguard.monitor.sinks.record import Recorder
from trainguard.rules.models import SEVERITY_ORDER

__all__ = ["AlertJournal", "AlertLedger", "Checkpointer", "STATE_VERSION", "journal_path",
           "load_state", "replay_journal"]

STATE_VERSION = 1
#: Alert keys remembered for deduplication; older ones are forgotten first.
MAX_RAISED_KEYS = 10_000


class _Positioned(Protocol):
    def positions(self) -> dict[str, dict[str, Any]]:
        """Checkpointable positions per stream."""


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """The saved state and a warning; an absent file is ``({}, None)``, a bad one a warning.

    A file that parses but does not hold what a state holds (``"positions": "x"``, a negative
    offset, a ledger entry of the wrong shape) is a cold start with a warning too, never a
    crash later. A FIFO or other non-file at the path is refused without blocking on it.
    """
    name = os.fspath(path)
    try:
        raw = _read_regular(name)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read state {name}: {exc.strerror or exc}; starting cold"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, f"state {name} is empty or damaged; starting cold"
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}, f"state {name} has an unknown format; starting cold"
    problem = _invalid_state(data)
    if problem:
        return {}, f"state {name} is damaged ({problem}); starting cold"
    return data, None


#: The largest state file read (a ledger of MAX_RAISED_KEYS keys is well under a megabyte).
MAX_STATE_BYTES = 64 << 20


def _read_regular(name: str, limit: int = MAX_STATE_BYTES) -> bytes:
    """Read a regular file without blocking on a FIFO planted at its name."""
    return read_regular(name, limit)


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _invalid_state(data: dict[str, Any]) -> str | None:
    """What is wrong with a decoded state, or ``None``: every field the loaders read is
    checked here, so nothing downstream meets a shape it does not expect."""
    positions = data.get("positions", {})
    if positions is None:
        positions = {}
    if not isinstance(positions, dict):
        return "positions is not an object"
    for path, pos in positions.items():
        if not isinstance(pos, dict):
            return f"position of {path} is not an object"
        for key in ("offset", "line", "fp_len"):
            if not _is_int(pos.get(key)):
                return f"position of {path}: {key} is not a non-negative integer"
        for key in ("dev", "ino"):
            if not _is_int(pos.get(key)):
                return f"position of {path}: {key} is not a non-negative integer"
        if not isinstance(pos.get("fp_hash"), str):
            return f"position of {path}: fp_hash is not a string"
    length = data.get("record_length")
    if length is not None and not _is_int(length):
        return "record_length is not a non-negative integer"
    alerts = data.get("alerts", {})
    if alerts is None:
        alerts = {}
    if not isinstance(alerts, dict):
        return "alerts is not an object"
    shapes = {"firing": 3, "raised": 4, "stops": 2}
    for key, width in shapes.items():
        entries = alerts.get(key, [])
        if not isinstance(entries, list):
            return f"alerts.{key} is not a list"
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == width
                    and isinstance(entry[0], str)
                    and (entry[1] is None or type(entry[1]) is int)):
                return f"alerts.{key} holds {str(entry)[:40]}"
            if key == "raised" and not (type(entry[2]) is int and isinstance(entry[3], str)):
                return f"alerts.{key} holds {str(entry)[:40]}"
            if key == "firing" and not isinstance(entry[2], str):
                return f"alerts.{key} holds {str(entry)[:40]}"
    return None


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
    """Saves positions, record length and ledger to one state file, atomically; between saves
    every new alert is appended to a journal next to it (``STATE.journal``) *before* it is
    delivered, so an alert storm costs one short append per alert, not a rewrite of the whole
    ledger, and a ``kill -9`` between delivery and the next save never delivers it twice.

    A save or an append that fails (a full disk, ENOSPC) never ends the session: ``problem``
    says what failed, the monitor reports itself degraded and keeps alerting, and the save is
    retried at every interval until it succeeds.
    """

    def __init__(self, path: str | os.PathLike[str], source: object, ledger: AlertLedger,
                 recorder: Recorder | None = None, *, interval: float = 1.0) -> None:
        self.path = str(path)
        self.source = source
        self.ledger = ledger
        self.recorder = recorder
        self.interval = interval
        self.saves = 0
        #: Why the state or the journal could not be written, while that lasts.
        self.problem: str | None = None
        self._journal = AlertJournal(journal_path(self.path))
        self._unsaved = False
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
        if (self.saves and not self._unsaved
                and before == (self._positions, self._record_length)):
            return  # idle: the file on disk already says this (1,024 idle ranks cost nothing)
        self._write()

    def note_intent(self, alert: Alert) -> None:
        """Journal ``alert`` (admitted by the ledger) before it is delivered."""
        self._unsaved = True
        self._journal_problem(self._journal.append({"intent": alert.to_json()}))

    def note_delivered(self, alert: Alert) -> None:
        """Journal that ``alert`` reached every sink (and its stop, if any, was sent)."""
        self._journal_problem(self._journal.append(
            {"done": [alert.rule, alert.rank, alert.step, alert.state],
             "stop": alert.delivery is not None and alert.action == "stop"}))

    def save_ledger(self) -> None:
        """Save the whole state now, with the last consistent positions."""
        self._write()

    def _journal_problem(self, error: str | None) -> None:
        if error is not None:
            self.problem = f"cannot append to the alert journal: {error}; alerts still go to " \
                           "the console, saving is retried"

    def _write(self) -> None:
        # Compact: json's C encoder. With ``indent`` json falls back to its Python encoder,
        # whose nested closures form reference cycles: ~33 cyclic objects a save, once a
        # second, left for the (deferred, see collector.py) collector; that was the soak's slow
        # RSS growth (0.27 MiB a minute at 8 ranks x 100 lines/s).
        data = json.dumps({
            "version": STATE_VERSION, "saved_at": time.time(),
            "positions": self._positions, "record_length": self._record_length,
            "alerts": self.ledger.to_json(),
        }, allow_nan=False, separators=(",", ":")).encode() + b"\n"
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            self._unsaved = True
            self.problem = (f"cannot save state {self.path}: {exc.strerror or exc}; alerts still "
                            f"go to the console, retried every {self.interval:g} s (a restart "
                            "now re-reads from the last save)")
            return
        self._unsaved = False
        self.problem = None
        self.saves += 1
        self._journal_problem(self._journal.clear())  # the state now holds all it said

    def close(self) -> None:
        """Release the journal."""
        self._journal.close()


def journal_path(state_path: str) -> str:
    """Where the alert journal of the state file ``state_path`` lives."""
    return state_path + ".journal"


class AlertJournal:
    """An append-only file of alert intents and deliveries since the last state save.

    Appends are plain ``write`` calls (no fsync per alert): what a process wrote survives its
    ``kill -9``; the state save that clears the journal is fsynced. Opened on first use, and
    never through a symlink (see :mod:`trainguard.monitor.sinks.files`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, entry: dict[str, Any]) -> str | None:
        """Append one entry; the error text when it could not be written, else ``None``."""
        data = json.dumps(entry, allow_nan=False, separators=(",", ":")).encode() + b"\n"
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._fd = open_output(self.path)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            return str(exc.strerror or exc)
        return None

    def clear(self) -> str | None:
        """Empty the journal (the state file now holds what it said)."""
        if self._fd is None:
            if not os.path.lexists(self.path):
                return None
            try:
                self._fd = open_output(self.path)
            except OSError as exc:
                return str(exc.strerror or exc)
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            return str(exc.strerror or exc)
        return None

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def replay_journal(state_path: str, ledger: AlertLedger) -> tuple[list[Alert], str | None]:
    """Apply the journal left by the last session to ``ledger``; return the alerts it
    journaled but did not finish delivering (to deliver again, idempotently) and a warning.

    Replaying entries the state already holds changes nothing (the ledger admits a key once).
    A torn last line (killed mid-append) is ignored: its alert was never delivered, and the
    events that raise it are read again.
    """
    path = journal_path(state_path)
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        return [], f"cannot read the alert journal {path}: {exc.strerror or exc}"
    intents: dict[tuple[str, int | None, int, str], Alert] = {}
    done: dict[tuple[str, int | None, int, str], bool] = {}
    for line in raw.split(b"\n"):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(entry, dict):
            continue
        alert = _alert_of(entry.get("intent"))
        if alert is not None:
            key = (alert.rule, alert.rank, alert.step, alert.state)
            if ledger.admit(alert):
                intents[key] = alert
            continue
        mark = entry.get("done")
        if (isinstance(mark, list) and len(mark) == 4 and isinstance(mark[0], str)
                and (mark[1] is None or type(mark[1]) is int) and type(mark[2]) is int
                and isinstance(mark[3], str)):
            done[(mark[0], mark[1], mark[2], mark[3])] = bool(entry.get("stop"))
    for key, stopped in done.items():
        alert = intents.pop(key, None)
        if alert is not None and stopped:
            ledger.note_stop(alert)
    ledger.suppressed = 0
    return list(intents.values()), None


def _alert_of(obj: Any) -> Alert | None:
    if not isinstance(obj, dict):
        return None
    try:
        value = obj.get("value")
        alert = Alert(
            time=float(obj["time"]) if obj.get("time") is not None else None,
            rule=str(obj["rule"]), severity=str(obj["severity"]), action=str(obj["action"]),
            metric=str(obj.get("metric", "")),
            value=None if value is None else float(value),
            step=int(obj["step"]), rank=obj.get("rank") if type(obj.get("rank")) is int else None,
            message=str(obj.get("message", "")),
            recommendation=str(obj.get("recommendation", "")),
            reference=str(obj.get("reference", "")), state=str(obj.get("state", "firing")))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return alert
