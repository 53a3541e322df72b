"""``trainguard run -- COMMAND``: own the trainer, watch it, stop it, explain how it ended.

The zero-instrumentation way in. The command starts in its own process group (so a stop reaches
its children too) with ``PYTHONUNBUFFERED=1`` (a piped Python trainer otherwise prints nothing
until it exits) and ``TRAINGUARD_RUN_DIR`` (so ``EventWriter`` and the TRL callback find the run
directory and its control file unconfigured). Its stdout and stderr are merged through one pipe
and every byte is passed through unchanged, while complete lines are parsed for metrics; the run
directory's ``*.jsonl`` events are followed too. When a stop rule fires: control file first,
SIGTERM to the group after a grace of a step or two if the trainer is still running (at once if
it writes no events of its own, i.e. cannot be reading the control file), SIGKILL after
``kill_after`` seconds only if asked. Silence on both channels for longer than the hang timeout
is reported. ``RUN_DIR/postmortem.json`` is written when the command ends or hangs.

Exit codes: the command's own exit code; 128+N when it was killed by signal N that trainguard did
not send; :data:`EXIT_STOPPED` (3) when trainguard stopped it; 2 when it exited 0 on its own
but an alert of high severity or above fired; 1 when it could not be started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from trainguard.control import CONTROL_FILENAME, RUN_DIR_ENV
from trainguard.events import ParseSkip, Record
from trainguard.exceptions import ConfigError
from trainguard.monitor.act.actions import (
    SENT_LOG_FILENAME,
    ControlFileStopper,
    SentLog,
    StopPlan,
    read_run_id,
    stale_control_file,
)
from trainguard.monitor.act.postmortem import write_postmortem
from trainguard.monitor.act.process import ProcessTarget
from trainguard.monitor.daemon import EXIT_ALERT, LineParser, Monitor, json_line_parser
from trainguard.monitor.engine.alerts import Alert, AlertSink
from trainguard.monitor.ingest.auto_map import session_field_map
from trainguard.monitor.ingest.composite import CompositeSource
from trainguard.monitor.ingest.pipe import PipeSource
from trainguard.monitor.ingest.signals import load_scanner
from trainguard.monitor.ingest.sources import DirectorySource, Line
from trainguard.monitor.ingest.stdout import StdoutParser, make_line_parser
from trainguard.monitor.packs import DEFAULT_RULES, PackSelector
from trainguard.monitor.sinks.console import ConsoleSink
from trainguard.monitor.sinks.jsonl import JsonlAlertSink
from trainguard.monitor.sinks.observer import SessionObserver
from trainguard.rules.inline import parse_inline_rule
from trainguard.rules.loader import load_rules
from trainguard.rules.models import SEVERITY_ORDER

__all__ = ["EXIT_STOPPED", "OUTPUT_STREAM", "RunOptions", "RunResult", "choose_output_parser",
           "run_command"]

#: ``trainguard run`` exits with this when it stopped the command (whatever the command's code).
EXIT_STOPPED = 3
_HIGH = SEVERITY_ORDER["high"]
OUTPUT_STREAM = "<output>"
ALERTS_FILENAME = "alerts.jsonl"
TAIL_LINES = 50


@dataclass(slots=True)
class RunOptions:
    """Everything ``trainguard run`` can be told."""

    command: list[str]
    run_dir: str | None = None
    rules: list[str] = field(default_factory=list)
    field_maps: list[str] = field(default_factory=list)
    #: Seconds a cooperative trainer gets after the control file; None: 2 step intervals, >= 1 s.
    grace: float | None = None
    kill_after: float | None = None
    #: Seconds of silence that count as a hang; None: max(5 x max step interval, hang_floor).
    hang_timeout: float | None = None
    hang_floor: float = 120.0
    checkpoint_dirs: list[str] = field(default_factory=list)
    poll_interval: float = 0.05
    quiet: bool = False
    #: Inline rules (``--alert``), as for ``trainguard monitor``.
    inline_alerts: list[str] = field(default_factory=list)
    #: How the command's plain output is read (:mod:`~trainguard.monitor.ingest.stdout`): a preset
    #: or a re2 pattern; None auto-detects. ``logging_steps`` derives the TRL step.
    regex: str | None = None
    logging_steps: int = 1
    #: The user's own ``NAME=PATTERN`` signals (``--signal``), read with the built-in ones.
    signals: list[str] = field(default_factory=list)
    #: More alert sinks (``--notify``) and session observers (started, closed), as for monitor.
    sinks: list[AlertSink] = field(default_factory=list)
    observers: list[SessionObserver] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RunResult:
    """How the command ended and what trainguard did."""

    exit_code: int
    returncode: int | None
    stopped: bool
    hung: bool
    postmortem: Path
    alerts: list[Alert]


def _json_lines_only(line: Line) -> Record | ParseSkip | None:
    """Canonical JSON lines in the output; other lines are the trainer's prose, not skips."""
    if not line.data.lstrip().startswith(b"{"):
        return None
    return json_line_parser(line)


