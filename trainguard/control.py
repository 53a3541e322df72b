"""The control-file protocol: how the monitor asks a trainer to stop.

The monitor writes a small JSON file atomically (a temporary file of a fixed name per writer in
the same directory, fsync, rename, fsync of the directory), so a reader sees the old file or the
new one, never a torn one, and a writer killed mid-write leaves one temporary at most, removed
by the next write (:func:`write_json_atomic`)::

    {"version": 1, "command": "stop", "run_id": "20261123-101500-4f2a",
     "rule": "common.nonfinite_loss",
     "severity": "critical", "step": 41, "time": 1732350000.5, "reason": "loss is NaN at step 41"}

A trainer obeys a stop request only when it is for its own writer session: the ``run_id``
matches and, when the request names one, the ``session`` too (a new session that reuses a run
directory, a rerun or a resume from a checkpoint, gets a new session id even though it keeps the
run id); a request that names no session must have been written after the session started. A
stale file left by an earlier session is therefore ignored.

The reader never raises and never blocks, whatever the file holds: a FIFO or a device is not
opened for a blocking read, more than :data:`MAX_CONTROL_BYTES` is not read, a nesting too
deep, ``Infinity``, ``NaN`` or a number too large for its field make the file "no request".

This module imports nothing else of trainguard: the trainer side depends on it alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CONTROL_FILENAME",
    "PROTOCOL_VERSION",
    "RUN_DIR_ENV",
    "MAX_CONTROL_BYTES",
    "MAX_METADATA_BYTES",
    "StopRequest",
    "applies_to",
    "read_small_json",
    "read_stop_request",
    "remove_stale_temps",
    "temp_name",
    "write_json_atomic",
    "write_stop_request",
]

CONTROL_FILENAME: Final = "control.json"
PROTOCOL_VERSION: Final = 1
#: Set by ``trainguard run`` for its child so that writers find the run directory unconfigured.
RUN_DIR_ENV: Final = "TRAINGUARD_RUN_DIR"
#: A control or metadata file is small; anything longer is not one (and is not read further).
MAX_CONTROL_BYTES: Final = 1 << 16
#: Nesting a control or metadata file may have; deeper is garbage, refused before decoding
#: (the C decoder recurses once per level).
MAX_NESTING: Final = 32
_MAX_STEP: Final = 1 << 62
#: ``run_metadata.json`` holds the trainer's whole config: larger than a control file.
MAX_METADATA_BYTES: Final = 1 << 24


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
    #: The writer session the request is for (``run_metadata.json``'s ``session_id``), or None.
    session: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The request as the JSON object written to the control file."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> StopRequest | None:
        """Build a request from a decoded control file, or ``None`` if it is not one (a field
        of the wrong type, a step or time that is not a finite number of sane size)."""
        if not isinstance(obj, dict) or obj.get("command") != "stop":
            return None
        step = obj.get("step")
        if step is not None and (type(step) is not int or not -_MAX_STEP <= step <= _MAX_STEP):
            return None
        raw_time = obj.get("time", 0.0)
        if type(raw_time) not in (int, float):
            return None
        try:
            when = float(raw_time)
        except OverflowError:  # a 400-digit integer
            return None
        if not math.isfinite(when):
            return None
        version = obj.get("version", PROTOCOL_VERSION)
        run_id, session = obj.get("run_id"), obj.get("session")
        return cls(
            rule=str(obj.get("rule", ""))[:200],
            reason=str(obj.get("reason", ""))[:2000],
            step=step,
            time=when,
            severity=str(obj.get("severity", "critical"))[:20],
            run_id=run_id if isinstance(run_id, str) else None,
            version=version if type(version) is int and 0 <= version < 1 << 16 else -1,
            session=session if isinstance(session, str) else None,
        )


#: A temporary file older than this is stale whoever left it: a write takes milliseconds, so
#: only a writer killed (or a host gone) between create and rename leaves one that old, and a
#: pid reused since then would otherwise keep it forever.
STALE_TEMP_SECONDS: Final = 600.0


#: The random middle of the names earlier versions made with ``tempfile.mkstemp``: one left
#: by a killed write is removed once it is stale (it has no pid to check).
_LEGACY_TEMP: Final = re.compile(r"[a-z0-9_]{8}")


def _host() -> str:
    """This host's name as it may stand in a file name (a temporary's owner)."""
    name = os.uname().nodename or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]


def temp_name(target: str | os.PathLike[str]) -> str:
    """The fixed temporary name this process and thread writes ``target`` through:
    ``.NAME.HOST.PID.TID.tmp`` next to it. Fixed per writer, so a writer killed between create
    and rename leaves at most one, which its next write replaces; per host, process and thread,
    so two writers never write through the same one."""
    path = os.fspath(target)
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{_host()}.{os.getpid()}.{threading.get_native_id()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process: alive (a nonsense pid is nobody's)
    except OSError:
        return True
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries of ``target`` that no live writer can rename any more: left by a
    process of this host that is gone, or older than :data:`STALE_TEMP_SECONDS`. A live
    writer's temporary, or one of another host younger than that, is left alone (its pid
    means nothing here). Returns the names removed; never raises."""
    path = os.fspath(target)
    folder, name = os.path.split(path)
    prefix, host, now = f".{name}.", _host(), time.time()
    removed: list[str] = []
    try:
        with os.scandir(folder or ".") as entries:
            candidates = [e for e in entries
                          if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in candidates:
        middle = entry.name[len(prefix):-len(".tmp")]
        parts = middle.rsplit(".", 2)
        legacy = _LEGACY_TEMP.fullmatch(middle) is not None
        if not legacy and (len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit())):
            continue  # not one of ours (a user's own ``.control.json.bak.tmp``)
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        gone = (not legacy and parts[0] == host and int(parts[1]) != os.getpid()
                and not _pid_alive(int(parts[1])))
        if not (gone or age >= STALE_TEMP_SECONDS):
            continue  # a live writer's (a thread of ours, too), or another host's, in flight
        try:
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that no reader ever sees a partial file.

    A temporary file of a fixed name per writer (:func:`temp_name`) in the same directory,
    fsync, rename over the target, fsync of the directory so the rename itself survives a
    power cut. The temporary is created anew (``O_EXCL | O_NOFOLLOW``, after removing what a
    killed write of ours left there), so nothing is ever written through a link or a FIFO
    planted at its name; a kill -9 between create and rename leaves at most that one name,
    and the next write by anyone removes it once its writer is gone
    (:func:`remove_stale_temps`). Raises ``OSError`` (ENOSPC, EACCES...) with the target as
    it was and the temporary removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, indent=1, allow_nan=False).encode() + b"\n"
    remove_stale_temps(target)
    tmp = temp_name(target)
    try:
        os.unlink(tmp)  # what a killed write of this pid and thread left (a reused pid too)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
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


