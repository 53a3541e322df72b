"""What a command line asks for besides the alerts file and the console: notifications
(``--notify``), the live view (``--live``) and ``/metrics`` (``--metrics-port``), built into the
sinks and observers a session takes (:class:`~trainguard.monitor.session.MonitorOptions`).

Each is imported only when asked for: apprise and prometheus-client are optional extras.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from trainguard.monitor.engine.alerts import AlertSink
from trainguard.monitor.sinks.observer import SessionObserver

__all__ = ["OutputOptions", "build_outputs"]


@dataclass(slots=True)
class OutputOptions:
    """The flags of the reaching-people outputs."""

    notify: list[str] = field(default_factory=list)
    notify_severity: str = "high"
    notify_resolved: bool = False
    live: bool = False
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"


def build_outputs(options: OutputOptions, *, run: str,
                  say: Callable[[str], None]) -> tuple[list[AlertSink], list[SessionObserver]]:
    """The sinks and observers for ``options``; ``say`` reports delivery problems.

    Raises :class:`~trainguard.exceptions.ConfigError` for a missing extra, a bad URL or a
    port that cannot be bound.
    """
    sinks: list[AlertSink] = []
    observers: list[SessionObserver] = []
    if options.notify:
        from trainguard.monitor.sinks.notify import Notifier

        notifier = Notifier(list(options.notify), run=run, min_severity=options.notify_severity,
                            resolved=options.notify_resolved, report=say)
        sinks.append(notifier)
        observers.append(notifier)
    if options.metrics_port is not None:
        from trainguard.monitor.sinks.prometheus import MetricsServer

        observers.append(MetricsServer(options.metrics_port, options.metrics_address))
    if options.live and sys.stdout.isatty():  # a pipe or a file gets the plain lines
        from trainguard.monitor.sinks.live import LiveView

        observers.append(LiveView(source=run))
    return sinks, observers
