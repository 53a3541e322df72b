"""The monitor actor's body: takes the agents' batches, runs the monitor, tells agents of stops.

:class:`MonitorService` runs on the head. Each agent's batch goes into the :class:`Spool`
(exactly once, by stream and offset) and the answer carries the spool's lengths and the current
stop request. In a thread of its own, an ordinary monitoring session (``run_monitor``) follows
the spool as a run directory, with its checkpoint, alert ledger and control file there: a
monitor actor restarted by Ray resumes from them, and agents ship again what it had not
acknowledged.

:class:`NodeHealth` is a source with no lines, only problems: a node whose agent has been
silent for ``lost_after`` seconds (a node removed, a host down, an agent that cannot restart)
and what each agent cannot read on its node. Its problems make the verdict *degraded*: a monitor
that lost a node never calls the run clean.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainguard.control import CONTROL_FILENAME, read_stop_request, write_json_atomic
from trainguard.exceptions import TrainguardError
from trainguard.monitor.daemon import Verdict
from trainguard.monitor.ingest.tail import Line, TailStats
from trainguard.monitor.ray.agent import METADATA_FILENAME, AgentBatch, Reply
from trainguard.monitor.ray.spool import Spool
from trainguard.monitor.session import MonitorOptions, run_monitor

__all__ = ["DrainingStop", "MonitorService", "NodeHealth"]


class NodeHealth:
    """A source of problems only: lost nodes and what agents cannot read (see the module)."""

    name = "nodes"

    def __init__(self, nodes: list[str], lost_after: float = 10.0) -> None:
        self.nodes = list(nodes)
        self.lost_after = lost_after
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._problems: dict[str, list[str]] = {}
        #: node -> number of the batch in which it last said it had read everything.
        self._idle: dict[str, int] = {}
        #: Batches received so far: a ticket to tell idle reports after a moment from before.
        self.batches = 0
        self.stops_written: dict[str, str] = {}

    def saw(self, batch: AgentBatch) -> None:
        """An agent's batch arrived: its node is alive; note what it cannot read."""
        with self._lock:
            self._seen[batch.node] = time.monotonic()
            self._problems[batch.node] = list(batch.problems)
            self.batches += 1
            if batch.idle:
                self._idle[batch.node] = self.batches
            else:
                self._idle.pop(batch.node, None)
            if batch.stop_written:
                self.stops_written[batch.node] = batch.stop_written

    def lost(self) -> list[str]:
        """Nodes silent for longer than ``lost_after`` (or never heard from since then)."""
        now = time.monotonic()
        with self._lock:
            return [node for node in self.nodes
                    if now - self._seen.get(node, self._started) > self.lost_after]

    def idle(self, after: int = 0) -> set[str]:
        """Nodes whose agent last said it had read everything, in a batch after ``after``."""
        with self._lock:
            return {node for node, number in self._idle.items() if number > after}

    def poll(self) -> list[Line]:
        """No lines: the agents' lines come through the spool."""
        return []

    def problems(self) -> list[str]:
        """Lost nodes first, then each node's own problems."""
        now = time.monotonic()
        found = []
        with self._lock:
            for node in self.nodes:
                last = self._seen.get(node)
                silent = now - (last if last is not None else self._started)
                if silent <= self.lost_after:
                    continue
                if last is None:
                    found.append(f"node {node}: its agent never reported ({silent:.0f} s): "
                                 "its ranks are not seen (is the node up? see `ray status`)")
                else:
                    found.append(f"node {node}: lost: no word from its agent for {silent:.0f} s "
                                 "(node removed or down?): its ranks are not seen")
            for node, problems in self._problems.items():
                found += [f"node {node}: {p}" for p in problems]
        return found

    @property
    def exhausted(self) -> bool:
        """Never: nodes can come back."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """No streams of its own."""
        return {}

    def close(self) -> None:
        """Nothing to release."""


class DrainingStop(threading.Event):
    """A stop event for the spool's session that ends it only once it has read what is there.

    ``Monitor.run`` waits on its stop event after a poll that found nothing (the spool's session
    runs without a watcher). Once :meth:`set`, the second such wait ends the session: the poll
    before it started after the request, so every batch acknowledged before :meth:`set` was
    read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._quiet = 0
        self._drained = False

    def is_set(self) -> bool:
        """True once drained (see the class docstring)."""
        return self._drained

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep between quiet polls; after :meth:`set`, count them and return at once."""
        if super().is_set():
            self._quiet += 1
            if self._quiet >= 2:
                self._drained = True
            return True
        return super().wait(timeout)


class MonitorService:
    """The monitor actor (see the module docstring); ``spool`` is a folder on the head."""

    def __init__(self, spool: str, options: MonitorOptions, nodes: list[str],
                 lost_after: float = 10.0,
                 agents: Callable[[], list[Any]] | None = None) -> None:
        self.spool = Spool(spool)
        self.health = NodeHealth(nodes, lost_after)
        self.options = opts = copy.copy(options)
        opts.source = str(self.spool.root)
        opts.poll = True  # no watcher: DrainingStop relies on waits after quiet polls
        opts.once = False  # follows the spool until finish(), which drains it (--once too)
        opts.local_gpus = False  # each node's agent samples its own GPUs
        opts.extra_sources = [self.health, _SpoolProblems(self.spool)]
        opts.tee = False
        self.control_path = self.spool.root / CONTROL_FILENAME
        self._control_seen: tuple[int, int, int] | None = None
        self._control_lock = threading.Lock()
        self._stop: dict[str, Any] | None = None
        self._metadata_written = (self.spool.root / METADATA_FILENAME).exists()
        self._stop_event = DrainingStop()
        self.verdict: Verdict | None = None
        self.error: str | None = None
        #: Finds the agent actors (by name, so a restarted monitor finds them too), to push a
        #: stop at once; every reply carries it as well.
        self._find_agents = agents
        self._thread = threading.Thread(target=self._run, name="trainguard-monitor",
                                        daemon=True)
        self._thread.start()
        self._pusher = threading.Thread(target=self._push_stops, name="trainguard-stops",
                                        daemon=True)
        self._pusher.start()

    def _push_stops(self) -> None:
        """Every 20 ms, look at the session's control file; push a new request to every agent
        (an idle agent would otherwise hear of it only at its next heartbeat)."""
        pushed: dict[str, Any] | None = None
        while not self._stop_event.is_set():
            request = self._stop_request()
            if request is not None and request is not pushed and self._find_agents is not None:
                pushed = request
                try:
                    agents = self._find_agents()
                except Exception:  # noqa: BLE001 - the replies still carry the request
                    agents = []
                for agent in agents:
                    agent.deliver_stop.remote(request)  # fire and forget: replies repeat it
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self.verdict = run_monitor(self.options, self._stop_event)
        except Exception as exc:  # noqa: BLE001 - reported through finish(), never lost
            self.error = f"{type(exc).__name__}: {exc}"

    def ingest(self, batch: AgentBatch) -> Reply:
        """Take one agent's batch; answer with the spool's lengths and the stop request."""
        acked = self.spool.append(batch.node, batch.chunks)
        self.health.saw(batch)
        if batch.metadata is not None and not self._metadata_written:
            run_id = batch.metadata.get("run_id")
            if isinstance(run_id, str) and "world_size" in batch.metadata:  # rank 0 wrote it
                write_json_atomic(self.spool.root / METADATA_FILENAME, batch.metadata)
                self._metadata_written = True
        return {"acked": acked, "stop": self._stop_request()}

    def _stop_request(self) -> dict[str, Any] | None:
        """The session's stop request (its control file in the spool), read when it changed."""
        with self._control_lock:
            return self._read_control()

    def _read_control(self) -> dict[str, Any] | None:
        try:
            st = os.stat(self.control_path)
        except OSError:
            return self._stop
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._control_seen:
            self._control_seen = signature
            request = read_stop_request(self.control_path)
            if request is not None:
                self._stop = request.to_json()
        return self._stop

    def status(self, idle_after: int = 0) -> dict[str, Any]:
        """Nodes lost, idle (since batch ``idle_after``) and stopped; spool counters; whether
        the session still runs."""
        return {"lost": self.health.lost(), "idle": sorted(self.health.idle(idle_after)),
                "batches": self.health.batches,
                "stops_written": dict(self.health.stops_written),
                "stop": self._stop, "running": self._thread.is_alive(), "error": self.error,
                "duplicates": self.spool.duplicates,
                "duplicate_bytes": self.spool.duplicate_bytes,
                "bytes": self.spool.bytes_appended, "pid": os.getpid(),
                "problems": self.health.problems()}

    def finish(self, timeout: float = 60.0) -> Verdict:
        """End the session once it has read what was acknowledged; return its verdict."""
        self._stop_event.set()
        self._thread.join(timeout)
        if self.verdict is None:
            raise TrainguardError(
                f"the monitor session did not finish: {self.error or 'timed out'}")
        return self.verdict


class _SpoolProblems:
    """The spool's own problems (holes) as a source's, so they reach the verdict."""

    name = "spool"

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def poll(self) -> list[Line]:
        return []

    def problems(self) -> list[str]:
        return self._spool.problems()

    @property
    def exhausted(self) -> bool:
        return False

    def stats(self) -> dict[str, TailStats]:
        return {}

    def close(self) -> None:
        """Nothing to release."""


def spool_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where the head keeps the spool: inside its run directory's state folder."""
    return Path(run_dir) / ".trainguard" / "nodes"
