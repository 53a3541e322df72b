"""Many nodes on Ray: one monitor actor on the head, one agent actor per node (``trainguard[ray]``).

Owns the Ray transport and nothing else: the agent that follows a node's local run directory
and GPUs and ships batches of lines (``agent``), the head's spool that takes them exactly once
by stream and offset (``spool``), the monitor actor that runs an ordinary monitoring session
over the spool and hands stop requests back to the agents (``service``), and the placement of
the actors on the cluster with the session behind ``trainguard monitor --ray`` (``launch``).
Ray is the only transport: actor calls carry the batches, Ray restarts dead actors, node
affinity pins one agent per node. No protocol of our own goes over the network.

May import: ``ray`` (only in ``launch``, loaded when a Ray session starts: the rest of
trainguard never imports it), ``trainguard.control``, ``trainguard.events``,
``trainguard.exceptions``, ``monitor.ingest`` (sources, GPU sampling), the loop and the session
(``monitor.daemon``, ``monitor.session``) that it runs on the head. Never the CLI.

From Python (a verl or OpenRLHF driver, after ``ray.init``)::

    from trainguard.monitor.ray import start_ray_monitor
    from trainguard.monitor.session import MonitorOptions

    guard = start_ray_monitor("/local/runs/exp1", MonitorOptions(source="", stop=True))
    ...  # train; every rank's EventWriter writes into its node's /local/runs/exp1
    verdict = guard.finish()
"""

from __future__ import annotations

import importlib.util
import threading
from typing import TYPE_CHECKING, Any

from trainguard.exceptions import ConfigError

if TYPE_CHECKING:
    from trainguard.monitor.daemon import Verdict
    from trainguard.monitor.ray.launch import RayMonitor
    from trainguard.monitor.session import MonitorOptions

__all__ = ["MISSING_RAY", "run_ray_monitor", "start_ray_monitor"]

MISSING_RAY = ("--ray needs Ray, which is not installed: pip install 'trainguard[ray]' "
               "(on every node of the cluster)")


def _launch() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(MISSING_RAY)
    from trainguard.monitor.ray import launch

    return launch


def start_ray_monitor(run_dir: str, options: MonitorOptions | None = None,
                      **kwargs: Any) -> RayMonitor:
    """Start the monitor actor and one agent per node; see :mod:`.launch`."""
    monitor: RayMonitor = _launch().start_ray_monitor(run_dir, options, **kwargs)
    return monitor


def run_ray_monitor(run_dir: str, options: MonitorOptions,
                    stop_event: threading.Event | None = None) -> Verdict:
    """The session behind ``trainguard monitor --ray RUN_DIR``; see :mod:`.launch`."""
    if not run_dir or run_dir == "-":
        raise ConfigError("--ray needs RUN_DIR: the run directory on each node's local disk")
    if options.pid is not None:
        raise ConfigError("--pid signals a process of this host; with --ray a stop reaches every "
                          "node through its control file (use --stop)")
    verdict: Verdict = _launch().run_ray_monitor(run_dir, options, stop_event)
    return verdict
