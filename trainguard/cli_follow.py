"""The commands that follow a live run: ``monitor`` (a run directory, a file, stdin) and
``run`` (a trainer started and watched). Registered on the ``trainguard`` app by
:func:`register`; like ``cli``, they only parse arguments and call the library
(:mod:`trainguard.monitor.session`, :mod:`trainguard.monitor.act.runner`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from trainguard.cli_options import (
    LINE_SIGNAL_OPT,
    LOGGING_STEPS_OPT,
    NOTIFY_OPT,
    NOTIFY_RESOLVED_OPT,
    NOTIFY_SEVERITY_OPT,
    REGEX_OPT,
    STEPS_PER_EPOCH_OPT,
    outputs,
)
from trainguard.cli_output import fail
from trainguard.exceptions import TrainguardError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``monitor`` and ``run`` to ``app``."""
    app.command(name="monitor")(monitor)
    app.command(name="run", context_settings={"allow_extra_args": True,
                                              "ignore_unknown_options": True})(run_cmd)


def monitor(
    source: Annotated[Optional[str], typer.Argument(  # noqa: UP007
        help="Events to follow: a JSONL file, a run directory (every *.jsonl in it), or - for "
        "stdin. Default: $TRAINGUARD_METRICS_PATH, else stdin.")] = None,
    rules: Annotated[list[str], typer.Option(
        "--rules", "-r", help="Rule pack name or YAML file; repeatable. Default: common.")] = [],  # noqa: B006
    alerts: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Append alerts as JSONL here (- for standard output; a symlink or FIFO is "
        "refused). Default for a run directory: RUN_DIR/alerts.jsonl.")] = None,
    control: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Write stop requests to this control file (enables stopping).")] = None,
    stop: Annotated[bool, typer.Option(
        "--stop", help="Let stop rules stop the run via RUN_DIR/control.json.")] = False,
    once: Annotated[bool, typer.Option(
        "--once",
        help="Read what is there, evaluate, and exit (for CI) instead of following.")] = False,
    field_map: Annotated[list[str], typer.Option(
        "--field-map", help="Preset name, YAML file, SOURCE=TARGET rename or none; repeatable. "
        "Default: the map of the framework the keys name (verl, openrlhf), else none.")] = [],  # noqa: B006
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
    regex: Annotated[Optional[str], REGEX_OPT] = None,  # noqa: UP007
    logging_steps: Annotated[int, LOGGING_STEPS_OPT] = 1,
    steps_per_epoch: Annotated[Optional[int], STEPS_PER_EPOCH_OPT] = None,  # noqa: UP007
    ray_nodes: Annotated[bool, typer.Option(
        "--ray", help="SOURCE is each node's local run directory on the Ray cluster at "
        "$RAY_ADDRESS: one agent per node ships its events to a monitor actor here, and stops "
        "reach every node. Needs trainguard\\[ray].")] = False,
    line_signal: Annotated[list[str], LINE_SIGNAL_OPT] = [],  # noqa: B006
    notify: Annotated[list[str], NOTIFY_OPT] = [],  # noqa: B006
    notify_severity: Annotated[str, NOTIFY_SEVERITY_OPT] = "high",
    notify_resolved: Annotated[bool, NOTIFY_RESOLVED_OPT] = False,
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
        options.sinks, options.observers = outputs(options.source or "stdin", notify,
                                                   notify_severity, notify_resolved, live,
                                                   metrics_port, metrics_address)
        if ray_nodes:
            from trainguard.monitor.ray import run_ray_monitor

            verdict = run_ray_monitor(source or "", options)
        else:
            verdict = run_monitor(options)
    except TrainguardError as exc:
        raise fail(exc) from None
    raise typer.Exit(verdict.exit_code)


def run_cmd(
    command: Annotated[list[str], typer.Argument(
        help="The command to run, after --.", show_default=False)],
    run_dir: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--run-dir", help="Run directory (exported as TRAINGUARD_RUN_DIR). Default: a new "
        "one under ./runs/.")] = None,
    rules: Annotated[list[str], typer.Option(
        "--rules", "-r", help="Rule pack name or YAML file; repeatable. Default: common.")] = [],  # noqa: B006
    field_map: Annotated[list[str], typer.Option(
        "--field-map", help="Preset name, YAML file, SOURCE=TARGET rename or none; repeatable. "
        "Default: the map of the framework the keys name (verl, openrlhf), else none.")] = [],  # noqa: B006
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
    regex: Annotated[Optional[str], REGEX_OPT] = None,  # noqa: UP007
    logging_steps: Annotated[int, LOGGING_STEPS_OPT] = 1,
    line_signal: Annotated[list[str], LINE_SIGNAL_OPT] = [],  # noqa: B006
    notify: Annotated[list[str], NOTIFY_OPT] = [],  # noqa: B006
    notify_severity: Annotated[str, NOTIFY_SEVERITY_OPT] = "high",
    notify_resolved: Annotated[bool, NOTIFY_RESOLVED_OPT] = False,
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
        options.sinks, options.observers = outputs(run_dir or " ".join(command), notify,
                                                   notify_severity, notify_resolved)
        result = run_command(options)
    except TrainguardError as exc:
        raise fail(exc) from None
    raise typer.Exit(result.exit_code)
