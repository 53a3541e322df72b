"""The control-file protocol: how the monitor asks a trainer to stop.

The monitor writes a small JSON file atomically (temporary file in the same directory, fsync,
rename, fsync of the directory), so a reader sees the old file or the new one, never a torn one::

    {"version": 1, "command": "stop", "run_id": "20261123-101500-4f2a",
     "rule": "common.nonfinite_loss",
     "severity": "critical", "step": 41, "time": 1732350000.5, "reason": "loss is NaN at step 41"}

A trainer obeys a stop request only when it is for its own run: the ``run_id`` matches, or the
request names no run and was written after the trainer started. A stale file left by an earlier
run is therefore ignored.

This module imports nothing else of trainguard: the trainer side depends on it alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CONTROL_FILENAME",
    "PROTOCOL_VERSION",
    "RUN_DIR_ENV",
    "StopRequest",
    "applies_to",
    "read_stop_request",
    "write_json_atomic",
    "write_stop_request",
]

CONTROL_FILENAME: Final = "control.json"
PROTOCOL_VERSION: Final = 1
#: Set by ``trainguard run`` for its child so that writers find the run directory unconfigured.
RUN_DIR_ENV: Final = "TRAINGUARD_RUN_DIR"


@dataclass(frozen=True, slots=True)
class StopRequest:
    """A request from the monitor that the trainer stop, and why."""

    rule: str
    reason: str
    step: int | None
    time: float
    severity: str = "critical"
    run_id: str | None = None
    command: str = "stop"
    version: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """The request as the JSON object written to the control file."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> StopRequest | None:
        """Build a request from a decoded control file, or ``None`` if it is not one."""
        if not isinstance(obj, dict) or obj.get("command") != "stop":
            return None
        try:
            step = obj.get("step")
            return cls(
                rule=str(obj.get("rule", "")),
                reason=str(obj.get("reason", "")),
                step=int(step) if step is not None else None,
                time=float(obj.get("time", 0.0)),
                severity=str(obj.get("severity", "critical")),
                run_id=obj.get("run_id") if isinstance(obj.get("run_id"), str) else None,
                version=int(obj.get("version", PROTOCOL_VERSION)),
            )
        except (TypeError, ValueError):
            return None


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that no reader ever sees a partial file.

    Temporary file in the same directory, fsync, rename over the target, fsync of the
    directory so the rename itself survives a power cut.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, indent=1, allow_nan=False).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(dir_fd)


def write_stop_request(path: str | os.PathLike[str], request: StopRequest) -> None:
    """Atomically write ``request`` to the control file at ``path``."""
    write_json_atomic(path, request.to_json())


def read_stop_request(path: str | os.PathLike[str]) -> StopRequest | None:
    """Read the control file; ``None`` when it is absent, unreadable or not a stop request."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1 << 16)
        return StopRequest.from_json(json.loads(raw))
    except (OSError, ValueError):
        return None


def applies_to(request: StopRequest, run_id: str | None, started_at: float) -> bool:
    """Whether ``request`` is meant for the run ``run_id`` that started at ``started_at``.

    A request naming a run must name this one; an anonymous request must be newer than the run,
    so that a file left by an earlier run never stops a new one.
    """
    if request.run_id is not None:
        return run_id is not None and request.run_id == run_id
    return request.time >= started_at
