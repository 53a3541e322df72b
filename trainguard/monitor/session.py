"""Assembling a monitoring session from user options: the library behind ``trainguard monitor``.

The CLI only parses arguments into :class:`MonitorOptions` and calls :func:`run_monitor`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.control import CONTROL_FILENAME
from trainguard.events import MAX_RANKS
from trainguard.exceptions import ConfigError
from trainguard.monitor.checkpoint import AlertLedger, Checkpointer, load_state, replay_journal
from trainguard.monitor.daemon import (
    EXIT_DEGRADED,
    LineParser,
    Monitor,
    Verdict,
    json_line_parser,
)
from trainguard.monitor.engine.alerts import Alert, AlertSink
from trainguard.monitor.ingest.fdlimit import raise_open_files_limit
from trainguard.monitor.ingest.formats import open_source_for
from trainguard.monitor.ingest.normalize import load_field_map
from trainguard.monitor.ingest.sources import STATE_DIRNAME, Source
from trainguard.monitor.ingest.watch import start_watcher
from trainguard.monitor.packs import DEFAULT_RULES as PACKS_DEFAULT
from trainguard.monitor.packs import PackSelector
from trainguard.monitor.sinks.files import is_symlink
from trainguard.monitor.sinks.jsonl import JsonlAlertSink
from trainguard.monitor.sinks.observer import SessionObserver
from trainguard.monitor.sinks.record import Recorder
from trainguard.monitor.sinks.report import build_report, summary_lines, write_report
from trainguard.rules.inline import parse_inline_rule
from trainguard.rules.loader import apply_overrides, load_rules

if TYPE_CHECKING:
    from trainguard.monitor.act.actions import ControlFileStopper, SentLog, Stopper, StopPlan
    from trainguard.monitor.act.process import ProcessTarget
    from trainguard.monitor.sinks.console import ConsoleSink

# What only some sessions use is imported where it is used, so `monitor FILE --once --quiet`
# does not pay for it at start (benchmarks/bench_startup.py): the stop machinery (psutil),
# rich (nothing is printed), the stdout parsers (re2; a file is canonical JSONL).

__all__ = ["MonitorOptions", "run_monitor", "DEFAULT_RULES"]

DEFAULT_RULES = PACKS_DEFAULT
ALERTS_FILENAME = "alerts.jsonl"
#: Names the source when ``trainguard monitor`` is given none.
METRICS_PATH_ENV = "TRAINGUARD_METRICS_PATH"


@dataclass(slots=True)
class MonitorOptions:
    """Everything ``trainguard monitor`` can be told."""

    source: str
    rules: list[str] = field(default_factory=list)
    alerts: str | None = None
    control: str | None = None
    stop: bool = False
    once: bool = False
    field_maps: list[str] = field(default_factory=list)
    poll_interval: float = 0.05
    quiet: bool = False
    # -- ingest (sources and delivery guarantees) --
    #: Start a file that already exists at its end instead of its start.
    from_end: bool = False
    #: Force polling (network filesystems); otherwise inotify wakes the loop.
    poll: bool = False
    #: Copy stdin lines to stdout; None = when stdout is a terminal.
    tee: bool | None = None
    #: Checkpoint file; default RUN_DIR/.trainguard/state.json for a run directory.
    state: str | None = None
    #: Append every evaluated event, normalized, here (exactly once across restarts).
    record: str | None = None
    #: Write a JSON report of reads, skips, problems and alerts here at the end.
    report: str | None = None
    #: Seconds between full rescans when inotify is used (catches dropped kernel events).
    rescan_interval: float = 1.0
    #: ``ID.FIELD=VALUE`` settings applied to loaded rules (``--set-rule``).
    set_rules: list[str] = field(default_factory=list)
    #: Inline rules (``--alert "[trainer:] COND [for N] -> SEVERITY[/stop]: MESSAGE"``).
    inline_alerts: list[str] = field(default_factory=list)
    #: Sample the local GPUs through NVML every ``gpu_interval`` s (monitor/ingest/gpu.py); adds the
    #: ``gpu`` pack when no ``rules`` are given.
    gpu: bool = False
    gpu_interval: float = 5.0
    #: Signal this process (pinned by identity) on a stop rule; see monitor/act/process.py.
    pid: int | None = None
    signal: str = "SIGTERM"
    kill_after: float | None = None
    # -- plain trainer stdout (monitor/ingest/stdout.py) --
    #: A stdout preset name (trl, verl, openrlhf, kv) or a re2 pattern with a ``step`` group;
    #: None: stdin auto-detects, files and run directories read canonical JSONL.
    regex: str | None = None
    #: The trainer's ``logging_steps``: the n-th printed TRL log is step n x this.
    logging_steps: int = 1
    #: When known, the TRL step is ``round(epoch x steps_per_epoch)`` instead of the count.
    steps_per_epoch: int | None = None
    # -- many nodes (monitor/ray/) --
    #: Sources read along with SOURCE whose problems also count (the Ray head's node health).
    extra_sources: list[Any] = field(default_factory=list)
    #: With ``gpu``: sample this host's GPUs (False on the Ray head: each node's agent does).
    local_gpus: bool = True
    #: The user's own ``NAME=PATTERN`` signals (``--signal``), read with the built-in ones.
    signals: list[str] = field(default_factory=list)
    # -- reaching people (monitor/sinks/notify.py, prometheus.py, live.py; monitor/check.py) --
    #: More alert sinks (notifications), after the alerts file and the console.
    sinks: list[AlertSink] = field(default_factory=list)
    #: Told of the session: ``start(monitor)`` once built, ``tick(monitor)`` every loop turn,
    #: ``close()`` at the end (the live view, ``/metrics``, the notifier's queue).
    observers: list[SessionObserver] = field(default_factory=list)
    #: ``trainguard check``: neither resume from nor write the checkpoint, and no default
    #: alerts file: a batch verdict leaves a followed run as it found it.
    stateless: bool = False
    #: Ranks are ``0 <= rank < max_ranks``; any other is a counted ``bad_rank`` skip.
    max_ranks: int = MAX_RANKS


def run_monitor(options: MonitorOptions, stop_event: threading.Event | None = None) -> Verdict:
    """Run one monitoring session and return its verdict.

    Raises :class:`~trainguard.exceptions.ConfigError` or
    :class:`~trainguard.exceptions.SourceError` for what the user must fix before it can start.
    """
    default_rules = DEFAULT_RULES + (("gpu",) if options.gpu else ())
    rules = load_rules(options.rules or default_rules)
    rules += [parse_inline_rule(text, i) for i, text in enumerate(options.inline_alerts, 1)]
    auto = not options.rules
    rules = apply_overrides(rules, options.set_rules, missing_ok=auto)
    field_maps = options.field_maps
    if options.regex is not None:  # --regex verl brings verl's field map
        from trainguard.monitor.ingest.stdout import preset_field_maps

        field_maps = preset_field_maps(options.regex, field_maps)
    field_map = load_field_map(field_maps)
    if not options.source:
        options.source = os.environ.get(METRICS_PATH_ENV) or "-"
    parser, detected_format = _line_parser(options)
    source_path = Path(options.source)
    run_dir = source_path if options.source != "-" and source_path.is_dir() else None

    alerts_path = options.alerts
    if alerts_path is None and run_dir is not None and not options.stateless:
        alerts_path = str(run_dir / ALERTS_FILENAME)
    control_path = options.control
    if control_path is None and options.stop:
        if run_dir is None:
            raise ConfigError("--stop needs a run directory as SOURCE (or give --control PATH)")
        control_path = str(run_dir / CONTROL_FILENAME)

    state_path = options.state
    if state_path is None and run_dir is not None and not options.stateless:
        state_path = str(run_dir / STATE_DIRNAME / "state.json")
    refused_state = None
    if state_path and is_symlink(os.path.dirname(os.path.abspath(state_path))):
        # Planted by someone who can write the run directory: its state.json would be
        # written wherever the link points. No checkpoint this session; said, degraded.
        refused_state = (f"cannot keep state in {os.path.dirname(state_path)}: it is a "
                         "symbolic link, refused (remove it); no checkpoint this session")
        state_path = None
    saved, state_warning = load_state(state_path) if state_path else ({}, None)
    # --once is a batch verdict over the whole run: every file is read from its start (a
    # verdict from where an earlier session stopped would judge the rest without the rules'
    # windows, or judge nothing and say clean), the record is written anew, and the alert
    # ledger keeps what was already delivered from being delivered or stopped twice.
    positions = None if options.once else (saved.get("positions") or None)
    record_length = saved.get("record_length")
    if options.once and record_length is not None:
        record_length = 0  # this run's record, written anew from the start of the run
    exclude = [p for p in (alerts_path, control_path, options.record, options.report,
                           state_path) if p]
    raise_open_files_limit()  # one descriptor per rank file: 4,096 ranks pass 1,024
    tee = options.tee if options.tee is not None else sys.stdout.isatty()
    # What the path holds (a tracker store, verl's file logger, our JSONL): ingest/formats.py.
    source: Source = open_source_for(
        options.source, exclude=exclude, from_start=not options.from_end,
        positions=positions, tee=sys.stdout.buffer if tee else None,
        rescan_interval=options.rescan_interval).source
    if options.gpu and options.local_gpus:  # GPU samples carry the monitor's latest step
        from trainguard.monitor.ingest.composite import CompositeSource
        from trainguard.monitor.ingest.gpu import NvmlSource

        source = CompositeSource(source, NvmlSource(options.gpu_interval,
                                                    step=lambda: monitor.max_step or 0))
    if options.extra_sources:
        from trainguard.monitor.ingest.composite import CompositeSource

        source = CompositeSource(source, *options.extra_sources)
    try:
        recorder = (Recorder(options.record, resume_length=record_length)
                    if options.record else None)
    except OSError as exc:  # a symlink or FIFO planted at the name, a full disk
        raise ConfigError(f"cannot open the record: {exc.strerror or exc}; give --record a "
                          "path to a regular file", path=options.record) from exc
    ledger = AlertLedger(saved.get("alerts"))
    redeliver, journal_warning = replay_journal(state_path, ledger) if state_path else ([], None)
    checkpointer = (Checkpointer(state_path, source, ledger, recorder)
                    if state_path else None)
    watcher = None if options.poll or options.once else start_watcher(source)
    console = _Console()
    sinks: list[AlertSink] = [] if options.quiet else [console]
    jsonl = JsonlAlertSink(alerts_path) if alerts_path else None
    if jsonl is not None:
        sinks.insert(0, jsonl)
    sinks.extend(options.sinks)
    stopper: Stopper | None = None
    control_stopper = None
    if control_path:
        from trainguard.monitor.act.actions import ControlFileStopper

        control_stopper = ControlFileStopper(control_path,
                                             run_dir=run_dir or Path(control_path).parent)
    stopper = control_stopper
    stop_watch = _StopWatch.start(options, control_stopper, run_dir, console, sinks)
    if stop_watch is not None:
        stopper = stop_watch.plan

    def report_problem(problem: str) -> None:
        if options.quiet:  # -q: the exit code alone says it
            return
        # Output problems (monitor.output_problems) say "cannot write/save ..." themselves.
        text = problem if problem.startswith("cannot ") else f"cannot read {problem}"
        console.line(f"DEGRADED: {text}", style="bold yellow")

    def say(text: str) -> None:
        if not options.quiet:
            console.line(text, style="dim")

    for warning in (state_warning, journal_warning):
        if warning:
            console.line(f"trainguard: {warning}", style="yellow")
    selector = PackSelector(options.rules, _metadata_dir(source_path, run_dir), say,
                            options.set_rules)
    monitor = Monitor(source, rules, field_map=field_map, sinks=sinks, stopper=stopper,
                      parser=parser, on_problem=report_problem, recorder=recorder,
                      checkpointer=checkpointer,
                      wait=watcher.wait if watcher is not None else None,
                      trainer_rules=selector)
    selector.attach(monitor.engine, monitor.route, lambda: monitor.max_step or 0)
    monitor.batch = options.once
    if stop_watch is not None:
        monitor.problem_sources.append(stop_watch.plan.problems)
    monitor.max_ranks = options.max_ranks
    if refused_state:
        monitor.session_problems.append(refused_state)
    monitor.redeliver(redeliver)
    poll_interval = options.rescan_interval if watcher is not None else options.poll_interval
    mode = "reading" if options.once else "following"
    packs = ", ".join(options.rules or default_rules) + (
        " + the trainer's pack" if auto else "; rules for other trainers skip once the trainer "
        "is known")
    if detected_format is not None:
        say(f"trainguard: {options.source} reads as {detected_format} (detected from its first "
            "lines; --regex to choose)")
    say(f"trainguard: {mode} {options.source} with {len(rules)} rules ({packs})"
        + (f"; stops via {control_path}" if control_path else "")
        + (f"; signals pid {options.pid}" if options.pid else "")
        + ("" if control_path or options.pid else "; observe-only"))
    stale_watch = _StaleControlWatch(control_path or (run_dir / CONTROL_FILENAME if run_dir
                                                     else None), run_dir, console, sinks)
    stop_event = stop_event or threading.Event()
    monitor.on_tick = _ticks(stale_watch, stop_watch, monitor, stop_event, options.observers)
    for observer in options.observers:
        observer.start(monitor)
    restore = _install_signal_handlers(stop_event,
                                       watcher.wake if watcher is not None else None)
    try:
        verdict = monitor.run(once=options.once, poll_interval=poll_interval,
                              stop=stop_event)
    finally:
        restore()
        if watcher is not None:
            watcher.close()
        streams = source.stats()
        if stop_watch is not None:
            stop_watch.finish(monitor)
        source.close()
        if jsonl is not None:
            jsonl.close()
        if recorder is not None:
            recorder.close()
        for observer in options.observers:
            observer.close()
        if checkpointer is not None:
            checkpointer.close()
    if options.report:
        try:
            write_report(options.report, build_report(options.source, streams, verdict,
                                                      suppressed_alerts=ledger.suppressed))
        except OSError as exc:
            problem = f"cannot write the report {options.report}: {exc.strerror or exc}"
            report_problem(problem)
            verdict.problems.append(problem)
            verdict.exit_code = max(verdict.exit_code, EXIT_DEGRADED)
    if not options.quiet:
        _print_summary(console, verdict)
        for text in summary_lines(streams):
            console.line(text, style="dim")
    return verdict


def _metadata_dir(source: Path, run_dir: Path | None) -> Path | None:
    """Where ``run_metadata.json`` would be: the run directory, or a followed file's folder."""
    if run_dir is not None:
        return run_dir
    if str(source) != "-" and source.parent.joinpath("run_metadata.json").exists():
        return source.parent
    return None


