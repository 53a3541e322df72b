"""The contract of what watches a whole session rather than single alerts: the live view, the
``/metrics`` endpoint, the notifier's delivery queue.

An observer is told three things, all on the monitor's own thread: ``start`` once the monitor
is built, ``tick`` on every turn of the loop (at least once a second while following), and
``close`` when the session ends, whatever ended it. It reads the monitor; it never changes what
the monitor decides. :class:`RunView` names the parts of the monitor it may read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from trainguard.events import Record
from trainguard.monitor.engine.alerts import Alert

__all__ = ["RunView", "SessionObserver"]


class _CountersView(Protocol):
    events: int
    records: int
    skips: Counter[str]


class RunView(Protocol):
    """What an observer reads of :class:`~trainguard.monitor.daemon.Monitor`."""

    @property
    def last_records(self) -> dict[int, Record]:
        """The last step record of each rank."""

    @property
    def alerts(self) -> list[Alert]:
        """Every alert routed so far, in order."""

    @property
    def counters(self) -> _CountersView:
        """Events, step records and skips by reason."""

    @property
    def engine(self) -> Any:
        """The rule engine (``rules``, ``trainer``)."""

    @property
    def ledger(self) -> Any:
        """The checkpoint's alert ledger, or None without a checkpoint."""

    @property
    def source(self) -> Any:
        """The source (``stats()``, ``problems()``)."""


class SessionObserver(Protocol):
    """Watches a session: started, ticked every loop turn, closed at the end."""

    def start(self, monitor: RunView) -> None:
        """The monitor is built; nothing has been read yet."""

    def tick(self, monitor: RunView) -> None:
        """One turn of the loop has passed (cheap: called many times a second when busy)."""

    def close(self) -> None:
        """The session is over: release threads, ports and the terminal."""
