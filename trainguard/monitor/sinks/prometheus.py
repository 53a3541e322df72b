"""``--metrics-port``: the monitor's view of a run as Prometheus metrics on ``/metrics``.

Served by prometheus-client (the optional extra ``trainguard[prometheus]``) from its own thread,
on 127.0.0.1 unless told another address. The monitor's thread takes a snapshot on its loop's
turns (at most every :data:`SNAPSHOT_INTERVAL` s) and swaps it in whole; a scrape reads only the
snapshot, so it never sees the monitor's dicts change under it and never slows the loop.

Metrics (``rank``, ``metric``, ``rule``, ``severity``, ``reason`` labels)::

    trainguard_last_step{rank}                 the last step seen on each rank
    trainguard_step_age_seconds{rank}          since that step arrived here
    trainguard_ingest_lag_seconds{rank}        arrival here minus the event's own time stamp
    trainguard_metric{metric,rank}             the latest value of each watched metric
    trainguard_alerts_firing{rule,severity}    alerts firing now (0 once resolved)
    trainguard_events_read_total               metric events read
    trainguard_steps_read_total                step records evaluated
    trainguard_lines_skipped_total{reason}     lines skipped, by reason
    trainguard_up                              1 while the session runs
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trainguard.exceptions import ConfigError
from trainguard.monitor.sinks.observer import RunView

__all__ = ["MetricsServer", "Snapshot", "take_snapshot"]

SNAPSHOT_INTERVAL = 0.5
_MISSING_EXTRA = ("--metrics-port needs prometheus-client, the optional extra: "
                  "pip install 'trainguard[prometheus]'")


@dataclass(slots=True)
class Snapshot:
    """What a scrape reports, taken on the monitor's thread."""

    steps: dict[int, int] = field(default_factory=dict)
    #: rank -> when its last step arrived (wall clock): the age is taken at scrape time.
    arrived: dict[int, float] = field(default_factory=dict)
    lags: dict[int, float] = field(default_factory=dict)
    values: dict[tuple[str, int], float] = field(default_factory=dict)
    firing: dict[tuple[str, str], int] = field(default_factory=dict)
    events: int = 0
    records: int = 0
    skips: dict[str, int] = field(default_factory=dict)


class _Tracker:
    """Follows the monitor across turns: when each rank's last record arrived, latest values,
    which alerts are firing (alerts are read once each, from where the last turn stopped)."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}  # rank -> id() of the last record seen
        self.arrived: dict[int, float] = {}
        self.lags: dict[int, float] = {}
        self.values: dict[tuple[str, int], float] = {}
        self.firing: dict[tuple[str, int | None], str] = {}
        self.alerts_read = 0


def take_snapshot(monitor: RunView, tracker: _Tracker, now: float) -> Snapshot:
    """The snapshot of ``monitor`` now (wall clock ``now``)."""
    watched = {c.rule.metric for c in monitor.engine.rules}
    for rank, record in monitor.last_records.items():
        if tracker.seen.get(rank) != id(record):
            tracker.seen[rank] = id(record)
            tracker.arrived[rank] = now
            if record.time is not None:
                tracker.lags[rank] = max(0.0, now - record.time)
            for name, value in record.metrics.items():
                if name in watched:
                    tracker.values[(name, rank)] = value
    alerts = monitor.alerts
    for alert in alerts[tracker.alerts_read:]:
        key = (alert.rule, alert.rank)
        if alert.state == "firing":
            tracker.firing[key] = alert.severity
        elif alert.state == "resolved":
            tracker.firing.pop(key, None)
    tracker.alerts_read = len(alerts)
    firing: dict[tuple[str, str], int] = {}
    for (rule, _), severity in tracker.firing.items():
        firing[(rule, severity)] = firing.get((rule, severity), 0) + 1
    counters = monitor.counters
    skips = dict(counters.skips)
    try:
        streams = monitor.source.stats()
    except Exception:  # noqa: BLE001 - a source that cannot say must not break the scrape
        streams = {}
    for st in streams.values():
        for reason, count in st.skips.items():
            skips[reason] = skips.get(reason, 0) + count
    return Snapshot(steps={r: rec.step for r, rec in monitor.last_records.items()},
                    arrived=dict(tracker.arrived),
                    lags=dict(tracker.lags), values=dict(tracker.values), firing=firing,
                    events=counters.events, records=counters.records, skips=skips)


class MetricsServer:
    """A session observer that serves ``/metrics``."""

    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:
            raise ConfigError(_MISSING_EXTRA) from exc
        self.snapshot = Snapshot()
        self._tracker = _Tracker()
        self._next = 0.0
        self._monitor: RunView | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)  # collect() is the collector contract
        try:
            self._server, self._thread = start_http_server(port, addr=address,
                                                           registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {address}:{port}: "
                              f"{exc.strerror}; pick another port") from None
        self.port = self._server.server_address[1]

    def collect(self) -> Iterator[Any]:
        """prometheus-client's collector contract: the families of the current snapshot."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        up = GaugeMetricFamily("trainguard_up", "1 while the monitor session runs")
        up.add_metric([], 1.0)
        yield up
        step = GaugeMetricFamily("trainguard_last_step", "Last step seen on each rank",
                                 labels=["rank"])
        age = GaugeMetricFamily("trainguard_step_age_seconds",
                                "Seconds since the rank's last step arrived", labels=["rank"])
        lag = GaugeMetricFamily("trainguard_ingest_lag_seconds",
                                "Arrival at the monitor minus the event's time stamp",
                                labels=["rank"])
        for rank, last in snap.steps.items():
            step.add_metric([str(rank)], float(last))
        now = time.time()
        for rank, at in snap.arrived.items():
            age.add_metric([str(rank)], max(0.0, now - at))
        for rank, seconds in snap.lags.items():
            lag.add_metric([str(rank)], seconds)
        yield step
        yield age
        yield lag
        metric = GaugeMetricFamily("trainguard_metric", "Latest value of each watched metric",
                                   labels=["metric", "rank"])
        for (name, rank), latest in snap.values.items():
            metric.add_metric([name, str(rank)], latest)
        yield metric
        firing = GaugeMetricFamily("trainguard_alerts_firing", "Alerts firing now",
                                   labels=["rule", "severity"])
        for (rule, severity), n in snap.firing.items():
            firing.add_metric([rule, severity], float(n))
        yield firing
        yield CounterMetricFamily("trainguard_events_read", "Metric events read",
                                  value=snap.events)
        yield CounterMetricFamily("trainguard_steps_read", "Step records evaluated",
                                  value=snap.records)
        skipped = CounterMetricFamily("trainguard_lines_skipped", "Lines skipped, by reason",
                                      labels=["reason"])
        for reason, lines in snap.skips.items():
            skipped.add_metric([reason], float(lines))
        yield skipped

    def start(self, monitor: RunView) -> None:
        """Keep the monitor to snapshot."""
        self._monitor = monitor

    def tick(self, monitor: RunView) -> None:
        """Refresh the snapshot, at most every :data:`SNAPSHOT_INTERVAL` s."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + SNAPSHOT_INTERVAL
        self.snapshot = take_snapshot(monitor, self._tracker, time.time())

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._monitor is not None:
            self.snapshot = take_snapshot(self._monitor, self._tracker, time.time())
        self._server.shutdown()
        self._server.server_close()
