"""``EventWriter``: the trainer's side of trainguard, a few microseconds per event.

It appends canonical events (see :mod:`trainguard.events`) to ``RUN_DIR/events.rank{R}.jsonl``
and answers ``should_stop`` from the control file that the monitor writes. It never raises into
the training loop for an I/O problem: it warns once and counts what it could not write.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from trainguard.control import (
    CONTROL_FILENAME,
    RUN_DIR_ENV,
    StopRequest,
    applies_to,
    read_stop_request,
    write_json_atomic,
)
from trainguard.events import encode_value

__all__ = ["EventWriter", "resolve_rank"]

METADATA_FILENAME = "run_metadata.json"


def resolve_rank() -> tuple[int, int]:
    """Return ``(rank, world_size)`` from ``RANK``/``WORLD_SIZE`` or an initialised
    torch.distributed.

    torch is consulted only if the trainer already imported it: the writer never imports torch.
    """
    env_rank = os.environ.get("RANK")
    env_world = os.environ.get("WORLD_SIZE")
    if env_rank is not None:
        try:
            return int(env_rank), int(env_world or 1)
        except ValueError:
            pass
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank()), int(dist.get_world_size())
        except Exception:  # noqa: BLE001, S110 - a half-initialised backend must not break logging
            pass
    return 0, 1


#: Names the node in events when set (else the host name): nodes that share a host name, as
#: the raylets of one test machine do, or a name nicer than the host's.
HOST_ENV = "TRAINGUARD_HOST"


def _identity(host: str | None, local_rank: int | None
              ) -> tuple[str, int | None, dict[str, Any]]:
    """The node's name, the rank's index on it (``LOCAL_RANK``, as torchrun, accelerate and
    Ray Train set it) and the envelope fields that say them."""
    name = host or os.environ.get(HOST_ENV) or socket.gethostname()
    if local_rank is None:
        try:
            local_rank = int(os.environ["LOCAL_RANK"])
        except (KeyError, ValueError):
            local_rank = None
    where: dict[str, Any] = {"host": name}
    if local_rank is not None:
        where["local_rank"] = local_rank
    return name, local_rank, where


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


class EventWriter:
    """Write metric events for one rank and tell the loop when the monitor asks it to stop.

    >>> with EventWriter("runs/exp1") as events:              # doctest: +SKIP
    ...     for step in range(1, 1001):
    ...         events.log_metrics(step, {"loss": loss, "grad_norm": gn})
    ...         if events.should_stop:
    ...             print("stopping:", events.stop_reason)
    ...             break

    ``run_dir`` defaults to ``$TRAINGUARD_RUN_DIR`` (set by ``trainguard run``). Rank 0 writes
    ``run_metadata.json`` with the run id unless one is already there (a restarted rank keeps the
    run's id), and every rank reads the run id from it so that a control file meant for another
    run is ignored.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        run_id: str | None = None,
        stop_check_interval: float = 0.05,
        metadata: Mapping[str, Any] | None = None,
        host: str | None = None,
        local_rank: int | None = None,
    ) -> None:
        if run_dir is None:
            run_dir = os.environ.get(RUN_DIR_ENV) or "runs/trainguard"
        self.run_dir = Path(run_dir)
        detected_rank, detected_world = resolve_rank()
        self.rank = detected_rank if rank is None else rank
        self.world_size = detected_world if world_size is None else world_size
        self.path = self.run_dir / f"events.rank{self.rank}.jsonl"
        self.control_path = self.run_dir / CONTROL_FILENAME
        self.started_at = time.time()
        self.events_written = 0
        self.events_dropped = 0
        self._stop_check_interval = stop_check_interval
        self._next_stop_check = 0.0
        self._control_signature: tuple[int, int, int] | None = None
        self._stop_request: StopRequest | None = None
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}
        self._warned = False
        self._closed = False
        self._file: Any = None
        self._write_rank = self.world_size > 1 or self.rank != 0
        #: Which node wrote a line (multi-node jobs): written with ``rank``; see _identity.
        self.host, self.local_rank, self._where = _identity(host, local_rank)
        # A non-zero rank that started before rank 0 wrote run_metadata.json holds a provisional
        # id of its own; it re-reads the file before ignoring a stop request (see should_stop).
        self._run_id_provisional = False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_id = run_id or self._establish_run_id(metadata)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        except OSError as exc:
            self.run_id = run_id or _new_run_id()
            self._io_failed(exc)

    # -- writing -----------------------------------------------------------------------------

    def log(self, step: int, name: str, value: float) -> None:
        """Record one metric for ``step``; the step's line is written when the step changes,
        on :meth:`flush`, on ``should_stop`` or on :meth:`close`."""
        if step != self._pending_step:
            self._flush_pending()
            self._pending_step = step
        self._pending[name] = value

    def log_metrics(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> None:
        """Write the metrics of ``step`` as one line, and flush it so that a follower sees it."""
        if step == self._pending_step and kind == "train":
            self._pending.update(metrics)
            self._flush_pending()
            return
        self._flush_pending()
        self._write(step, metrics, kind)

    def flush(self) -> None:
        """Write any metrics held by :meth:`log` and push them to the operating system."""
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending_step is not None:
            step, pending = self._pending_step, self._pending
            self._pending_step, self._pending = None, {}
            if pending:
                self._write(step, pending, "train")

    def _write(self, step: int, metrics: Mapping[str, Any], kind: str) -> None:
        if self._file is None:
            self.events_dropped += len(metrics)
            return
        encoded: dict[str, Any] = {}
        for key, value in metrics.items():
            try:
                encoded[key] = encode_value(float(value))
            except (TypeError, ValueError):
                continue  # strings, lists: not metrics
        obj: dict[str, Any] = {"time": round(time.time(), 6), "step": int(step)}
        if self._write_rank:
            obj["rank"] = self.rank
            obj.update(self._where)
        if kind != "train":
            obj["kind"] = kind
        obj["metrics"] = encoded
        try:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._file.flush()
        except (OSError, ValueError) as exc:
            self.events_dropped += len(encoded)
            self._io_failed(exc)
            return
        self.events_written += len(encoded)

    def _io_failed(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"trainguard: cannot write events to {self.path}: {exc}. Training goes on; "
                "events that cannot be written are counted in EventWriter.events_dropped.",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- stop requests ---------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """Whether the monitor asked this run to stop. Cheap: at most one ``stat`` per call,
        and none while the check interval has not elapsed since the last one."""
        if self._pending_step is not None:
            self._flush_pending()
        if self._stop_request is not None:
            return True
        now = time.monotonic()
        if now < self._next_stop_check:
            return False
        self._next_stop_check = now + self._stop_check_interval
        try:
            st = os.stat(self.control_path)
        except OSError:
            return False
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._control_signature:
            return False
        self._control_signature = signature
        request = read_stop_request(self.control_path)
        if request is None:
            return False
        if (self._run_id_provisional and request.run_id is not None
                and request.run_id != self.run_id):
            recorded = self._read_recorded_run_id()
            if recorded is not None:
                self.run_id, self._run_id_provisional = recorded, False
        if applies_to(request, self.run_id, self.started_at):
            self._stop_request = request
            return True
        return False

    @property
    def stop_request(self) -> StopRequest | None:
        """The stop request this run obeyed, once ``should_stop`` returned True."""
        return self._stop_request

    @property
    def stop_reason(self) -> str | None:
        """A one-line reason for the stop, for the trainer's own log."""
        req = self._stop_request
        if req is None:
            return None
        where = f" at step {req.step}" if req.step is not None else ""
        return f"{req.rule}{where}: {req.reason}"

    # -- metadata and life cycle -----------------------------------------------------------------

    @property
    def metadata_path(self) -> Path:
        """``RUN_DIR/run_metadata.json``: the run id and what is known about the run."""
        return self.run_dir / METADATA_FILENAME

    def _read_metadata(self) -> dict[str, Any] | None:
        try:
            existing = json.loads(self.metadata_path.read_text())
        except (OSError, ValueError):
            return None
        return existing if isinstance(existing, dict) else None

    def _read_recorded_run_id(self) -> str | None:
        existing = self._read_metadata()
        run_id = existing.get("run_id") if existing is not None else None
        return run_id if isinstance(run_id, str) else None

    def update_metadata(self, fields: Mapping[str, Any]) -> bool:
        """Merge ``fields`` into ``run_metadata.json`` (rank 0 only; other ranks do nothing).

        The file is rewritten atomically and keeps this run's id, so that there is one run id
        and one metadata file however many emitters describe the run. ``fields`` must be
        JSON-safe (no NaN). Returns whether the file was written; an I/O error is warned about
        once, never raised into the training loop.
        """
        if self.rank != 0:
            return False
        meta = self._read_metadata() or {}
        meta.update(fields)
        meta["run_id"] = self.run_id
        try:
            write_json_atomic(self.metadata_path, meta)
        except (OSError, ValueError, TypeError) as exc:
            self._io_failed(exc)
            return False
        return True

    def _establish_run_id(self, metadata: Mapping[str, Any] | None) -> str:
        recorded = self._read_recorded_run_id()
        if recorded is not None:
            return recorded
        run_id = _new_run_id()
        self._run_id_provisional = self.rank != 0
        if self.rank == 0:
            meta = {
                "run_id": run_id,
                "start_time": self.started_at,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "world_size": self.world_size,
            }
            if metadata:
                meta.update(metadata)
            write_json_atomic(self.metadata_path, meta)
        return run_id

    def close(self) -> None:
        """Write what is pending and close the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._flush_pending()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._io_failed(exc)
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
