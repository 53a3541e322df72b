"""What a run report shows, as plain data: built by :mod:`trainguard.monitor.runs` (which reads
the runs with polars) and drawn by :mod:`.html_report` and :mod:`.md_report`, which do nothing
but format it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainguard.monitor.engine.alerts import Alert

__all__ = ["MetricPlot", "RankSeries", "RunReport", "StopMark"]


@dataclass(slots=True)
class RankSeries:
    """One rank's values of one metric, thinned for drawing (each kept bucket keeps its lowest
    and highest value, so a spike survives), and where the value was not finite."""

    rank: int
    steps: list[int]
    values: list[float]
    nonfinite_steps: list[int] = field(default_factory=list)
    points: int = 0  # values before thinning
    first: float | None = None
    last: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass(slots=True)
class MetricPlot:
    """A watched metric: a series per rank, and the alerts raised on it."""

    metric: str
    series: list[RankSeries]
    alerts: list[Alert]


@dataclass(slots=True)
class StopMark:
    """Where the run was stopped (``requested``: the control file says so), or would have been
    (the first stop rule that fired, when nothing stopped it)."""

    step: int | None
    rule: str
    reason: str
    requested: bool


@dataclass(slots=True)
class RunReport:
    """Everything the report says of one run."""

    run: str
    status: str
    exit_code: int
    events: int
    records: int
    trainer: str | None
    metadata: dict[str, Any]
    plots: list[MetricPlot]
    alerts: list[Alert]
    stop: StopMark | None
    skips: dict[str, int]
    streams: dict[str, dict[str, Any]]
    problems: list[str]
    ranks: list[int]
    steps: tuple[int, int] | None