#: New file only (a link or FIFO at the name is refused, never written through or blocked on).
_CREATE_FLAGS: Final = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        | getattr(os, "O_CLOEXEC", 0))


def write_stop_request(path: str | os.PathLike[str], request: StopRequest) -> None:
    """Atomically write ``request`` to the control file at ``path``."""
    write_json_atomic(path, request.to_json())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value a control file holds")


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether brackets nest deeper than ``limit`` (counting brackets inside strings too,
    which only makes the count higher: a control file holds none)."""
    depth = 0
    for byte in raw.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in (0x5B, 0x7B) else -1
        if depth > limit:
            return True
    return False


_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")


def read_small_json(path: str | os.PathLike[str], limit: int = MAX_CONTROL_BYTES,
                    max_nesting: int | None = MAX_NESTING) -> Any:
    """The JSON value in a small regular file, or ``None``: absent, not a regular file (a FIFO
    is never read, so this never blocks), unreadable, longer than ``limit`` bytes, nested
    deeper than ``max_nesting`` (None: as deep as the decoder goes), or not strict JSON
    (``NaN``/``Infinity`` refused). Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > limit or (max_nesting is not None and _too_deep(raw, max_nesting)):
        return None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, OverflowError, MemoryError):
        return None


def read_stop_request(path: str | os.PathLike[str]) -> StopRequest | None:
    """Read the control file; ``None`` when it is absent, unreadable, garbled or not a stop
    request. Never raises and never blocks (see :func:`read_small_json`)."""
    return StopRequest.from_json(read_small_json(path))


def applies_to(request: StopRequest, run_id: str | None, started_at: float,
               session: str | None = None) -> bool:
    """Whether ``request`` is meant for the writer session ``session`` of run ``run_id`` that
    started at ``started_at``.

    A request naming a run must name this one; a request naming a session must name this
    session; a request naming no session must be newer than the session's start, so that a
    file left by an earlier session (same run id: a rerun or a resume in the same run
    directory) never stops a new one.
    """
    if request.run_id is not None and (run_id is None or request.run_id != run_id):
        return False
    if request.session is not None:
        return session is not None and request.session == session
    return request.time >= started_at