def choose_output_parser(regex: str | None = None, logging_steps: int = 1,
                         signals: list[str] | tuple[str, ...] = ()) -> LineParser:
    """THE place where the parser of the command's output is chosen.

    Canonical JSON lines, and the trainer's plain stdout through the stdout presets (or the
    user's ``--regex``): a trainer that knows nothing of trainguard is monitored from what it
    prints. Other lines are prose, ignored.
    """
    return make_line_parser(regex, auto=True, logging_steps=logging_steps, signals=signals,
                            map_keys=True)


def _dispatching_parser(output_parser: LineParser,
                        own_events: Callable[[], bool] = lambda: False,
                        signals: LineParser | None = None,
                        step: Callable[[], int] = lambda: 0) -> LineParser:
    """Output lines through ``output_parser``; run-directory files as canonical JSONL.

    Once the trainer writes events of its own (``own_events()``, e.g. the TRL callback), its
    printed logs are the same logs again, rounded: only JSON lines of the output are read then,
    so no step is evaluated twice. (The callback writes its event before the Trainer prints the
    dict, and a poll reads the run directory before the output, so the switch is in place by the
    time the first printed dict is read.) Known warning and error lines (``signals``: an OOM,
    an NCCL timeout, a traceback) are read still, at the latest step the monitor has seen.
    """
    def parse(line: Line) -> Record | ParseSkip | list[Record | ParseSkip] | None:
        if line.stream == OUTPUT_STREAM:
            if own_events():
                found = _json_lines_only(line)
                if found is None and signals is not None:
                    signal = signals(line)
                    if type(signal) is Record:
                        return Record(step(), signal.metrics, None, 0, "train", True)
                return found
            return output_parser(line)
        return json_line_parser(line)
    return parse


class OutputSource(PipeSource):
    """The command's merged output: passed through byte for byte, split into lines for parsing;
    its last lines are kept for the postmortem."""

    def __init__(self, fd: int, passthrough: BinaryIO | None) -> None:
        super().__init__(fd, OUTPUT_STREAM, passthrough=passthrough, keep_last=TAIL_LINES)


class _RunSource(CompositeSource):
    """The output and the run directory as one source; counts the trainer's own event lines."""

    streaming = True

    def __init__(self, output: OutputSource, directory: DirectorySource) -> None:
        super().__init__(directory, output)
        self.name = "trainguard run"
        self.output = output
        self.directory = directory
        self.event_lines = 0

    def poll(self) -> list[Line]:
        own = self.directory.poll()
        self.event_lines += len(own)
        return self.output.poll() + own

    @property
    def exhausted(self) -> bool:
        return False  # the runner decides when the run is over


def _default_run_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"run-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def _system_alert(rule: str, severity: str, step: int, message: str,
                  recommendation: str = "") -> Alert:
    return Alert(time=time.time(), rule=rule, severity=severity, action="warn", metric="",
                 value=None, step=step, rank=None, message=message,
                 recommendation=recommendation)


