"""What ``trainguard monitor`` can be told: :class:`MonitorOptions`, filled by the CLI (or by
``check``, ``run`` and the Ray head) and read by :func:`~trainguard.monitor.session.run_monitor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainguard.events import MAX_RANKS
from trainguard.monitor.engine.alerts import AlertSink
from trainguard.monitor.sinks.observer import SessionObserver

__all__ = ["MonitorOptions"]


@dataclass(slots=True)
class MonitorOptions:
    """Everything ``trainguard monitor`` can be told."""

    source: str
    rules: list[str] = field(default_factory=list)
    alerts: str | None = None
    control: str | None = None
    stop: bool = False
    once: bool = False
    field_maps: list[str] = field(default_factory=list)
    poll_interval: float = 0.05
    quiet: bool = False
    # -- ingest (sources and delivery guarantees) --
    #: Start a file that already exists at its end instead of its start.
    from_end: bool = False
    #: Force polling (network filesystems); otherwise inotify wakes the loop.
    poll: bool = False
    #: Copy stdin lines to stdout; None = when stdout is a terminal.
    tee: bool | None = None
    #: Checkpoint file; default RUN_DIR/.trainguard/state.json for a run directory.
    state: str | None = None
    #: Append every evaluated event, normalized, here (exactly once across restarts).
    record: str | None = None
    #: Write a JSON report of reads, skips, problems and alerts here at the end.
    report: str | None = None
    #: Seconds between full rescans when inotify is used (catches dropped kernel events).
    rescan_interval: float = 1.0
    #: ``ID.FIELD=VALUE`` settings applied to loaded rules (``--set-rule``).
    set_rules: list[str] = field(default_factory=list)
    #: Inline rules (``--alert "[trainer:] COND [for N] -> SEVERITY[/stop]: MESSAGE"``).
    inline_alerts: list[str] = field(default_factory=list)
    #: Sample the local GPUs through NVML every ``gpu_interval`` s (monitor/ingest/gpu.py); adds the
    #: ``gpu`` pack when no ``rules`` are given.
    gpu: bool = False
    gpu_interval: float = 5.0
    #: Signal this process (pinned by identity) on a stop rule; see monitor/act/process.py.
    pid: int | None = None
    signal: str = "SIGTERM"
    kill_after: float | None = None
    # -- plain trainer stdout (monitor/ingest/stdout.py) --
    #: A stdout preset name (trl, verl, openrlhf, kv) or a re2 pattern with a ``step`` group;
    #: None: stdin auto-detects, files and run directories read canonical JSONL.
    regex: str | None = None
    #: The trainer's ``logging_steps``: the n-th printed TRL log is step n x this.
    logging_steps: int = 1
    #: When known, the TRL step is ``round(epoch x steps_per_epoch)`` instead of the count.
    steps_per_epoch: int | None = None
    # -- many nodes (monitor/ray/) --
    #: Sources read along with SOURCE whose problems also count (the Ray head's node health).
    extra_sources: list[Any] = field(default_factory=list)
    #: With ``gpu``: sample this host's GPUs (False on the Ray head: each node's agent does).
    local_gpus: bool = True
    #: The user's own ``NAME=PATTERN`` signals (``--signal``), read with the built-in ones.
    signals: list[str] = field(default_factory=list)
    # -- reaching people (monitor/sinks/notify.py, prometheus.py, live.py; monitor/check.py) --
    #: More alert sinks (notifications), after the alerts file and the console.
    sinks: list[AlertSink] = field(default_factory=list)
    #: Told of the session: ``start(monitor)`` once built, ``tick(monitor)`` every loop turn,
    #: ``close()`` at the end (the live view, ``/metrics``, the notifier's queue).
    observers: list[SessionObserver] = field(default_factory=list)
    #: ``trainguard check``: neither resume from nor write the checkpoint, and no default
    #: alerts file: a batch verdict leaves a followed run as it found it.
    stateless: bool = False
    #: Ranks are ``0 <= rank < max_ranks``; any other is a counted ``bad_rank`` skip.
    max_ranks: int = MAX_RANKS
