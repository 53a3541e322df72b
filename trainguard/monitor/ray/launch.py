"""Placing the monitor and the agents on a Ray cluster, and the session behind ``--ray``.

:func:`start_ray_monitor` (from Python, inside a verl or OpenRLHF driver, or from the CLI)
connects to Ray if the caller has not, starts the monitor actor on this (the head's) node and
one agent per alive node, each pinned there with ``NodeAffinitySchedulingStrategy(soft=False)``
and restarted by Ray where it died (``max_restarts``), and returns a :class:`RayMonitor`
handle. Actors take no CPU of the job (``num_cpus=0``).

``RUN_DIR`` is each node's local run directory; ``{node_id}`` and ``{host}`` in it are replaced
per node (one machine with several raylets needs a folder per node; a real cluster usually has
the same local path everywhere).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from trainguard.exceptions import ConfigError, TrainguardError
from trainguard.monitor.daemon import Verdict
from trainguard.monitor.ray.agent import AgentBatch, AgentConfig, NodeAgent, Reply
from trainguard.monitor.ray.service import MonitorService, spool_dir
from trainguard.monitor.session import ALERTS_FILENAME, MonitorOptions

__all__ = ["AgentActor", "RayMonitor", "node_labels", "run_ray_monitor", "start_ray_monitor"]

#: Ray restarts a dead agent or monitor actor this many times (on the same node).
MAX_RESTARTS = 100
#: Seconds an agent waits for the monitor's answer before it ships the batch again.
SHIP_TIMEOUT = 30.0


class AgentActor:
    """The Ray actor around :class:`NodeAgent`: its loop runs in a thread from the start, so
    an actor that Ray restarts after ``kill -9`` resumes from its checkpoint by itself."""

    def __init__(self, config: AgentConfig, service_name: str) -> None:
        # The monitor actor by name, not by a handle given as an argument: arguments of an
        # actor that Ray restarts must outlive its caller, a name always resolves.
        service = ray.get_actor(service_name)

        def ship(batch: AgentBatch) -> Reply:
            reply: Any = ray.get(service.ingest.remote(batch), timeout=SHIP_TIMEOUT)
            return dict(reply)

        self.agent = NodeAgent(config, ship)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainguard-agent",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        agent, stop = self.agent, self._stop
        interval = agent.config.poll_interval
        while not stop.is_set():
            before = agent.failures
            try:
                if agent.turn():
                    continue  # shipped: read on at once while there is more
            except Exception as exc:  # noqa: BLE001 - a full disk on the node: say, retry
                agent.failures += 1
                agent.last_failure = f"{type(exc).__name__}: {exc}"[:300]
            agent.wait(0.5 if agent.failures != before else interval)

    def status(self) -> dict[str, Any]:
        """The agent's counters (and pid, which tests kill)."""
        return self.agent.status()

    def deliver_stop(self, request: dict[str, Any]) -> bool:
        """Write a stop request pushed by the monitor into this node's control file."""
        return self.agent.deliver_stop(request)

    def close(self) -> None:
        """Stop the loop and release the node's files."""
        self._stop.set()
        self._thread.join(10)
        self.agent.close()