def run_command(options: RunOptions, *, passthrough: BinaryIO | None = None) -> RunResult:
    """Run ``options.command`` under watch and return how it ended.

    Raises :class:`~trainguard.exceptions.ConfigError` when the rules cannot be loaded or the
    command cannot be started.
    """
    if not options.command:
        raise ConfigError("no command given: trainguard run [OPTIONS] -- COMMAND ...")
    rules = load_rules(options.rules or DEFAULT_RULES)
    rules += [parse_inline_rule(text, i) for i, text in enumerate(options.inline_alerts, 1)]
    output_parser = choose_output_parser(options.regex, options.logging_steps, options.signals)
    signal_parser = StdoutParser([], json_lines=False, signals=load_scanner(options.signals))
    console = ConsoleSink()

    def say(text: str) -> None:
        if not options.quiet:
            console.line(text, style="dim")

    # As in `trainguard monitor`, and before the command starts (a bad --field-map stops it
    # here): --field-map, --regex's own map, else the map of the framework the keys name.
    field_map = session_field_map(options.field_maps, options.regex, say)
    run_dir = Path(options.run_dir) if options.run_dir else _default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    control_path = run_dir / CONTROL_FILENAME
    alerts_path = run_dir / ALERTS_FILENAME
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{RUN_DIR_ENV: str(run_dir.resolve())})
    if passthrough is None:
        passthrough = sys.stdout.buffer
    try:
        proc = subprocess.Popen(options.command, stdout=subprocess.PIPE,  # noqa: S603
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as exc:
        raise ConfigError(f"cannot start {options.command[0]!r}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    try:
        target: ProcessTarget | None = ProcessTarget.capture(proc.pid, is_child=True)
    except ConfigError:
        target = None  # it already exited: there is nothing to signal
    started = time.monotonic()
    output = OutputSource(proc.stdout.fileno(), passthrough)
    source = _RunSource(output, DirectorySource(run_dir, exclude=[str(alerts_path),
                                                                  str(control_path)]))
    jsonl = JsonlAlertSink(alerts_path)
    sinks: list[AlertSink] = [jsonl] if options.quiet else [jsonl, console]
    sinks.extend(options.sinks)

    def emit(alert: Alert) -> None:
        monitor.alerts.append(alert)
        for sink in sinks:
            sink.emit(alert)

    def grace() -> float:
        if options.grace is not None:
            return options.grace
        interval = monitor.max_step_interval or 0.0
        return min(max(2.0 * interval, 1.0), 60.0)

    plan = StopPlan(
        control=ControlFileStopper(control_path, run_dir=run_dir), target=target,
        kill_after=options.kill_after, sent_log=SentLog(run_dir / SENT_LOG_FILENAME),
        grace=grace, cooperative=lambda: source.event_lines > 0,
        progress=lambda: monitor.max_step, exited=lambda: proc.poll() is not None, emit=emit)

    # The same choice as `trainguard monitor`: the callback's recorded kind, else the keys.
    selector = PackSelector(options.rules, run_dir, say, command=options.command)
    monitor = Monitor(source, rules, field_map=field_map, sinks=sinks, stopper=plan,
                      parser=_dispatching_parser(output_parser,
                                                 lambda: source.event_lines > 0,
                                                 signal_parser,
                                                 lambda: monitor.max_step or 0),
                      trainer_rules=selector, config_report=selector.config_report)
    selector.attach(monitor.engine, monitor.route, lambda: monitor.max_step or 0)
    for observer in options.observers:
        observer.start(monitor)
    if not options.quiet:
        console.line(f"trainguard run: {' '.join(options.command)} (pid {proc.pid}); run dir "
                     f"{run_dir}; {len(rules)} rules ("
                     + (", ".join(options.rules) if options.rules
                        else ", ".join(DEFAULT_RULES) + " + the trainer's pack")
                     + f"); stops via {control_path} then SIGTERM",
                     style="dim")

    hang: dict[str, object] | None = None
    hang_reported = False
    stale_checked = False
    interrupted: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        # The first Ctrl-C (or SIGTERM) goes to the command as it is, so it can save and exit;
        # a second one means "now": SIGKILL to its group, as a second Ctrl-C does in docker
        # and tini. Without it a trainer ignoring both could only be ended by kill -9.
        interrupted.append(signum)
        if target is None:
            return
        if len(interrupted) == 1:
            target.send(signal.Signals(signum))
            os.write(2, b"trainguard run: forwarded the interrupt to the command; "
                        b"interrupt again to kill it\n")
        elif len(interrupted) == 2:
            outcome = target.send(signal.SIGKILL)
            os.write(2, f"trainguard run: {outcome.describe()}\n".encode())

    restore = _install_forwarding(forward)

    def write(status: str, returncode: int | None) -> Path:
        return write_postmortem(
            run_dir, status=status, returncode=returncode, last_records=monitor.last_records,
            alerts=monitor.alerts, stop=plan.record.to_json() if plan.record else None,
            hang=hang, output_tail=list(output.tail), checkpoint_dirs=options.checkpoint_dirs,
            extra={"command": options.command, "pid": proc.pid, "run_dir": str(run_dir),
                   "run_id": read_run_id(run_dir),
                   "duration_s": round(time.monotonic() - started, 3)})

    try:
        exited_at: float | None = None
        while True:
            monitor.poll_once()
            plan.tick()
            now = time.monotonic()
            if not stale_checked and (run_id := read_run_id(run_dir)) is not None:
                stale_checked = True
                stale = stale_control_file(control_path, run_id)
                if stale:
                    emit(_system_alert("trainguard.stale_control_file", "info",
                                       monitor.max_step or 0, stale))
            if proc.poll() is not None:
                if exited_at is None:
                    exited_at = now
                # Drain the pipe; a forked child may hold it open, so do not wait forever.
                if output.exhausted or now - exited_at > 2.0:
                    monitor.poll_once()
                    break
            else:
                last = max(output.last_output_at, monitor.last_progress_at or 0.0, started)
                silent = now - last
                limit = options.hang_timeout
                if limit is None:
                    limit = max(5.0 * (monitor.max_step_interval or 0.0), options.hang_floor)
                if silent > limit and not hang_reported:
                    hang_reported = True
                    hang = {"detected_after_s": round(silent, 3), "threshold_s": round(limit, 3),
                            "last_step": monitor.max_step, "time": time.time()}
                    emit(_system_alert(
                        "trainguard.hang", "high", monitor.max_step or 0,
                        f"no output and no events for {silent:.1f}s (limit {limit:.1f}s) "
                        f"after step {monitor.max_step}",
                        "Look for a stuck collective (NCCL), a dataloader deadlock or a stalled "
                        "filesystem: py-spy dump --pid " + str(proc.pid)))
                    write("hung", None)
                elif silent <= limit:
                    hang_reported = False
            time.sleep(options.poll_interval)
        monitor.flush()
        returncode = proc.wait()
        plan.finish(exited=True)
        survivors = None
        if plan.record is not None and target is not None:
            survivors = _stop_survivors(target, options.kill_after)
            if survivors:
                plan.record.deliveries.append({"method": "signal", "time": time.time(),
                                               "detail": survivors})
    finally:
        restore()
        output.join(1.0)
        source.close()
        jsonl.close()
        if target is not None:
            target.close()
        if proc.stdout is not None:
            proc.stdout.close()
        for observer in options.observers:
            observer.close()

    stopped = plan.record is not None and plan.record.reached_a_running_trainer
    if stopped:
        status, code = "stopped", EXIT_STOPPED
    elif returncode < 0:
        status, code = "killed", 128 - returncode
    else:
        status, code = ("exited" if returncode == 0 else "failed"), returncode
        if code == 0 and any(a.state == "firing" and SEVERITY_ORDER.get(a.severity, 0) >= _HIGH
                             and not a.rule.startswith("trainguard.") for a in monitor.alerts):
            # It ended on its own before a stop could reach it, but what it logged was bad: a
            # zero exit would tell a script (or CI) the run was fine. trainguard's own alerts
            # (a hang that ended, a stale control file) are in the postmortem, not the code.
            code = EXIT_ALERT
    path = write(status, returncode)
    if not options.quiet:
        console.line(f"trainguard run: {status} (command exit {returncode}); exit {code}; "
                     f"postmortem {path}", style="bold" if code else "bold green")
    return RunResult(code, returncode, stopped, hang is not None, path, list(monitor.alerts))


def _stop_survivors(target: ProcessTarget, kill_after: float | None) -> str | None:
    """After a stopped command exits, children it forked may live on in its group: SIGTERM
    them, and SIGKILL after ``kill_after`` seconds if asked."""
    first = target.send(signal.SIGTERM)
    if not first.delivered:
        return None
    if kill_after is None:
        return f"survivors: {first.describe()}"
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline:
        if not target.orphans():
            return f"survivors: {first.describe()}; they exited"
        time.sleep(0.1)
    second = target.send(signal.SIGKILL)
    return f"survivors: {first.describe()}; {second.describe()}"


def _install_forwarding(handler: Callable[[int, Any], None]) -> Callable[[], None]:
    """Ctrl-C or SIGTERM to trainguard go to the command's group; trainguard waits for it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return restore