def _line_parser(options: MonitorOptions) -> tuple[LineParser, str | None]:
    """The parser for the source, and the format detected when none was given.

    stdin auto-detects each line (canonical JSON, trainer stdout). A file or run directory is
    told by its first lines (:mod:`~trainguard.monitor.ingest.sniff`): canonical JSONL gets the
    plain parser (re2 and the presets are not even imported), trainer stdout or an empty file
    the same auto-detection as stdin, a registered JSON format its own parser."""
    if options.regex is None and options.source != "-":
        from trainguard.monitor.ingest.formats import TRACKER_STORES, detect_format

        if detect_format(options.source) in TRACKER_STORES:
            return json_line_parser, None  # its source hands over canonical lines
        from trainguard.monitor.ingest.sniff import (
            CANONICAL,
            STDOUT,
            UNKNOWN,
            json_format_parser,
            sniff_source,
        )

        detected = sniff_source(options.source)
        if detected == CANONICAL:
            return json_line_parser, None  # what make_line_parser(None, auto=False) returns
        if detected not in (STDOUT, UNKNOWN):
            return json_format_parser(detected), detected
        shown: str | None = "trainer stdout" if detected == STDOUT else None
    else:
        shown = None
    from trainguard.monitor.ingest.stdout import make_line_parser

    # A preset's own map for the lines it reads (verl, OpenRLHF), unless --field-map is given.
    return make_line_parser(options.regex, auto=True, logging_steps=options.logging_steps,
                            steps_per_epoch=options.steps_per_epoch,
                            signals=options.signals, map_keys=not options.field_maps), shown


