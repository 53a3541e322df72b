"""Actions: how a stop rule reaches the trainer. The only module that writes control files.

Observe-only unless the user asked for stopping: without a stopper, a stop rule is reported as
"would stop, but no way to stop was given".

Ways to stop, combined by :class:`StopPlan`: the control file first (a cooperative trainer
saves and ends at its next step), then a signal to the process group after a grace period if the
trainer has not stopped (or at once when it shows no sign of reading the control file), then
SIGKILL after ``kill_after`` seconds only when asked. Each stop is sent once, even across a
monitor restart: the control file itself and a small sent-log (``RUN_DIR/stops_sent.json``)
remember what was sent. Whether the trainer obeyed is reported as an alert with
``state="stop_outcome"``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trainguard.control import (
    MAX_METADATA_BYTES,
    StopRequest,
    read_small_json,
    read_stop_request,
    write_json_atomic,
    write_stop_request,
)
from trainguard.monitor.engine.alerts import Alert

if TYPE_CHECKING:  # psutil: imported by whoever builds a ProcessTarget
    from trainguard.monitor.act.process import ProcessTarget

__all__ = ["ControlFileStopper", "SentLog", "StopPlan", "Stopper", "read_run_id",
           "stale_control_file", "SENT_LOG_FILENAME"]

SENT_LOG_FILENAME = "stops_sent.json"


class Stopper(Protocol):
    """Delivers a stop for a firing stop rule; returns how it was delivered, or None if it
    was already delivered before (each stop is sent once)."""

    def stop(self, alert: Alert) -> str | None:
        """Ask the trainer to stop because of ``alert``."""


def read_run_session(run_dir: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """The run id and writer session id recorded in ``run_metadata.json`` (None for what is
    not there). Never raises or blocks, whatever the file is (see control.read_small_json)."""
    meta = read_small_json(Path(run_dir) / "run_metadata.json", MAX_METADATA_BYTES, None)
    if not isinstance(meta, dict):
        return None, None
    run_id, session = meta.get("run_id"), meta.get("session_id")
    return (run_id if isinstance(run_id, str) else None,
            session if isinstance(session, str) else None)


def read_session_start(run_dir: str | os.PathLike[str]) -> float | None:
    """When the writer session now recorded in ``run_metadata.json`` began (its
    ``session_start``, wall-clock seconds), or None."""
    meta = read_small_json(Path(run_dir) / "run_metadata.json", MAX_METADATA_BYTES, None)
    start = meta.get("session_start") if isinstance(meta, dict) else None
    return float(start) if isinstance(start, (int, float)) and not isinstance(start, bool) \
        else None


#: How much older than the running session an alert's event must be to count as an earlier
#: session's: the clocks of one job's nodes differ by milliseconds (NTP), while a restart
#: (a process start, a model load) takes seconds.
SESSION_CLOCK_SLACK = 2.0


def read_run_id(run_dir: str | os.PathLike[str]) -> str | None:
    """The run id the trainer's writer recorded in ``run_metadata.json``, if any."""
    return read_run_session(run_dir)[0]


def stale_control_file(control_path: str | os.PathLike[str], run_id: str | None) -> str | None:
    """A message when the control file holds a stop request for another run, else None.

    The trainer ignores such a file (see :func:`trainguard.control.applies_to`); the monitor
    says so, because a person who finds ``control.json`` may think this run was stopped.
    """
    try:
        request = read_stop_request(control_path)
    except Exception:  # noqa: BLE001 - the check is advice; it must never end the monitor
        return None
    if request is None or run_id is None or request.run_id in (None, run_id):
        return None
    return (f"stale control file {control_path}: a stop request for run {request.run_id} "
            f"({request.rule}, step {request.step}); this run is {run_id}, so the trainer "
            "ignores it")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class SentLog:
    """What stops were already sent, persisted so a restarted monitor does not send them again.

    A small JSON object rewritten atomically; a missing or corrupt file is an empty log (the
    worst case is one repeated, idempotent stop, never a lost one). ``path=None`` keeps it in
    memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict) and isinstance(data.get("sent"), dict):
                    self.entries = dict(data["sent"])
            except (OSError, ValueError):
                pass

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key`` if it was sent."""
        return self.entries.get(key)

    def add(self, key: str, record: dict[str, Any]) -> None:
        """Remember ``key`` as sent, durably."""
        self.entries[key] = record
        if self.path is not None:
            try:
                write_json_atomic(self.path, {"version": 1, "sent": self.entries})
            except OSError:
                pass  # the stop itself was delivered; losing its record costs a repeat at most


