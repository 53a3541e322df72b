"""Options several ``trainguard`` commands share (stdout presets, notifications), declared once so
their help reads the same everywhere, and :func:`outputs`, which turns the notification and view
flags into the library's sinks and observers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from trainguard.cli_output import escape, stderr

if TYPE_CHECKING:
    from trainguard.monitor.engine.alerts import AlertSink
    from trainguard.monitor.sinks.observer import SessionObserver

__all__ = ["LINE_SIGNAL_OPT", "LOGGING_STEPS_OPT", "NOTIFY_OPT", "NOTIFY_RESOLVED_OPT",
           "NOTIFY_SEVERITY_OPT", "REGEX_OPT", "STEPS_PER_EPOCH_OPT", "outputs"]

REGEX_OPT = typer.Option(
    "--regex", help="Read plain trainer stdout: a preset (trl, transformers, verl, openrlhf, kv) "
    "or a pattern with named groups, (?P<step>...) required, one group per metric (re2 syntax). "
    "Default: stdin auto-detects; files are canonical JSONL.")
LOGGING_STEPS_OPT = typer.Option(
    "--logging-steps", help="The trainer's logging_steps: the n-th printed TRL log dict is step "
    "n x N.")
LINE_SIGNAL_OPT = typer.Option(
    "--line-signal", help="Your own known line, read from printed output with the built-in "
    "ones (OOM, NCCL timeout, traceback...): NAME=PATTERN (re2 syntax) sets metric "
    "stdout/NAME to 1 on each step that prints it, for rules to read; repeatable.")
STEPS_PER_EPOCH_OPT = typer.Option(
    "--steps-per-epoch", help="When known: the TRL step is round(epoch x N) instead of the "
    "count of logs.")
NOTIFY_OPT = typer.Option(
    "--notify", help="Send alerts to this apprise URL (slack://, discord://, tgram://, ntfy://, "
    "mailto://, json://host/path...); repeatable. Needs trainguard\\[notify].")
NOTIFY_SEVERITY_OPT = typer.Option(
    "--notify-severity", help="Lowest severity notified: info, low, medium, high, critical.")
NOTIFY_RESOLVED_OPT = typer.Option(
    "--notify-resolved", help="Also notify when an alert resolves.")


def outputs(source: str, notify: list[str], notify_severity: str, notify_resolved: bool,
            live: bool = False, metrics_port: int | None = None,
            metrics_address: str = "127.0.0.1",
            ) -> tuple[list[AlertSink], list[SessionObserver]]:
    """The notifier, live view and /metrics a command asked for (reach: monitor/outputs.py)."""
    from trainguard.monitor.outputs import OutputOptions, build_outputs

    def say(text: str) -> None:
        stderr().print(f"[yellow]trainguard: {escape(text)}[/]")

    return build_outputs(OutputOptions(notify=list(notify), notify_severity=notify_severity,
                                       notify_resolved=notify_resolved, live=live,
                                       metrics_port=metrics_port,
                                       metrics_address=metrics_address), run=source, say=say)
