"""Assembling a monitoring session from user options: the library behind ``trainguard monitor``.

The CLI only parses arguments into :class:`MonitorOptions` and calls :func:`run_monitor`.
The options live in :mod:`.session_options`, what a session prints in :mod:`.session_console`,
its stop plan and stale-control check in :mod:`.stop_watch`; they are re-exported here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.control import CONTROL_FILENAME
from trainguard.exceptions import ConfigError
from trainguard.monitor.checkpoint import AlertLedger, Checkpointer, load_state, replay_journal
from trainguard.monitor.daemon import (
    EXIT_DEGRADED,
    LineParser,
    Monitor,
    Verdict,
    json_line_parser,
)
from trainguard.monitor.engine.alerts import AlertSink
from trainguard.monitor.ingest.auto_map import session_field_map
from trainguard.monitor.ingest.fdlimit import raise_open_files_limit
from trainguard.monitor.ingest.formats import open_source_for
from trainguard.monitor.ingest.sources import STATE_DIRNAME, Source
from trainguard.monitor.ingest.watch import start_watcher
from trainguard.monitor.packs import DEFAULT_RULES as PACKS_DEFAULT
from trainguard.monitor.packs import PackSelector, TrainerCommand
from trainguard.monitor.session_console import SessionConsole, print_summary
from trainguard.monitor.session_options import MonitorOptions
from trainguard.monitor.sinks.files import is_symlink
from trainguard.monitor.sinks.jsonl import JsonlAlertSink
from trainguard.monitor.sinks.observer import SessionObserver
from trainguard.monitor.sinks.record import Recorder
from trainguard.monitor.sinks.report import build_report, summary_lines, write_report
from trainguard.monitor.stop_watch import StaleControlWatch, StopWatch
from trainguard.rules.inline import parse_inline_rule
from trainguard.rules.loader import apply_overrides, load_rules

if TYPE_CHECKING:
    from trainguard.monitor.act.actions import Stopper

# What only some sessions use is imported where it is used, so `monitor FILE --once --quiet`
# does not pay for it at start (benchmarks/bench_startup.py): the stop machinery (psutil),
# rich (nothing is printed), the stdout parsers (re2; a file is canonical JSONL).

__all__ = ["MonitorOptions", "run_monitor", "DEFAULT_RULES"]

DEFAULT_RULES = PACKS_DEFAULT
ALERTS_FILENAME = "alerts.jsonl"
#: Names the source when ``trainguard monitor`` is given none.
METRICS_PATH_ENV = "TRAINGUARD_METRICS_PATH"


def _stdin_writer_command(say: Callable[[str], None]) -> Callable[[], TrainerCommand | None]:
    """A function giving the command line of the trainer piping into stdin
    (ingest/pipe_writer.py), if found: looked for when the first record comes, when the
    writer has surely started its program, else as it was at start (a short writer may have
    ended by then). Says once if that trainer's stderr is not in the pipe."""
    from trainguard.monitor.ingest.pipe_writer import stdin_writer

    at_start = stdin_writer()
    told: list[int] = []

    def command() -> TrainerCommand | None:
        writer = stdin_writer() or at_start
        if writer is None:
            return None
        note = writer.stderr_note()
        if note is not None and not told:
            told.append(writer.pid)
            say(f"trainguard: {note}")
        return TrainerCommand(writer.argv, writer.cwd,
                              f"the command line of pid {writer.pid}, which writes to stdin")
    return command


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
    console = SessionConsole()

    def say(text: str) -> None:
        if not options.quiet:
            console.line(text, style="dim")

    # --field-map, else --regex verl's own map, else the map of the framework the keys name.
    field_map = session_field_map(options.field_maps, options.regex, say)
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
    stop_watch = StopWatch.start(options, control_stopper, run_dir, console, sinks)
    if stop_watch is not None:
        stopper = stop_watch.plan

    def report_problem(problem: str) -> None:
        if options.quiet:  # -q: the exit code alone says it
            return
        # Output problems (monitor.output_problems) say "cannot write/save ..." themselves.
        text = problem if problem.startswith("cannot ") else f"cannot read {problem}"
        console.line(f"DEGRADED: {text}", style="bold yellow")

    for warning in (state_warning, journal_warning):
        if warning:
            console.line(f"trainguard: {warning}", style="yellow")
    selector = PackSelector(options.rules, _metadata_dir(source_path, run_dir), say,
                            options.set_rules,
                            command=(_stdin_writer_command(say) if options.source == "-"
                                     else ()))
    monitor = Monitor(source, rules, field_map=field_map, sinks=sinks, stopper=stopper,
                      parser=parser, on_problem=report_problem, recorder=recorder,
                      checkpointer=checkpointer,
                      wait=watcher.wait if watcher is not None else None,
                      trainer_rules=selector, config_report=selector.config_report)
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
    stale_watch = StaleControlWatch(control_path or (run_dir / CONTROL_FILENAME if run_dir
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
        print_summary(console, verdict)
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


def _ticks(stale: StaleControlWatch, stop_watch: StopWatch | None, monitor: Monitor,
           stop_event: threading.Event,
           observers: Sequence[SessionObserver] = ()) -> Callable[[], None]:
    def tick() -> None:
        stale.tick()
        if stop_watch is not None:
            stop_watch.tick(monitor, stop_event)
        for observer in observers:
            observer.tick(monitor)
    return tick