class ControlFileStopper:
    """Writes the control file once, atomically, with the run id when it is known.

    A control file already holding a request for this run (a restarted monitor) counts as sent.
    """

    def __init__(self, path: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None,
                 run_id: str | None = None) -> None:
        self.path = Path(path)
        self.run_dir = Path(run_dir) if run_dir is not None else self.path.parent
        self.run_id = run_id
        self.sent: StopRequest | None = None
        #: A request whose write failed (ENOSPC...), tried again at every retry().
        self.pending: StopRequest | None = None
        self.failure: str | None = None

    def _already_sent(self, run_id: str | None) -> StopRequest | None:
        existing = read_stop_request(self.path)
        if existing is not None and run_id is not None and existing.run_id == run_id:
            return existing
        return None

    def stop(self, alert: Alert) -> str | None:
        """Write the stop request unless one was already sent. A write that fails (a full
        disk) is kept and tried again by :meth:`retry`; the delivery says it failed."""
        if self.sent is not None:
            return None
        run_id, session = (self.run_id, None) if self.run_id else read_run_session(self.run_dir)
        earlier = self._already_sent(run_id)
        if earlier is not None and (session is None or earlier.session in (None, session)):
            self.sent = earlier
            return None
        request = StopRequest(
            rule=alert.rule, reason=alert.message, step=alert.step, time=time.time(),
            severity=alert.severity, run_id=run_id, session=session,
        )
        self.pending = request
        return self.retry() or (f"control file {self.path} NOT written ({self.failure}); "
                                "trying again every poll")

    def retry(self) -> str | None:
        """Write a request whose write failed; the delivery when it is written now."""
        request = self.pending
        if request is None:
            return None
        try:
            write_stop_request(self.path, request)
        except OSError as exc:
            self.failure = f"{exc.strerror or exc}" + (f" [errno {exc.errno}]" if exc.errno
                                                       else "")
            return None
        self.pending, self.failure = None, None
        self.sent = request
        return f"control_file:{self.path}"


@dataclass(slots=True)
class StopRecord:
    """One stop: what triggered it, how and when it was delivered, and what the trainer did."""

    rule: str
    step: int | None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    obeyed: bool | None = None
    outcome: str | None = None
    #: The watched process had already exited when the stop was decided: nothing was stopped.
    target_gone_first: bool = False

    def to_json(self) -> dict[str, Any]:
        """For the postmortem."""
        return {"rule": self.rule, "step": self.step, "deliveries": self.deliveries,
                "obeyed": self.obeyed, "outcome": self.outcome,
                "target_gone_first": self.target_gone_first}

    @property
    def reached_a_running_trainer(self) -> bool:
        """Whether a stop was delivered while the trainer still ran (the run *was* stopped)."""
        return not self.target_gone_first and any(d.get("delivered", True)
                                                  for d in self.deliveries)


