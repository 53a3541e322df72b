"""The alerts file: every alert as one JSON line (``alerts.jsonl``).

Opened never through a symlink and never a FIFO (:mod:`.files`). A write that fails (ENOSPC,
EIO) never ends the monitor: the line waits in a bounded backlog, ``problem`` says so (the
verdict is degraded, the console still shows every alert), and the backlog is written, in
order, as soon as a write succeeds again.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path

from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.files import open_output, read_regular

__all__ = ["JsonlAlertSink", "MAX_BACKLOG"]

#: Alert lines held while the file cannot be written; older ones are dropped (and counted).
MAX_BACKLOG = 10_000
#: Seconds between retries of a failed write.
RETRY_INTERVAL = 1.0
#: How much of the file's end :meth:`JsonlAlertSink.contains` looks at.
_CONTAINS_TAIL = 1 << 20


class JsonlAlertSink:
    """Appends alerts as JSON lines to a file, written per alert so a follower sees them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: Why alerts are not reaching the file right now (``None`` when they are).
        self.problem: str | None = None
        self.dropped = 0
        self._backlog: deque[bytes] = deque()
        self._next_retry = 0.0
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = open_output(self.path)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self._next_retry = time.monotonic() + RETRY_INTERVAL
        self.problem = (f"cannot write alerts to {self.path}: {exc.strerror or exc}; alerts still "
                        f"go to the console, {len(self._backlog)} waiting, retried every "
                        f"{RETRY_INTERVAL:g} s")

    def emit(self, alert: Alert) -> None:
        """Append one alert line (or hold it while the file cannot be written)."""
        self._backlog.append(json.dumps(alert.to_json(), allow_nan=False).encode() + b"\n")
        if len(self._backlog) > MAX_BACKLOG:
            self._backlog.popleft()
            self.dropped += 1
        self._flush(force=True)

    def retry(self) -> None:
        """Try the backlog again (called by the loop while ``problem`` is set)."""
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        if self.problem is not None and not force and time.monotonic() < self._next_retry:
            return
        try:
            if self._fd is None:
                self._fd = open_output(self.path)
            while self._backlog:
                data = self._backlog[0]
                written = os.write(self._fd, data)
                if written < len(data):
                    # A short append (the disk filled mid-line): finish it, or fail below.
                    self._backlog[0] = data[written:]
                    continue
                self._backlog.popleft()
        except OSError as exc:
            self._fail(exc)
            return
        self.problem = None

    def contains(self, alert: Alert) -> bool:
        """Whether the end of the file already holds ``alert`` (same rule, rank, step and
        state): a restarted monitor delivering a journaled alert again checks first."""
        key = (alert.rule, alert.rank, alert.step, alert.state)
        try:
            tail = read_regular(self.path, _CONTAINS_TAIL, tail=True)
        except OSError:
            return False
        for line in tail.split(b"\n"):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and (obj.get("rule"), obj.get("rank"), obj.get("step"),
                                          obj.get("state")) == key:
                return True
        return False

    def close(self) -> None:
        """Write what is held if possible, and close the file."""
        self._flush(force=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
