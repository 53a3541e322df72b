"""The live terminal view: alerts as they happen and a closing summary, with rich."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from trainguard.monitor.engine.alerts import Alert

__all__ = ["ConsoleSink"]

_STYLE = {"info": "blue", "low": "cyan", "medium": "yellow", "high": "bold red",
          "critical": "bold white on red"}


class ConsoleSink:
    """Prints each alert as one block: what, evidence, what to do, why."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)

    def emit(self, alert: Alert) -> None:
        """Print one alert."""
        if alert.state == "stop_outcome":  # the follow-up of a stop: delivered how, obeyed?
            self.console.print(Text(f"→ {alert.message} ({alert.delivery})", style="bold"))
            return
        if alert.state == "resolved":
            self.console.print(Text(f"✓ {alert.message}", style="green"))
            return
        head = Text()
        head.append(f" {alert.severity.upper()} ", style=_STYLE.get(alert.severity, ""))
        head.append(f" {alert.rule} ", style="bold")
        head.append(f"step {alert.step}" + (f" rank {alert.rank}" if alert.rank else "")
                    + (f" on {alert.host}" if alert.host else "")
                    + (f" (local rank {alert.local_rank})" if alert.local_rank is not None
                       else ""))
        self.console.print(head)
        self.console.print(f"  [bold]what:[/] {alert.message}")
        if alert.recommendation:
            self.console.print(f"  [bold]do:[/] {alert.recommendation}")
        if alert.reference:
            self.console.print(f"  [bold]why:[/] {alert.reference}", style="dim")
        if alert.delivery:
            self.console.print(f"  [bold]action:[/] {alert.delivery}")

    def line(self, message: str, style: str = "") -> None:
        """Print a status line."""
        self.console.print(message, style=style)