def _install_signal_handlers(stop_event: threading.Event,  # type: ignore[no-untyped-def]
                             wake: Callable[[], None] | None = None):
    """SIGINT and SIGTERM end the follow loop cleanly, with a verdict and a summary."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        stop_event.set()
        if wake is not None:
            wake()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return restore


class _Console:
    """The terminal view, made on first use: a session that prints nothing never imports rich."""

    def __init__(self) -> None:
        self._sink: ConsoleSink | None = None

    def _get(self) -> ConsoleSink:
        if self._sink is None:
            from trainguard.monitor.sinks.console import ConsoleSink

            self._sink = ConsoleSink()
        return self._sink

    def emit(self, alert: Alert) -> None:
        """Print one alert."""
        self._get().emit(alert)

    def line(self, message: str, style: str = "") -> None:
        """Print a status line."""
        self._get().line(message, style=style)


def _print_summary(console: _Console, verdict: Verdict) -> None:
    firing = [a for a in verdict.alerts if a.state == "firing"]
    skipped = sum(verdict.skips.values())
    console.line(
        f"trainguard: {verdict.status}: {verdict.events} events in {verdict.records} steps, "
        f"{len(firing)} alerts, {skipped} lines skipped",
        style="bold" if verdict.exit_code else "bold green",
    )
    for reason, count in verdict.skips.most_common():
        console.line(f"  skipped {count} x {reason}", style="yellow")
    for ex in verdict.skip_examples:
        console.line(f"    {ex.stream}:{ex.line}: {ex.reason} {ex.detail}", style="dim")
    for note in verdict.notes:
        if note not in verdict.problems:
            console.line(f"  note: {note}", style="yellow")
    for problem in verdict.problems:
        console.line(f"  DEGRADED: {problem}", style="bold yellow")


class _StaleControlWatch:
    """Reports, once, a control file left by another run (the trainer ignores it)."""

    def __init__(self, control_path: str | Path | None, run_dir: Path | None,
                 console: _Console, sinks: list[AlertSink]) -> None:
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


class _StopWatch:
    """The stop plan (control file and/or ``--pid``), and with ``--pid`` the postmortem when
    the process exits."""

    def __init__(self, target: ProcessTarget | None, run_dir: Path | None) -> None:
        self.target, self.run_dir = target, run_dir
        self.exited_seen = 0
        self.monitor: Monitor | None = None
        self.plan: StopPlan

    @classmethod
    def start(cls, options: MonitorOptions, control: ControlFileStopper | None,
              run_dir: Path | None, console: _Console,
              sinks: list[AlertSink]) -> _StopWatch | None:
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


def _ticks(stale: _StaleControlWatch, stop_watch: _StopWatch | None, monitor: Monitor,
           stop_event: threading.Event,
           observers: Sequence[SessionObserver] = ()) -> Callable[[], None]:
    def tick() -> None:
        stale.tick()
        if stop_watch is not None:
            stop_watch.tick(monitor, stop_event)
        for observer in observers:
            observer.tick(monitor)
    return tick
