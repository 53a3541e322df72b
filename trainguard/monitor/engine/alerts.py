"""Alerts: what a firing rule reports, and the sinks that receive them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Alert", "AlertSink", "JsonlAlertSink"]


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


class JsonlAlertSink:
    """Appends alerts as JSON lines to a file, flushed per alert so a follower sees them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def emit(self, alert: Alert) -> None:
        """Append one alert line."""
        self._file.write(json.dumps(alert.to_json(), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()
