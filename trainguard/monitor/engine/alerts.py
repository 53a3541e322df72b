"""Alerts: what a firing rule reports, and the one-method contract of the sinks that receive them.

The sinks themselves (files, terminals, notifications) live in ``trainguard.monitor.sinks``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["Alert", "AlertSink"]


@dataclass(slots=True)
class Alert:
    """One alert event: a rule started firing (``state="firing"``) or stopped (``"resolved"``)."""

    time: float | None
    rule: str
    severity: str
    action: str
    metric: str
    value: float | None
    step: int
    rank: int | None
    message: str
    recommendation: str = ""
    reference: str = ""
    state: str = "firing"
    #: How a stop was delivered (``control_file``, ``signal``...), filled in by the actions.
    delivery: str | None = None
    #: The node of ``rank`` and the rank's index there, as its events said (multi-node jobs);
    #: filled in by the monitor loop, None when the events did not say.
    host: str | None = None
    local_rank: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON-safe dict (non-finite values as strings)."""
        obj = asdict(self)
        value = self.value
        if value is not None and not math.isfinite(value):
            obj["value"] = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        return obj


class AlertSink(Protocol):
    """Receives every alert as it happens. One method; sinks do their own I/O."""

    def emit(self, alert: Alert) -> None:
        """Deliver one alert."""
