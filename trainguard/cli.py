"""The ``trainguard`` command line: parses arguments, calls the library, maps errors to exits.

Exit codes (``monitor``): 0 no alert of high severity or above; 2 at least one; 1 it could not
read its input or its rules (or a source became unreadable, or nothing could be judged: a blind
monitor is never clean), or the command line itself is wrong (never 2, the alert code).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from trainguard import __version__
from trainguard.exceptions import TrainguardError

if TYPE_CHECKING:
    from rich.console import Console

    from trainguard.monitor.engine.alerts import AlertSink
    from trainguard.monitor.sinks.observer import SessionObserver

# Each command imports what it needs (the monitor, the rules, rich) when it runs: `trainguard
# --help` and a `monitor --once` CI gate start in a fraction of the time (bench_startup.py).
#: Mirrors trainguard.monitor.daemon.EXIT_DEGRADED (pinned by tests/test_startup.py).
EXIT_DEGRADED = 1
#: A mistake in the command line itself: never the alert code 2.
EXIT_USAGE = 1

class _Commands(TyperGroup):
    """The command group, with usage errors (an unknown option, a missing argument, a bad
    value) exiting 1, not click's 2: 2 is the alert code, and a CI gate must not read a typo
    in its own command line as "the run had a critical alert"."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:
            raise _usage_exit(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            raise _usage_exit(exc) from None


def _usage_exit(exc: typer.TyperException) -> typer.TyperException:
    """``exc`` (typer's usage errors carry click's code 2) with the usage exit code."""
    if getattr(exc, "exit_code", None) == 2:  # noqa: PLR2004 - click's usage code
        exc.exit_code = EXIT_USAGE
    return exc


app = typer.Typer(
    cls=_Commands,
    name="trainguard",
    help="Watch post-training runs (TRL, verl, OpenRLHF, plain PyTorch) and stop them when they "
    "go wrong.\n\nExample: [bold]trainguard monitor runs/exp1 --rules common --stop[/bold]",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
)


@cache
def _err() -> Console:
    """The stderr console, made on first use (rich costs tens of ms to import)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fail(exc: TrainguardError) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {_escape(str(exc))}")  # messages may hold [brackets]
    return typer.Exit(EXIT_DEGRADED)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trainguard {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option(  # noqa: UP007 - typer needs Optional
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """trainguard: a streaming monitor for post-training runs."""


_REGEX_OPT = typer.Option(
    "--regex", help="Read plain trainer stdout: a preset (trl, transformers, verl, openrlhf, kv) "
    "or a pattern with named groups, (?P<step>...) required, one group per metric (re2 syntax). "
    "Default: stdin auto-detects; files are canonical JSONL.")
_LOGGING_STEPS_OPT = typer.Option(
    "--logging-steps", help="The trainer's logging_steps: the n-th printed TRL log dict is step "
    "n x N.")
_LINE_SIGNAL_OPT = typer.Option(
    "--line-signal", help="Your own known line, read from printed output with the built-in "
    "ones (OOM, NCCL timeout, traceback...): NAME=PATTERN (re2 syntax) sets metric "
    "stdout/NAME to 1 on each step that prints it, for rules to read; repeatable.")
_STEPS_PER_EPOCH_OPT = typer.Option(
    "--steps-per-epoch", help="When known: the TRL step is round(epoch x N) instead of the "
    "count of logs.")
_NOTIFY_OPT = typer.Option(
    "--notify", help="Send alerts to this apprise URL (slack://, discord://, tgram://, ntfy://, "
    "mailto://, json://host/path...); repeatable. Needs trainguard\\[notify].")
_NOTIFY_SEVERITY_OPT = typer.Option(
    "--notify-severity", help="Lowest severity notified: info, low, medium, high, critical.")
_NOTIFY_RESOLVED_OPT = typer.Option(
    "--notify-resolved", help="Also notify when an alert resolves.")


def _outputs(source: str, notify: list[str], notify_severity: str, notify_resolved: bool,
             live: bool = False, metrics_port: int | None = None,
             metrics_address: str = "127.0.0.1",
             ) -> tuple[list[AlertSink], list[SessionObserver]]:
    """The notifier, live view and /metrics a command asked for (reach: monitor/outputs.py)."""
    from trainguard.monitor.outputs import OutputOptions, build_outputs

    def say(text: str) -> None:
        _err().print(f"[yellow]trainguard: {_escape(text)}[/]")

    return build_outputs(OutputOptions(notify=list(notify), notify_severity=notify_severity,
                                       notify_resolved=notify_resolved, live=live,
                                       metrics_port=metrics_port,
                                       metrics_address=metrics_address), run=source, say=say)


@app.command()
def monitor(
    source: Annotated[Optional[str], typer.Argument(  # noqa: UP007
        help="Events to follow: a JSONL file, a run directory (every *.jsonl in it), or - for "
        "stdin. Default: $TRAINGUARD_METRICS_PATH, else stdin.")] = None,
    rules: Annotated[list[str], typer.Option(
        "--rules", "-r", help="Rule pack name or YAML file; repeatable. Default: common.")] = [],  # noqa: B006
    alerts: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Append alerts as JSONL here. Default for a run directory: "
        "RUN_DIR/alerts.jsonl.")] = None,
    control: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Write stop requests to this control file (enables stopping).")] = None,
    stop: Annotated[bool, typer.Option(
        "--stop", help="Let stop rules stop the run via RUN_DIR/control.json.")] = False,
    once: Annotated[bool, typer.Option(
        "--once",
        help="Read what is there, evaluate, and exit (for CI) instead of following.")] = False,
    field_map: Annotated[list[str], typer.Option(
        "--field-map", help="Preset name, YAML file or SOURCE=TARGET rename; repeatable.")] = [],  # noqa: B006
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls when idle.")] = 0.05,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print nothing; exit code only.")] = False,
    from_end: Annotated[bool, typer.Option(
        "--from-end/--from-start",
        help="Start an existing file at its end (default: read it from the start).")] = False,
    poll: Annotated[bool, typer.Option(
        "--poll", help="Poll instead of using inotify (network filesystems).")] = False,
    tee: Annotated[Optional[bool], typer.Option(  # noqa: UP007
        "--tee/--no-tee",
        help="Copy stdin lines to stdout unchanged. Default: on when stdout is a "
        "terminal.")] = None,
    state: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Checkpoint file for restarts. Default for a run dir: "
        "RUN_DIR/.trainguard/state.json.")] = None,
    record: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Append every evaluated event, normalized, as canonical JSONL (exactly "
        "once).")] = None,
    report: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Write a JSON report: per source lines, skips by reason, problems, alerts.")] = None,
    set_rule: Annotated[list[str], typer.Option(
        "--set-rule", help="Change one field of a loaded rule: ID.FIELD=VALUE, e.g. "
        "common.loss_spike.for=10; repeatable.")] = [],  # noqa: B006
    alert: Annotated[list[str], typer.Option(
        "--alert", help="An inline rule: '\\[TRAINER:] CONDITION \\[for N] -> SEVERITY\\[/stop]: "
        "MESSAGE', e.g. 'grpo: kl > 0.5 for 3 -> high: KL blew up'; repeatable.")] = [],  # noqa: B006
    gpu: Annotated[bool, typer.Option(
        "--gpu", help="Also sample this host's GPUs through NVML (utilization, memory, "
        "temperature, throttling, ECC); adds the gpu pack when no --rules.")] = False,
    gpu_interval: Annotated[float, typer.Option(
        "--gpu-interval", help="Seconds between GPU samples.")] = 5.0,
    pid: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--pid", help="Trainer process to signal on a stop rule (enables stopping); its "
        "identity is pinned at start and checked before every signal.")] = None,
    signal_name: Annotated[str, typer.Option(
        "--signal", help="Signal sent to --pid (its process group if it leads one).")] = "SIGTERM",
    kill_after: Annotated[Optional[float], typer.Option(  # noqa: UP007
        "--kill-after", help="Send SIGKILL this many seconds after the signal if the process "
        "still runs. Off unless given.")] = None,
    regex: Annotated[Optional[str], _REGEX_OPT] = None,  # noqa: UP007
    logging_steps: Annotated[int, _LOGGING_STEPS_OPT] = 1,
    steps_per_epoch: Annotated[Optional[int], _STEPS_PER_EPOCH_OPT] = None,  # noqa: UP007
    ray_nodes: Annotated[bool, typer.Option(
        "--ray", help="SOURCE is each node's local run directory on the Ray cluster at "
        "$RAY_ADDRESS: one agent per node ships its events to a monitor actor here, and stops "
        "reach every node. Needs trainguard\\[ray].")] = False,
    line_signal: Annotated[list[str], _LINE_SIGNAL_OPT] = [],  # noqa: B006
    notify: Annotated[list[str], _NOTIFY_OPT] = [],  # noqa: B006
    notify_severity: Annotated[str, _NOTIFY_SEVERITY_OPT] = "high",
    notify_resolved: Annotated[bool, _NOTIFY_RESOLVED_OPT] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="A live view in the terminal: ranks, key metrics with sparklines, "
        "firing alerts, the stop. Off when stdout is not a terminal.")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--metrics-port", help="Serve Prometheus /metrics on this port (needs "
        "trainguard\\[prometheus]).")] = None,
    metrics_address: Annotated[str, typer.Option(
        "--metrics-address", help="Address /metrics listens on.")] = "127.0.0.1",
    max_ranks: Annotated[int, typer.Option(
        "--max-ranks", min=1, help="Ranks are 0 to N-1; a line of any other rank is a counted "
        "bad_rank skip (each rank holds its own rule state).")] = 65536,
) -> None:
    """Follow a run's events, evaluate rules, write alerts, and optionally stop the trainer.

    [bold]Examples[/bold]

      trainguard monitor runs/exp1 --stop   [dim]# follow a run dir, stop on critical rules[/dim]

      trainguard monitor events.jsonl --once -r common   [dim]# CI gate: exit 2 on high[/dim]

      python train.py | trainguard monitor -

      python train.py 2>&1 | trainguard monitor - --logging-steps 10   [dim]# printed logs[/dim]

      trainguard monitor runs/exp1 --pid 4242 --kill-after 30   [dim]# SIGTERM, then SIGKILL[/dim]

      trainguard monitor --ray /local/runs/exp1 --stop   [dim]# every node of a Ray cluster[/dim]

      trainguard monitor runs/exp1 --live --metrics-port 9108 --notify ntfy://my-topic

    Exit codes: 0 clean, 2 an alert of high severity or above, 1 input or rules unreadable,
    nothing judged (no events, or no rule reads their metrics), or a usage error.
    """
    from trainguard.monitor.session import MonitorOptions, run_monitor

    options = MonitorOptions(source=source or "", rules=list(rules), alerts=alerts, control=control,
                             stop=stop, once=once, field_maps=list(field_map),
                             poll_interval=poll_interval, quiet=quiet, from_end=from_end,
                             poll=poll, tee=tee, state=state, record=record, report=report,
                             gpu=gpu, gpu_interval=gpu_interval,
                             set_rules=list(set_rule), inline_alerts=list(alert))
    options.pid, options.signal, options.kill_after = pid, signal_name, kill_after
    options.regex, options.logging_steps = regex, logging_steps
    options.steps_per_epoch, options.signals = steps_per_epoch, list(line_signal)
    if live and tee is None:
        options.tee = False  # the live view owns the terminal
    options.max_ranks = max_ranks
    try:
        options.sinks, options.observers = _outputs(options.source or "stdin", notify,
                                                    notify_severity, notify_resolved, live,
                                                    metrics_port, metrics_address)
        if ray_nodes:
            from trainguard.monitor.ray import run_ray_monitor

            verdict = run_ray_monitor(source or "", options)
        else:
            verdict = run_monitor(options)
    except TrainguardError as exc:
        raise _fail(exc) from None
    raise typer.Exit(verdict.exit_code)


rules_app = typer.Typer(
    help="List, show, explain and validate rules.\n\nExample: [bold]trainguard rules explain "
    "common.loss_spike[/bold]", rich_markup_mode="rich", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
_PACKS_OPT = typer.Option("--rules", "-r", help="Rule pack or YAML file to look in; repeatable. "
                          "Default: every built-in pack.")


@rules_app.command("list")
def rules_list(rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """List rules: id, severity, action, trainers and metric.

    [bold]Examples[/bold]

      trainguard rules list

      trainguard rules list -r common -r my_rules.yaml
    """
    from trainguard.rules.catalog import catalog

    try:
        entries = catalog(rules)
    except TrainguardError as exc:
        raise _fail(exc) from None
    for pack, compiled in entries:
        r = compiled.rule
        typer.echo(f"{r.id:<40} {r.severity.value:<8} {r.action.value:<5} "
                   f"{','.join(r.trainers):<12} {r.metric}  [{pack}]"
                   + ("" if r.enabled else "  (disabled)"))


@rules_app.command("show")
def rules_show(rule_id: Annotated[str, typer.Argument(help="Rule id, e.g. common.loss_spike")],
               rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """Print every field of one rule, defaults included.

    [bold]Example[/bold]

      trainguard rules show common.nonfinite_loss
    """
    from trainguard.rules.catalog import find_rule, show_rule

    try:
        _, compiled = find_rule(rule_id, rules)
    except TrainguardError as exc:
        raise _fail(exc) from None
    typer.echo(show_rule(compiled))


@rules_app.command("explain")
def rules_explain(rule_id: Annotated[str, typer.Argument(help="Rule id, e.g. common.loss_spike")],
                  rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """Explain one rule: what it watches, when it fires, what to do, and the reference.

    [bold]Example[/bold]

      trainguard rules explain common.loss_spike
    """
    from trainguard.rules.catalog import explain_rule, find_rule

    try:
        pack, compiled = find_rule(rule_id, rules)
    except TrainguardError as exc:
        raise _fail(exc) from None
    typer.echo(explain_rule(compiled, pack))


@rules_app.command("validate")
def rules_validate(files: Annotated[list[str], typer.Argument(help="Rule files (YAML).")]) -> None:
    """Check rule files: safe YAML, every field, every condition; exit 1 on a mistake.

    [bold]Example[/bold]

      trainguard rules validate rules.yaml
    """
    from trainguard.rules.catalog import validate_file

    failed = False
    for path in files:
        try:
            compiled = validate_file(path)
        except TrainguardError as exc:
            _err().print(f"[bold red]error:[/] {_escape(str(exc))}")
            failed = True
            continue
        typer.echo(f"{path}: OK, {len(compiled)} rules")
    raise typer.Exit(EXIT_DEGRADED if failed else 0)


@rules_app.command("test")
def rules_test(files: Annotated[list[str], typer.Argument(
        help="Rule test files (YAML, promtool style). Default: every built-in pack's tests.")] = [],  # noqa: B006
) -> None:
    """Run rule unit tests: input series per step, the alerts expected at given steps.

    Exit 1 if any case fails. The format is in README.md ("Testing rules").

    [bold]Examples[/bold]

      trainguard rules test my_rules.tests.yaml

      trainguard rules test          [dim]# every built-in rule's firing and quiet cases[/dim]
    """
    from trainguard.monitor.engine.testing import builtin_test_files, run_rule_tests

    paths = list(files) or [str(p) for p in builtin_test_files()]
    failed = passed = skipped = 0
    for path in paths:
        try:
            results = run_rule_tests(path)
        except TrainguardError as exc:
            _err().print(f"[bold red]error:[/] {_escape(str(exc))}")
            failed += 1
            continue
        for result in results:
            if result.skipped:
                skipped += 1
                typer.echo(f"SKIP {path}: {result.name}: {result.detail}")
            elif result.passed:
                passed += 1
            else:
                failed += 1
                typer.echo(f"FAIL {path}: {result.name}: {result.detail}")
    typer.echo(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    raise typer.Exit(EXIT_DEGRADED if failed else 0)


@app.command(name="run", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})
def run_cmd(
    command: Annotated[list[str], typer.Argument(
        help="The command to run, after --.", show_default=False)],
    run_dir: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--run-dir", help="Run directory (exported as TRAINGUARD_RUN_DIR). Default: a new "
        "one under ./runs/.")] = None,
    rules: Annotated[list[str], typer.Option(
        "--rules", "-r", help="Rule pack name or YAML file; repeatable. Default: common.")] = [],  # noqa: B006
    field_map: Annotated[list[str], typer.Option(
        "--field-map", help="Preset name, YAML file or SOURCE=TARGET rename; repeatable.")] = [],  # noqa: B006
    grace: Annotated[Optional[float], typer.Option(  # noqa: UP007
        help="Seconds a trainer that reads the control file gets before SIGTERM. Default: two "
        "observed step intervals, at least 1 s.")] = None,
    kill_after: Annotated[Optional[float], typer.Option(  # noqa: UP007
        "--kill-after", help="SIGKILL the group this many seconds after SIGTERM. Off unless "
        "given.")] = None,
    hang_timeout: Annotated[Optional[float], typer.Option(  # noqa: UP007
        "--hang-timeout", help="Seconds without output or events that count as a hang. "
        "Default: max(5 x the longest step interval, 120).")] = None,
    checkpoint_dir: Annotated[list[str], typer.Option(
        "--checkpoint-dir", help="Where checkpoint-N folders appear (besides the run dir), for "
        "the resume advice in postmortem.json; repeatable.")] = [],  # noqa: B006
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Only the command's own output.")] = False,
    alert: Annotated[list[str], typer.Option(
        "--alert", help="An inline rule, as for monitor: '\\[TRAINER:] CONDITION \\[for N] -> "
        "SEVERITY\\[/stop]: MESSAGE'; repeatable.")] = [],  # noqa: B006
    regex: Annotated[Optional[str], _REGEX_OPT] = None,  # noqa: UP007
    logging_steps: Annotated[int, _LOGGING_STEPS_OPT] = 1,
    line_signal: Annotated[list[str], _LINE_SIGNAL_OPT] = [],  # noqa: B006
    notify: Annotated[list[str], _NOTIFY_OPT] = [],  # noqa: B006
    notify_severity: Annotated[str, _NOTIFY_SEVERITY_OPT] = "high",
    notify_resolved: Annotated[bool, _NOTIFY_RESOLVED_OPT] = False,
) -> None:
    """Run a trainer under watch: pass its output through, apply the rules, stop it if needed.

    The command runs in its own process group with PYTHONUNBUFFERED=1 and TRAINGUARD_RUN_DIR set.
    Its JSON metric lines and the run directory's events are checked; on a stop rule the control
    file is written, then the group gets SIGTERM after a short grace (at once if the trainer
    writes no events of its own). RUN_DIR/postmortem.json tells how it ended.

    [bold]Examples[/bold]

      trainguard run -- python train.py --lr 3e-4

      trainguard run --logging-steps 10 -- python sft.py   [dim]# reads printed TRL logs[/dim]

      trainguard run --run-dir runs/exp1 --kill-after 30 -- torchrun --nproc-per-node 8 train.py

    Exit codes: the command's own code; 3 trainguard stopped it; 128+N killed by signal N;
    1 could not start.
    """
    from trainguard.monitor.act.runner import RunOptions, run_command

    options = RunOptions(command=list(command), run_dir=run_dir, rules=list(rules),
                         field_maps=list(field_map), grace=grace, kill_after=kill_after,
                         hang_timeout=hang_timeout, checkpoint_dirs=list(checkpoint_dir),
                         quiet=quiet, inline_alerts=list(alert), regex=regex,
                         logging_steps=logging_steps, signals=list(line_signal))
    try:
        options.sinks, options.observers = _outputs(run_dir or " ".join(command), notify,
                                                    notify_severity, notify_resolved)
        result = run_command(options)
    except TrainguardError as exc:
        raise _fail(exc) from None
    raise typer.Exit(result.exit_code)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(
        help="A file, a run directory (every *.jsonl in it) or - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Canonical JSONL written here "
                                        "(replaced if it exists).")],
    regex: Annotated[Optional[str], _REGEX_OPT] = None,  # noqa: UP007
    field_map: Annotated[list[str], typer.Option(
        "--field-map", "--preset", help="Field-map preset name, YAML file or SOURCE=TARGET "
        "rename; repeatable. Default: keys kept as written.")] = [],  # noqa: B006
    logging_steps: Annotated[int, _LOGGING_STEPS_OPT] = 1,
    steps_per_epoch: Annotated[Optional[int], _STEPS_PER_EPOCH_OPT] = None,  # noqa: UP007
) -> None:
    """Turn any source into canonical events (one step per line), in one pass.

    Lines are auto-detected: canonical JSONL in any form, and trainer stdout (TRL log dicts in
    tqdm output, verl, OpenRLHF, key=value) unless --regex names one preset or a pattern.

    [bold]Examples[/bold]

      trainguard convert train.log -o events.jsonl --logging-steps 10

      trainguard convert verl.log -o events.jsonl --regex verl --preset verl

      python train.py 2>&1 | trainguard convert - -o events.jsonl

    Exit codes: 0 converted; 1 the source or an option is wrong, or the source was unreadable.
    """
    from trainguard.monitor.convert import convert as convert_source

    try:
        result = convert_source(source, output, regex=regex, field_maps=list(field_map),
                                logging_steps=logging_steps, steps_per_epoch=steps_per_epoch)
    except TrainguardError as exc:
        raise _fail(exc) from None
    skipped = sum(result.skips.values())
    _err().print(f"trainguard convert: {result.lines} lines -> {result.records} steps "
               f"({result.events} metric values) in {_escape(output)}; {skipped} lines skipped",
               highlight=False)
    for reason, count in result.skips.most_common():
        _err().print(f"  skipped {count} x {reason}")
    for ex in result.skip_examples:
        _err().print(f"    {_escape(ex.stream)}:{ex.line}: {ex.reason} {_escape(ex.detail)}")
    for problem in result.problems:
        _err().print(f"  [bold yellow]DEGRADED:[/] {_escape(problem)}")
    raise typer.Exit(EXIT_DEGRADED if result.problems else 0)


def _register_run_commands() -> None:
    from trainguard.cli_runs import register

    register(app)


_register_run_commands()  # check, report, diff (cli_runs.py)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
