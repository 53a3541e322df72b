"""The alerts file: every alert as one JSON line (``alerts.jsonl``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainguard.monitor.engine.alerts import Alert

__all__ = ["JsonlAlertSink"]


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