class StopPlan:
    """Control file first, then a signal after a grace period, then SIGKILL if asked.

    The loop calls :meth:`tick` often; it escalates and decides whether the trainer obeyed,
    reporting that through ``emit`` as an alert with ``state="stop_outcome"``.

    ``grace()`` says how long a cooperative trainer gets (a step or two); ``cooperative()``
    whether it shows signs of reading the control file (it writes events of its own);
    ``progress()`` the highest step seen; ``exited()`` whether the trainer process ended
    (None: unknown, i.e. no process to watch).
    """

    def __init__(
        self,
        *,
        control: ControlFileStopper | None = None,
        target: ProcessTarget | None = None,
        sig: signal.Signals = signal.SIGTERM,
        kill_after: float | None = None,
        exit_grace: float = 30.0,
        signal_grace: float = 10.0,
        sent_log: SentLog | None = None,
        grace: Callable[[], float] = lambda: 5.0,
        cooperative: Callable[[], bool] = lambda: True,
        progress: Callable[[], int | None] = lambda: None,
        exited: Callable[[], bool | None] | None = None,
        emit: Callable[[Alert], None] = lambda alert: None,
    ) -> None:
        self.control = control
        self.target = target
        self.sig = sig
        self.kill_after = kill_after
        #: A trainer that stopped stepping after the control file is saving and exiting: it
        #: gets this long (torchrun's 30 s) before the signal.
        self.exit_grace = exit_grace
        #: How long a process may outlive a delivered signal before the stop is reported as not
        #: obeyed (it keeps being watched: SIGKILL still follows when ``kill_after`` is set).
        self.signal_grace = signal_grace
        self._patient = False
        self._stop_mono = 0.0
        self.sent_log = sent_log or SentLog(None)
        self._grace = grace
        self._cooperative = cooperative
        self._progress = progress
        self._exited = exited or ((lambda: not target.alive()) if target is not None else None)
        self._emit = emit
        self.record: StopRecord | None = None
        self._alert: Alert | None = None
        self._signal_at: float | None = None  # when to send the signal (monotonic)
        self._signalled_at: float | None = None
        self._killed = False
        self._grace_ends: float | None = None

    def problems(self) -> list[str]:
        """What keeps the stop from being delivered (a control file that cannot be written)."""
        control = self.control
        if control is not None and control.pending is not None:
            return [f"stop request for {control.pending.rule} not written to {control.path}: "
                    f"{control.failure}; retrying"]
        return []

    @property
    def can_stop(self) -> bool:
        """Whether any way to stop was given."""
        return self.control is not None or self.target is not None

    # -- the stop --------------------------------------------------------------------------------

    def stop(self, alert: Alert) -> str | None:
        """Start stopping for ``alert``; None when a stop was already sent (now or before a
        restart)."""
        if self.record is not None:
            return None
        earlier = self._earlier_session(alert)
        if earlier is not None:
            # A fresh monitor reading a directory from its start meets the NaN that ended
            # yesterday's session: stopping today's session for it would stop a run nobody
            # asked to stop. Said, not delivered; a stop for today's events still goes out.
            self._emit(replace(alert, state="stop_outcome", time=time.time(),
                               message=f"stop of {alert.rule}: {earlier}", recommendation="",
                               reference="", delivery="not delivered"))
            return earlier
        now, mono = time.time(), time.monotonic()
        self._stop_mono = mono
        self.record = StopRecord(alert.rule, alert.step)
        self._alert = alert
        parts: list[str] = []
        if self._exited is not None and self._exited():
            # The trainer ended before the rule fired (events read after its exit): saying it
            # "obeyed" a stop it never received would be false. No signal goes to a dead PID.
            self.record.target_gone_first = True
            self.target = None
            self._signal_at = None
        if self.control is not None:
            how = self.control.stop(alert)
            if how is None:
                req = self.control.sent
                when = _stamp(req.time) if req is not None else "earlier"
                parts.append(f"control file already written at {when} (before a restart)")
                self.record.deliveries.append({"method": "control_file", "time": req.time if req
                                               else None, "detail": "sent before a restart"})
            elif self.control.pending is not None:  # the write failed: retried by tick()
                parts.append(how)
                self.record.deliveries.append({"method": "control_file", "time": None,
                                               "detail": how})
            else:
                parts.append(f"{how} at {_stamp(now)}")
                self.record.deliveries.append({"method": "control_file", "time": now,
                                               "detail": str(self.control.path)})
        grace = max(0.0, self._grace())
        self._grace_ends = mono + grace
        if self.target is not None:
            if self.control is None or not self._cooperative():
                self._signal_at = mono
            else:
                self._signal_at = mono + grace
                self._patient = True
                parts.append(f"{self.sig.name} to follow in {grace:.1f}s unless it stops")
        self.tick()
        for d in self.record.deliveries:
            if d["method"] == "signal":
                when = f" at {_stamp(d['time'])}" if d.get("time") else ""
                parts.append(f"{d['detail']}{when}")
        return "; ".join(parts) if parts else None

    def _earlier_session(self, alert: Alert) -> str | None:
        """Why ``alert`` must not stop what runs now, when its event was written before the
        session the stop would reach began (the recorded ``session_start``, or the watched
        process's start), else None. An event without a time cannot tell: it stops."""
        starts = []
        if self.control is not None:
            recorded = read_session_start(self.control.run_dir)
            if recorded is not None:
                starts.append(recorded)
        if self.target is not None:
            starts.append(self.target.create_time)
        if alert.time is None or not starts or alert.time >= max(starts) - SESSION_CLOCK_SLACK:
            return None
        return (f"not stopped: the event that fired it (step {alert.step}, written "
                f"{_stamp(alert.time)}) is older than the session running now (started "
                f"{_stamp(max(starts))}); it belongs to an earlier run of this directory")

    def _signal(self, sig: signal.Signals) -> None:
        assert self.target is not None and self.record is not None
        key = f"signal:{sig.name}:pid={self.target.pid}:created={self.target.create_time:.3f}"
        earlier = self.sent_log.get(key)
        if earlier is not None:
            self.record.deliveries.append({"method": "signal", "signal": sig.name,
                                           "time": earlier.get("time"),
                                           "detail": f"{sig.name} already sent before a restart"})
            return
        outcome = self.target.send(sig)
        now = time.time()
        entry = {"method": "signal", "signal": sig.name, "time": now, "delivered":
                 outcome.delivered, "detail": outcome.describe()}
        self.record.deliveries.append(entry)
        if outcome.delivered:
            self.sent_log.add(key, {"time": now, "rule": self.record.rule,
                                    "step": self.record.step})

    # -- the follow-up -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Escalate when due and settle whether the trainer obeyed. Cheap when nothing is due."""
        record = self.record
        if record is None:
            return
        control = self.control
        if control is not None and control.pending is not None and control.retry():
            record.deliveries.append({"method": "control_file", "time": time.time(),
                                      "detail": f"{control.path} (written on a retry)"})
        kill_due = (self.kill_after is not None and self._signalled_at is not None
                    and not self._killed)
        if record.outcome is not None and self._signal_at is None and not kill_due:
            return
        mono = time.monotonic()
        exited = self._exited() if self._exited is not None else None
        if exited and record.target_gone_first:
            self._settle(None, "nothing to stop: the process had already exited before the "
                         "rule fired")
            return
        if exited:
            self._settle(True, self._exit_description())
            self._signal_at = None
            self._killed = True  # nothing left to escalate against
            return
        if self._signal_at is not None:
            went_on = self._went_on()
            if went_on or mono >= self._signal_at:
                if self._patient and not went_on:
                    self._patient = False
                    self._signal_at = self._stop_mono + max(self.exit_grace, self._grace())
                else:
                    self._signal_at = None
                    self._signalled_at = mono
                    self._signal(self.sig)
        if (self.kill_after is not None and self._signalled_at is not None and not self._killed
                and mono >= self._signalled_at + self.kill_after and self.sig != signal.SIGKILL):
            self._killed = True
            self._signal(signal.SIGKILL)
        if (record.outcome is None and exited is False and self._signalled_at is not None
                and (self.kill_after is None or self._killed)
                and self._delivered_signal() and mono >= self._signalled_at + self.signal_grace):
            last = self._progress()
            went = f"; it went on to step {last}" if self._went_on() else ""
            self._settle(False, f"not obeyed: pid {self.target.pid if self.target else '?'} "
                         f"still running {mono - self._signalled_at:.1f}s after "
                         f"{self._last_signal()}{went}")
        if record.outcome is None and exited is None and self._grace_ends is not None \
                and mono >= self._grace_ends:
            if self._went_on():
                self._settle(False, f"not obeyed: the trainer went on to step {self._progress()}")
            elif self.target is None:
                self._settle(True, f"obeyed: events stopped at step {self._progress()}")

    def _went_on(self) -> bool:
        """Whether the trainer kept stepping (two steps past the one that fired)."""
        last = self._progress()
        step = self.record.step if self.record is not None else None
        return last is not None and step is not None and last > step + 1

    def _delivered_signal(self) -> bool:
        return any(d["method"] == "signal" and d.get("delivered", True)
                   for d in self.record.deliveries) if self.record is not None else False

    def _last_signal(self) -> str:
        sent = [d.get("signal") for d in self.record.deliveries  # type: ignore[union-attr]
                if d["method"] == "signal" and d.get("delivered", True)]
        return str(sent[-1]) if sent else "the signal"

    def _exit_description(self) -> str:
        methods = [d.get("signal") or d["method"] for d in self.record.deliveries  # type: ignore[union-attr]
                   if d.get("delivered", True)]
        after = methods[-1] if methods else "the stop"
        return f"obeyed: the process exited after {after}"

    def _settle(self, obeyed: bool | None, detail: str) -> None:
        record = self.record
        if record is None or record.outcome is not None:
            return
        record.obeyed, record.outcome = obeyed, detail
        if self._alert is not None:
            self._emit(replace(self._alert, state="stop_outcome", time=time.time(),
                               message=f"stop of {record.rule}: {detail}",
                               recommendation="", reference="",
                               delivery="; ".join(str(d["detail"]) for d in record.deliveries)))

    def finish(self, exited: bool) -> None:
        """The run is over: settle the outcome if it is still open."""
        if self.record is not None and self.record.outcome is None:
            if exited and self.record.target_gone_first:
                self._settle(None, "nothing to stop: the process had already exited before "
                             "the rule fired")
            elif exited:
                self._settle(True, self._exit_description())
            else:
                self.tick()
