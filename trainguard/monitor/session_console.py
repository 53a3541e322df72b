"""What a monitoring session prints: :class:`SessionConsole`, the terminal made on first use,
and :func:`print_summary`, the closing lines of a verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainguard.monitor.engine.alerts import Alert

if TYPE_CHECKING:
    from trainguard.monitor.daemon import Verdict
    from trainguard.monitor.sinks.console import ConsoleSink

__all__ = ["SessionConsole", "print_summary"]


class SessionConsole:
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


def print_summary(console: SessionConsole, verdict: Verdict) -> None:
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
