"""One node's agent: follows the node's run directory (and GPUs), ships it, delivers stops.

:class:`NodeAgent` is the logic, free of Ray: each :meth:`~NodeAgent.turn` reads what is new in
the node's local run directory (a ``DirectorySource``, inotify-woken) and, when asked, samples
the node's GPUs (``NvmlSource``), and hands one :class:`AgentBatch` to ``ship`` (in the actor,
a call to the monitor actor). ``ship`` answers with the spool's length of every stream (the
acknowledgement) and the current stop request.

Exactly once, from the agent's side: nothing more is read until a batch is acknowledged (a
failed call is shipped again, the same bytes at the same offsets), and after the
acknowledgement the file positions and each stream's offset are checkpointed together, in
``RUN_DIR/.trainguard/agent.json`` on the node. An agent killed between the acknowledgement and
its checkpoint ships that batch again after its restart; the spool drops what it already has
(see :mod:`.spool`). An agent killed before the acknowledgement ships it again too; nothing
acknowledged is ever read again, nothing read is ever skipped.

A stop request is written into the node's own control file, where the node's
``EventWriter``\\ s read it. The request carries the run id that the node's
``run_metadata.json`` records, or none: only rank 0's node has that file, and the writers of the
other nodes obey an anonymous request written after they started (``control.applies_to``),
judged by this node's clock, not the head's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.control import (
    CONTROL_FILENAME,
    StopRequest,
    write_json_atomic,
    write_stop_request,
)
from trainguard.events import MAX_EXACT_INT
from trainguard.monitor.ingest.fdlimit import raise_open_files_limit
from trainguard.monitor.ingest.gpu import NvmlSource
from trainguard.monitor.ingest.sources import STATE_DIRNAME, DirectorySource
from trainguard.monitor.ingest.watch import ChangeWatcher, start_watcher
from trainguard.monitor.ray.spool import Chunk

__all__ = ["AGENT_STATE", "GPU_STREAM", "AgentBatch", "AgentConfig", "NodeAgent", "Reply"]

#: The agent's checkpoint, inside the node's run directory (never read as events).
AGENT_STATE = "agent.json"
#: The stream that carries the node's GPU samples (a name no trainer file has).
GPU_STREAM = "_trainguard_gpu.jsonl"
METADATA_FILENAME = "run_metadata.json"
#: Files of the node's run directory that are the monitor's, not the trainer's.
_OUTPUTS = ("alerts.jsonl",)


@dataclass(slots=True)
class AgentConfig:
    """What one node's agent is told by the head."""

    #: The node's name in the spool, in messages and in GPU samples.
    node: str
    #: The node's local run directory (made if missing).
    run_dir: str
    #: This node's position among the job's nodes: GPU labels start at index x GPUs per node.
    node_index: int = 0
    gpu: bool = False
    gpu_interval: float = 5.0
    poll_interval: float = 0.05
    #: Seconds between calls when there is nothing to ship: the monitor counts a node silent
    #: for ``lost_after`` seconds as lost.
    heartbeat: float = 1.0
    #: Poll only (no inotify), for a run directory on a network filesystem.
    poll: bool = False
    rescan_interval: float = 1.0


@dataclass(slots=True)
class AgentBatch:
    """One call from an agent to the monitor."""

    node: str
    chunks: list[Chunk] = field(default_factory=list)
    #: What the node cannot read (its run directory, its GPUs); empty when all is well.
    problems: list[str] = field(default_factory=list)
    #: The node's ``run_metadata.json``, when it changed since the last acknowledged batch.
    metadata: dict[str, Any] | None = None
    #: True when the agent has read everything there is (``--once`` waits for every node).
    idle: bool = False
    #: The stop request this node's control file holds (its rule and step), once written.
    stop_written: str | None = None


#: The monitor's answer: ``{"acked": {stream: length}, "stop": request JSON or None}``.
Reply = dict[str, Any]


def _stop_key(request: dict[str, Any]) -> str:
    return f"{request.get('rule')}@{request.get('step')}:{request.get('time')}"


def _last_step(data: bytes) -> int | None:
    """The ``step`` of the last line of a chunk (cheap: one line decoded), for GPU samples."""
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    try:
        step = json.loads(data[start:]).get("step")
    except (ValueError, AttributeError):
        return None
    return step if type(step) is int and abs(step) <= MAX_EXACT_INT else None