def node_labels(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Node id -> a name for it: the host name, with the id's start where hosts repeat."""
    hosts = Counter(str(n.get("NodeManagerHostname", "node")) for n in nodes)
    out = {}
    for n in nodes:
        host = str(n.get("NodeManagerHostname", "node"))
        out[n["NodeID"]] = host if hosts[host] == 1 else f"{host}-{n['NodeID'][:8]}"
    return out


def _resolve(run_dir: str, node_id: str, host: str) -> str:
    return run_dir.replace("{node_id}", node_id).replace("{host}", host)


class RayMonitor:
    """A monitor and its agents on a Ray cluster; :meth:`finish` ends them with the verdict."""

    def __init__(self, service: Any, agents: dict[str, Any], head_run_dir: Path) -> None:
        self.service = service
        #: node name -> agent actor handle
        self.agents = agents
        self.head_run_dir = head_run_dir

    def status(self, idle_after: int = 0) -> dict[str, Any]:
        """The monitor actor's view: lost and idle nodes, stops written, spool counters.

        Raises :class:`~trainguard.exceptions.TrainguardError` when its session could not run
        (rules that do not load, an unreadable spool): nothing would ever be monitored."""
        status: dict[str, Any] = ray.get(self.service.status.remote(idle_after))
        if status["error"]:
            raise TrainguardError(f"the monitor actor could not run: {status['error']}")
        return status

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until every node's agent (lost ones aside) has said, since this call, that it
        had read everything (an idle agent says so once a heartbeat)."""
        deadline = time.monotonic() + timeout
        ticket = self.status()["batches"]
        while time.monotonic() < deadline:
            status = self.status(ticket)
            if set(self.agents) <= set(status["idle"]) | set(status["lost"]):
                return True
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = 60.0) -> Verdict:
        """Stop the agents, let the monitor read what they shipped, return its verdict."""
        closing = [agent.close.remote() for agent in self.agents.values()]
        ray.wait(closing, num_returns=len(closing), timeout=15)
        try:
            verdict: Verdict = ray.get(self.service.finish.remote(timeout),
                                       timeout=timeout + 10)
        except ray.exceptions.RayError as exc:
            raise TrainguardError(f"the monitor actor gave no verdict: {exc}") from exc
        finally:
            self.shutdown()
        return verdict

    def shutdown(self) -> None:
        """Kill the actors (no restart)."""
        for handle in [*self.agents.values(), self.service]:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - an actor already gone
                pass


def start_ray_monitor(run_dir: str, options: MonitorOptions | None = None, *,
                      lost_after: float = 10.0, heartbeat: float = 1.0,
                      address: str | None = None) -> RayMonitor:
    """Start the monitor actor here and one agent per alive node (see the module docstring).

    ``options`` are those of ``trainguard monitor`` (rules, ``stop``, ``record``...); their
    ``source`` is ignored. Ray is joined at ``address`` (default: ``RAY_ADDRESS``, else a local
    cluster) unless the caller already did.
    """
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto",
                 log_to_driver=True, configure_logging=False)
    options = options or MonitorOptions(source="")
    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    if not nodes:
        raise ConfigError("the Ray cluster has no alive node")
    labels = node_labels(nodes)
    head_id = ray.get_runtime_context().get_node_id()
    head = next((n for n in nodes if n["NodeID"] == head_id), nodes[0])
    head_run_dir = Path(_resolve(run_dir, head["NodeID"], str(head.get("NodeManagerHostname"))))
    head_run_dir.mkdir(parents=True, exist_ok=True)
    options = _copy(options)
    if options.alerts is None:
        options.alerts = str(head_run_dir / ALERTS_FILENAME)
    ordered = sorted(nodes, key=lambda n: str(n["NodeID"]))
    name = f"trainguard-monitor-{uuid.uuid4().hex[:12]}"
    service: Any = ray.remote(MonitorService).options(
        name=name, num_cpus=0, max_restarts=MAX_RESTARTS, max_concurrency=16,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head["NodeID"], soft=False),
        runtime_env={"env_vars": {"COLUMNS": "160"}},  # rich wraps at 80 off a terminal
    ).remote(str(spool_dir(head_run_dir)), options, [labels[n["NodeID"]] for n in ordered],
             lost_after, functools.partial(_named_agents, name, len(ordered)))
    agents = {}
    for index, node in enumerate(ordered):
        node_id = node["NodeID"]
        config = AgentConfig(
            node=labels[node_id],
            run_dir=_resolve(run_dir, node_id, str(node.get("NodeManagerHostname"))),
            node_index=index, gpu=options.gpu, gpu_interval=options.gpu_interval,
            poll=options.poll, heartbeat=heartbeat, rescan_interval=options.rescan_interval)
        agents[labels[node_id]] = ray.remote(AgentActor).options(
            name=f"{name}.agent{index}", num_cpus=0, max_restarts=MAX_RESTARTS, max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(config, name)
    return RayMonitor(service, agents, head_run_dir)


def _named_agents(prefix: str, count: int) -> list[Any]:
    """The agent actors of a monitor, by name (those that exist now)."""
    found = []
    for index in range(count):
        try:
            found.append(ray.get_actor(f"{prefix}.agent{index}"))
        except ValueError:  # its node is gone
            continue
    return found


def _copy(options: MonitorOptions) -> MonitorOptions:
    import copy

    return copy.copy(options)


def run_ray_monitor(run_dir: str, options: MonitorOptions,
                    stop_event: threading.Event | None = None) -> Verdict:
    """``trainguard monitor --ray RUN_DIR``: follow every node until SIGINT or SIGTERM (with
    ``options.once``: until every node has shipped what it has), then return the verdict."""
    monitor = start_ray_monitor(run_dir, options)
    stop_event = stop_event or threading.Event()
    restore = _on_signals(stop_event)
    try:
        if options.once:
            monitor.wait_idle()
        else:
            while not stop_event.wait(0.5):
                monitor.status()  # raises if the session could not run
        verdict = monitor.finish()
    finally:
        restore()
        monitor.shutdown()
    if not options.quiet:
        lost = [p for p in verdict.problems if ": lost:" in p or "never reported" in p]
        print(f"trainguard: {verdict.status} across {len(monitor.agents)} nodes: "
              f"{verdict.events} events in {verdict.records} steps, "
              f"{sum(a.state == 'firing' for a in verdict.alerts)} alerts"
              + (f", {len(lost)} nodes lost" if lost else ""), file=sys.stderr)
        for problem in verdict.problems:
            print(f"  DEGRADED: {problem}", file=sys.stderr)
    return verdict


def _on_signals(stop_event: threading.Event) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop_event.set())

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return restore
