"""The stop side of a monitoring session, ticked by its loop: :class:`StopWatch` (the stop plan
of a control file and/or ``--pid``, and the postmortem when that process exits) and
:class:`StaleControlWatch` (a control file left by another run, reported once).

The stop machinery (psutil) is imported only by sessions that can stop something.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.monitor.engine.alerts import Alert, AlertSink
from trainguard.monitor.session_console import SessionConsole
from trainguard.monitor.session_options import MonitorOptions

if TYPE_CHECKING:
    from trainguard.monitor.act.actions import ControlFileStopper, SentLog, StopPlan
    from trainguard.monitor.act.process import ProcessTarget
    from trainguard.monitor.daemon import Monitor

__all__ = ["StaleControlWatch", "StopWatch"]


class StaleControlWatch:
    """Reports, once, a control file left by another run (the trainer ignores it)."""

    def __init__(self, control_path: str | Path | None, run_dir: Path | None,
                 console: SessionConsole, sinks: list[AlertSink]) -> None:
        self.control_path, self.run_dir = control_path, run_dir
        self.console, self.sinks = console, sinks
        self.done = control_path is None or run_dir is None

    def tick(self) -> None:
        if self.done:
            return
        assert self.run_dir is not None and self.control_path is not None
        from trainguard.monitor.act.actions import read_run_id, stale_control_file

        run_id = read_run_id(self.run_dir)
        if run_id is None:
            return
        self.done = True
        message = stale_control_file(self.control_path, run_id)
        if message:
            alert = Alert(time=time.time(), rule="trainguard.stale_control_file",
                          severity="info", action="warn", metric="", value=None, step=0,
                          rank=None, message=message)
            for sink in self.sinks:
                sink.emit(alert)


class StopWatch:
    """The stop plan (control file and/or ``--pid``), and with ``--pid`` the postmortem when
    the process exits."""

    def __init__(self, target: ProcessTarget | None, run_dir: Path | None) -> None:
        self.target, self.run_dir = target, run_dir
        self.exited_seen = 0
        self.monitor: Monitor | None = None
        self.plan: StopPlan

    @classmethod
    def start(cls, options: MonitorOptions, control: ControlFileStopper | None,
              run_dir: Path | None, console: SessionConsole,
              sinks: list[AlertSink]) -> StopWatch | None:
        if options.pid is None and control is None:
            return None
        from trainguard.monitor.act.actions import SENT_LOG_FILENAME, SentLog, StopPlan
        from trainguard.monitor.act.process import ProcessTarget, parse_signal

        sig = parse_signal(options.signal)
        sent_log = SentLog(run_dir / SENT_LOG_FILENAME if run_dir else None)
        target = None
        if options.pid is not None:
            target = ProcessTarget.capture(options.pid, expected_create_time=(
                _recorded_create_time(sent_log, options.pid)))
            if run_dir is not None:
                sent_log.add(f"target:pid={target.pid}", {"create_time": target.create_time})
        watch = cls(target, run_dir)

        def emit(alert: Alert) -> None:
            if watch.monitor is not None:
                watch.monitor.alerts.append(alert)
            for sink in sinks:
                sink.emit(alert)

        watch.plan = StopPlan(
            control=control, target=target, sig=sig, kill_after=options.kill_after,
            sent_log=sent_log, emit=emit, grace=watch.grace,
            progress=lambda: watch.monitor.max_step if watch.monitor is not None else None)
        return watch

    def grace(self) -> float:
        """A step or two of the observed pace, at least a second."""
        interval = self.monitor.max_step_interval if self.monitor is not None else None
        return min(max(2.0 * (interval or 0.0), 1.0), 60.0)

    def tick(self, monitor: Monitor, stop_event: threading.Event) -> None:
        self.monitor = monitor
        self.plan.tick()
        if self.target is not None and not self.target.alive():
            # One more poll after the exit is seen, so lines written just before it count.
            self.exited_seen += 1
            if self.exited_seen >= 2:
                stop_event.set()

    def finish(self, monitor: Monitor) -> None:
        exited = self.target is not None and not self.target.alive()
        self.plan.finish(exited=exited)
        if self.target is None:
            return
        self.target.close()
        if self.run_dir is None or not exited:
            return
        from trainguard.monitor.act.actions import read_run_id
        from trainguard.monitor.act.postmortem import write_postmortem

        record = self.plan.record
        stopped = record is not None and record.reached_a_running_trainer
        write_postmortem(self.run_dir, status="stopped" if stopped else "exited", returncode=None,
                         last_records=monitor.last_records, alerts=monitor.alerts,
                         stop=record.to_json() if record else None,
                         extra={"pid": self.target.pid, "run_dir": str(self.run_dir),
                                "run_id": read_run_id(self.run_dir)})


def _recorded_create_time(sent_log: SentLog, pid: int) -> float | None:
    """A restarted monitor given the same PID checks it is still the same process."""
    entry = sent_log.get(f"target:pid={pid}")
    value = entry.get("create_time") if entry else None
    return float(value) if isinstance(value, (int, float)) else None