class NodeAgent:
    """Follows one node's run directory and ships it through ``ship`` (see the module)."""

    def __init__(self, config: AgentConfig, ship: Callable[[AgentBatch], Reply]) -> None:
        self.config = config
        self._ship = ship
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.run_dir / STATE_DIRNAME / AGENT_STATE
        raise_open_files_limit()
        state = self._load_state()
        #: stream -> bytes of it acknowledged by the monitor.
        self.offsets: dict[str, int] = {str(k): int(v) for k, v in
                                        dict(state.get("offsets") or {}).items()}
        self._stop_written: str | None = state.get("stop_written")
        self.source = DirectorySource(
            self.run_dir, exclude=[str(self.run_dir / name) for name in _OUTPUTS],
            positions=state.get("positions") or None, rescan_interval=config.rescan_interval)
        self.watcher: ChangeWatcher | None = None if config.poll else start_watcher(self.source)
        self.step = 0
        self.gpu: NvmlSource | None = None
        if config.gpu:
            self.gpu = NvmlSource(config.gpu_interval, step=lambda: self.step, host=config.node)
            self.gpu.rank_base = config.node_index * self.gpu.gpu_count
        self._pending: list[Chunk] | None = None
        #: Held while the offsets, the stop written and the checkpoint change together: a stop
        #: pushed by the monitor arrives on another thread than the loop's.
        self._lock = threading.Lock()
        self._next_heartbeat = 0.0
        self._said_idle = False
        self._metadata_seen: tuple[int, int] | None = None
        self._metadata: dict[str, Any] | None = None
        #: Counters for status(): batches acknowledged, calls that failed, the last failure.
        self.shipped = 0
        self.failures = 0
        self.last_failure: str | None = None

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_bytes())
        except (OSError, ValueError):
            return {}  # a first start, or a damaged file: everything is read (the spool dedups)
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        write_json_atomic(self.state_path, {"offsets": self.offsets,
                                            "positions": self.source.positions(),
                                            "stop_written": self._stop_written})

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> list[Chunk]:
        """Everything new, one chunk per stream, at the offsets that follow the acknowledged."""
        parts: dict[str, list[bytes]] = {}
        root = str(self.run_dir)
        for block in self.source.poll_blocks():
            raw = block.raw
            if raw is None:
                raw = b"".join(line + b"\n" for line in block.lines)
            stream = os.path.relpath(block.stream, root).replace(os.sep, "/")
            parts.setdefault(stream, []).append(raw)
        if self.gpu is not None:
            lines = self.gpu.poll()
            if lines:
                parts.setdefault(GPU_STREAM, []).append(
                    b"".join(line.data + b"\n" for line in lines))
        chunks = []
        for stream, pieces in parts.items():
            data = b"".join(pieces)
            chunks.append(Chunk(stream, self.offsets.get(stream, 0), data))
            if stream != GPU_STREAM:
                step = _last_step(data)
                if step is not None and step > self.step:
                    self.step = step
        return chunks

    def _read_metadata(self) -> None:
        path = self.run_dir / METADATA_FILENAME
        try:
            st = os.stat(path)
        except OSError:
            return
        signature = (st.st_ino, st.st_mtime_ns)
        if signature == self._metadata_seen:
            return
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return  # being replaced: read at the next turn
        if isinstance(meta, dict):
            self._metadata_seen, self._metadata = signature, meta

    def problems(self) -> list[str]:
        """What this node cannot read."""
        found = self.source.problems()
        if self.gpu is not None:
            found += self.gpu.problems()
        return found

    # -- one turn ------------------------------------------------------------------------------

    def turn(self) -> bool:
        """Read (unless a batch waits for its acknowledgement), ship when there is something
        to say or a heartbeat is due; True when a batch was acknowledged."""
        if self._pending is None:
            self._pending = self._read()
            self._read_metadata()
        chunks = self._pending
        # A file read in part always yields lines: no chunk means nothing is left to read.
        idle = not chunks
        now = time.monotonic()
        if idle and self._metadata is None and now < self._next_heartbeat and self._said_idle:
            self._pending = None  # nothing waits: the next turn reads again
            return False
        batch = AgentBatch(self.config.node, chunks, self.problems(), self._metadata, idle,
                           self._stop_written)
        try:
            reply = self._ship(batch)
        except Exception as exc:  # noqa: BLE001 - the monitor restarting, a lost head: retry
            self.failures += 1
            self.last_failure = f"{type(exc).__name__}: {exc}"[:300]
            return False
        self._next_heartbeat = now + self.config.heartbeat
        self._said_idle = idle
        self._pending = None
        self._metadata = None
        self.shipped += 1
        with self._lock:
            for chunk in chunks:
                self.offsets[chunk.stream] = chunk.end
            stop = reply.get("stop")
            if not (isinstance(stop, dict) and self._write_stop(stop)) and chunks:
                self._save_state()
        return True

    def deliver_stop(self, obj: dict[str, Any]) -> bool:
        """Write the monitor's stop request (pushed, or in a reply) into this node's control
        file, once; True when it was written now."""
        with self._lock:
            return self._write_stop(obj)

    def _write_stop(self, obj: dict[str, Any]) -> bool:
        if _stop_key(obj) == self._stop_written:
            return False
        request = StopRequest.from_json(obj)
        if request is None:
            return False
        local = StopRequest(rule=request.rule, reason=request.reason, step=request.step,
                            time=time.time(), severity=request.severity,
                            run_id=_recorded_run_id(self.run_dir))
        write_stop_request(self.run_dir / CONTROL_FILENAME, local)
        self._stop_written = _stop_key(obj)
        self._save_state()
        return True

    def wait(self, timeout: float) -> None:
        """Sleep until the run directory changes or ``timeout`` passes."""
        if self.watcher is not None:
            self.watcher.wait(timeout)
        else:
            time.sleep(timeout)

    def status(self) -> dict[str, Any]:
        """Counters and offsets, for the head and for tests."""
        return {"node": self.config.node, "run_dir": str(self.run_dir), "pid": os.getpid(),
                "offsets": dict(self.offsets), "shipped": self.shipped,
                "failures": self.failures, "last_failure": self.last_failure,
                "stop_written": self._stop_written, "problems": self.problems()}

    def close(self) -> None:
        """Stop the watcher and release files and NVML."""
        if self.watcher is not None:
            self.watcher.close()
        self.source.close()
        if self.gpu is not None:
            self.gpu.close()


def _recorded_run_id(run_dir: Path) -> str | None:
    try:
        meta = json.loads((run_dir / METADATA_FILENAME).read_bytes())
    except (OSError, ValueError):
        return None
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    return run_id if isinstance(run_id, str) else None
