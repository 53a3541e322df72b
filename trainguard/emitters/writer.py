"""``EventWriter``: the trainer's side of trainguard, a few microseconds per event.

It appends canonical events (see :mod:`trainguard.events`) to ``RUN_DIR/events.rank{R}.jsonl``
and answers ``should_stop`` from the control file that the monitor writes. It never raises into
the training loop for an I/O problem or for what it reads: it warns once and counts what it could
not write.

**Every rank stops after the same step.** Ranks that each read the control file would see a
request land between their checks and stop one step apart: the rank that goes on blocks in the
next collective until its timeout, and checkpoints are of different steps. So when
``torch.distributed`` is initialised with more than one rank (``sync_stop``, the default), rank
0 alone decides (it owns the session id, so it knows which requests are its session's) and
``should_stop`` broadcasts its answer to every rank: one tiny collective per call, which every
rank must therefore make once per step, as the README's loop and the TRL callback do. Without a
process group each rank reads the file itself.
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
    MAX_METADATA_BYTES,
    RUN_DIR_ENV,
    StopRequest,
    applies_to,
    read_small_json,
    read_stop_request,
    write_json_atomic,
)
from trainguard.events import encode_value

__all__ = ["EventWriter", "resolve_rank"]

METADATA_FILENAME = "run_metadata.json"
#: Metric values serialized as they are (``bool`` is not here: it is no metric).
_PLAIN_TYPES = frozenset({float, int})

try:  # orjson (a core dependency) is ~8x faster than json.dumps for a step's line
    import orjson as _orjson

    _ORJSON_OPTIONS = _orjson.OPT_NON_STR_KEYS | _orjson.OPT_APPEND_NEWLINE

    def _dumps_line(obj: dict[str, Any]) -> bytes:
        """One canonical line, newline included (orjson: int keys become strings, as json's)."""
        return _orjson.dumps(obj, option=_ORJSON_OPTIONS)
except ImportError:  # pragma: no cover - the writer must still work without it
    def _dumps_line(obj: dict[str, Any]) -> bytes:
        """One canonical line, newline included (stdlib json)."""
        return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()


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


def _process_group() -> Any:
    """``torch.distributed`` when the trainer initialised it with more than one rank, else
    None. torch is never imported here: only looked up if the trainer imported it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist
    except Exception:  # noqa: BLE001 - a half-initialised backend: behave as without one
        return None
    return None


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
    run's id) and, every time, a new ``session_id``: the monitor copies both into a stop
    request, and a request of another run or an earlier session is ignored.

    ``should_stop`` reads the control file at most once per call: at every call that follows a
    newly logged step, and otherwise (a loop that asks many times a step) once per
    ``stop_check_interval`` seconds. So a request written during step N is seen at the end of
    step N or N+1. ``sync_stop`` (default: when ``torch.distributed`` is initialised with more
    than one rank) makes every rank's answer rank 0's, through a broadcast (module doc).
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
        sync_stop: bool | None = None,
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
        self._logged_since_check = True
        self._control_signature: tuple[int, int, int] | None = None
        self._stop_request: StopRequest | None = None
        #: This writer's session: a rerun or resume in the same run directory gets a new one.
        #: Rank 0 makes it; other ranks learn it from run_metadata.json (None until then).
        self.session_id: str | None = uuid.uuid4().hex if self.rank == 0 else None
        self._sync_stop = sync_stop
        self._sync_tensor: Any = None
        self._sync_failed = False
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
        values = metrics.values()
        try:
            # The common step, all plain finite floats and ints, is serialized as it is: one
            # type check and one sum in C instead of a Python call per metric. A NaN or an
            # infinity anywhere makes the sum's difference with itself non-zero (an overflow to
            # inf too, which then only takes the general loop).
            total = sum(values) if _PLAIN_TYPES.issuperset(map(type, values)) else None
        except TypeError:
            total = None
        obj: dict[str, Any] = {"time": round(time.time(), 6), "step": int(step)}
        if self._write_rank:
            obj["rank"] = self.rank
            obj.update(self._where)
        if kind != "train":
            obj["kind"] = kind
        line = None
        count = len(metrics)
        if total is not None and total - total == 0:
            obj["metrics"] = metrics
            try:
                line = _dumps_line(obj)
            except TypeError:  # an int past 64 bits, a key orjson cannot name: the loop below
                line = None
        if line is None:
            encoded: dict[str, Any] = {}
            for key, value in metrics.items():
                try:
                    encoded[key] = encode_value(float(value))
                except (TypeError, ValueError, OverflowError):
                    continue  # strings, lists: not metrics
            obj["metrics"] = encoded
            count = len(encoded)
            try:
                line = _dumps_line(obj)
            except TypeError as exc:  # a key JSON cannot name (a tuple): drop the step, say so
                self.events_dropped += count
                self._io_failed(exc)
                return
        self._logged_since_check = True
        try:
            # Straight to the descriptor (opened for append): nothing else writes through the
            # file object, so its buffers stay empty, and the line is out in one system call.
            fd = self._file.fileno()
            written = os.write(fd, line)
            while written < len(line):  # a short write (a full disk, a signal): the rest
                written += os.write(fd, line[written:])
        except (OSError, ValueError) as exc:
            self.events_dropped += count
            self._io_failed(exc)
            return
        self.events_written += count

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
        """Whether the monitor asked this session to stop. Cheap: at most one ``stat`` per
        call, and with a process group one broadcast of one number (module doc). Never raises
        and never blocks on what the control file holds."""
        if self._pending_step is not None:
            self._flush_pending()
        dist = self._sync_group()
        if dist is None:
            if self._stop_request is not None:
                return True
            return self._check_control_file()
        # Every rank takes part in the broadcast at every call, stopped or not, so that the
        # calls stay paired across ranks.
        local = self._stop_request is not None or (self.rank == 0 and self._check_control_file())
        decided = self._broadcast_flag(dist, local)
        if decided and self._stop_request is None:
            self._stop_request = self._request_seen_by_rank0()
        return decided

    def _sync_group(self) -> Any:
        if self._sync_stop is False or self._sync_failed:
            return None
        return _process_group()

    def _broadcast_flag(self, dist: Any, local: bool) -> bool:
        """Rank 0's flag, on every rank; on a failed collective, this rank's own flag."""
        try:
            torch = sys.modules["torch"]
            tensor = self._sync_tensor
            if tensor is None:
                backend = str(dist.get_backend()).lower()
                device = (torch.device("cuda", torch.cuda.current_device())
                          if "nccl" in backend else torch.device("cpu"))
                tensor = self._sync_tensor = torch.zeros(1, dtype=torch.int32, device=device)
            tensor.fill_(1 if local else 0)
            dist.broadcast(tensor, src=0)
            return bool(tensor.item())
        except Exception as exc:  # noqa: BLE001 - never raise into the training loop
            self._sync_failed = True
            warnings.warn(f"trainguard: the stop broadcast across ranks failed ({exc}); each "
                          "rank now reads the control file itself", RuntimeWarning, stacklevel=4)
            return local or (self._stop_request is not None) or self._check_control_file()

    def _request_seen_by_rank0(self) -> StopRequest:
        """What rank 0 obeyed, for this rank's ``stop_reason``: the control file if it still
        holds a request, else a placeholder that says where the decision came from."""
        request = read_stop_request(self.control_path)
        if request is not None:
            return request
        return StopRequest(rule="trainguard.stop", reason="rank 0 received a stop request",
                           step=None, time=time.time(), run_id=self.run_id,
                           session=self.session_id)

    def _check_control_file(self) -> bool:
        """Read the control file when due; True when it holds a request for this session."""
        now = time.monotonic()
        if not self._logged_since_check and now < self._next_stop_check:
            return False
        self._logged_since_check = False
        self._next_stop_check = now + self._stop_check_interval
        try:
            st = os.stat(self.control_path)
        except (OSError, ValueError):
            return False
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._control_signature:
            return False
        self._control_signature = signature
        request = read_stop_request(self.control_path)
        if request is None:
            return False
        if self.rank != 0 and (self.session_id is None or request.session != self.session_id
                               or self._run_id_provisional):
            # Rank 0 may have written this session's metadata since this rank read it.
            meta = self._read_metadata() or {}
            recorded, session = meta.get("run_id"), meta.get("session_id")
            if isinstance(recorded, str) and self._run_id_provisional:
                self.run_id, self._run_id_provisional = recorded, False
            if isinstance(session, str):
                self.session_id = session
            # A request older than this rank is of an earlier session, whatever it names (the
            # metadata read may have been the earlier session's, rewritten just after).
            if request.time < self.started_at:
                return False
        if applies_to(request, self.run_id, self.started_at, self.session_id):
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
        existing = read_small_json(self.metadata_path, MAX_METADATA_BYTES, None)
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
        meta["session_id"] = self.session_id
        try:
            write_json_atomic(self.metadata_path, meta)
        except (OSError, ValueError, TypeError) as exc:
            self._io_failed(exc)
            return False
        return True

    def _establish_run_id(self, metadata: Mapping[str, Any] | None) -> str:
        existing = self._read_metadata()
        recorded = existing.get("run_id") if existing is not None else None
        if self.rank != 0:
            if isinstance(recorded, str):
                session = existing.get("session_id") if existing is not None else None
                self.session_id = session if isinstance(session, str) else None
                return recorded
            self._run_id_provisional = True
            return _new_run_id()
        run_id = recorded if isinstance(recorded, str) else _new_run_id()
        # A new session every time, in the same file: the monitor reads it from here.
        meta = dict(existing or {})
        meta.update({
            "run_id": run_id,
            "session_id": self.session_id,
            "session_start": self.started_at,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "world_size": self.world_size,
        })
        meta.setdefault("start_time", self.started_at)
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
