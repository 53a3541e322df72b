"""``--live``: a live view of the run in the terminal, with rich.

Per rank, the last step and how long ago it arrived; the key metrics of the detected trainer
(or the watched ones) with their latest value and a sparkline of the recent steps; the alerts
firing now; the stop's state. Redrawn on the monitor's loop turns, at most
:data:`REFRESH_PER_SECOND` times a second; alerts printed meanwhile scroll above it. Only on a
terminal: with stdout a pipe or a file the CLI does not start it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from trainguard.monitor.sinks.md_report import sparkline
from trainguard.monitor.sinks.observer import RunView

__all__ = ["KEY_METRICS", "LiveView"]

REFRESH_PER_SECOND = 4
HISTORY = 40
MAX_RANK_ROWS = 16
MAX_METRICS = 6

#: The metrics worth a glance per trainer kind (TRL's names; see rules/detect.py for kinds).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("loss", "mean_token_accuracy", "grad_norm", "learning_rate", "entropy"),
    "dpo": ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "grad_norm"),
    "kto": ("loss", "kl", "rewards/chosen", "rewards/rejected", "grad_norm"),
    "orpo": ("loss", "log_odds_ratio", "rewards/margins", "grad_norm"),
    "cpo": ("loss", "nll_loss", "rewards/margins", "grad_norm"),
    "grpo": ("reward", "reward_std", "kl", "entropy", "completions/mean_length",
             "frac_reward_zero_std"),
    "rloo": ("reward", "reward_std", "kl", "entropy", "completions/mean_length"),
    "online_dpo": ("objective/kl", "objective/scores", "objective/entropy", "loss"),
    "ppo": ("actor/pg_loss", "actor/entropy", "actor/ppo_kl", "critic/score/mean",
            "critic/vf_loss", "response_length/mean"),
    "reward": ("loss", "accuracy", "margin", "grad_norm"),
}
_DEFAULT_KEYS = ("loss", "grad_norm", "learning_rate")
_SEVERITY_STYLE = {"info": "blue", "low": "cyan", "medium": "yellow", "high": "bold red",
                   "critical": "bold white on red"}


class LiveView:
    """A session observer that draws the live view on stdout."""

    def __init__(self, console: Console | None = None, source: str = "") -> None:
        self.console = console or Console()
        self.source = source
        self._live: Live | None = None
        self._next = 0.0
        self._seen: dict[int, int] = {}
        self._arrived: dict[int, float] = {}
        self._history: dict[str, deque[float]] = {}
        self._latest: dict[str, float] = {}
        self._firing: dict[tuple[str, int | None], Any] = {}
        self._alerts_read = 0
        self._stop: str | None = None
        self._outcome: str | None = None
        self._order: list[str] = []

    def start(self, monitor: RunView) -> None:
        """Take the terminal; alerts printed to stderr scroll above the view."""
        self._live = Live(self._render(monitor), console=self.console, auto_refresh=False,
                          redirect_stderr=True, redirect_stdout=False, transient=False)
        self._live.start()

    def tick(self, monitor: RunView) -> None:
        """Redraw, at most :data:`REFRESH_PER_SECOND` times a second."""
        now = time.monotonic()
        if self._live is None or now < self._next:
            return
        self._next = now + 1.0 / REFRESH_PER_SECOND
        self._live.update(self._render(monitor), refresh=True)

    def close(self) -> None:
        """Give the terminal back (the last frame stays on screen)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- drawing --------------------------------------------------------------------------------

    def _keys(self, monitor: RunView) -> list[str]:
        trainer = monitor.engine.trainer
        wanted = list(KEY_METRICS.get(trainer or "", ()))
        wanted += [c.rule.metric for c in monitor.engine.rules]
        wanted += list(_DEFAULT_KEYS)
        return [k for k in dict.fromkeys(wanted) if k in self._latest][:MAX_METRICS]

    def _follow(self, monitor: RunView) -> None:
        now = time.monotonic()
        first = min(monitor.last_records, default=None)
        for rank, record in monitor.last_records.items():
            if self._seen.get(rank) == id(record):
                continue
            self._seen[rank] = id(record)
            self._arrived[rank] = now
            if rank == first:  # the sparklines follow the lowest rank
                for name, value in record.metrics.items():
                    self._latest[name] = value
                    self._history.setdefault(name, deque(maxlen=HISTORY)).append(value)
        alerts = monitor.alerts
        for alert in alerts[self._alerts_read:]:
            key = (alert.rule, alert.rank)
            if alert.state == "firing":
                self._firing[key] = alert
                if alert.action == "stop":
                    self._stop = (f"{alert.rule} at step {alert.step}: "
                                  f"{alert.delivery or 'pending'}")
            elif alert.state == "resolved":
                self._firing.pop(key, None)
            elif alert.state == "stop_outcome":
                self._outcome = f"{alert.message} ({alert.delivery})"
        self._alerts_read = len(alerts)

    def _render(self, monitor: RunView) -> Group:
        self._follow(monitor)
        now = time.monotonic()
        c = monitor.counters
        trainer = monitor.engine.trainer or "not detected yet"
        skipped = sum(c.skips.values())
        head = Text.assemble(("trainguard live ", "bold"), (self.source, "cyan"),
                             f"  trainer: {trainer}  events: {c.events}  steps: {c.records}  "
                             f"skipped: {skipped}")
        ranks = Table(title="ranks", title_justify="left", expand=False)
        ranks.add_column("rank", justify="right")
        ranks.add_column("last step", justify="right")
        ranks.add_column("age", justify="right")
        items = sorted(monitor.last_records.items())
        for rank, record in items[:MAX_RANK_ROWS]:
            age = now - self._arrived.get(rank, now)
            ranks.add_row(str(rank), str(record.step), f"{age:.1f}s",
                          style="yellow" if age > 60 else "")
        if len(items) > MAX_RANK_ROWS:
            ranks.add_row("...", f"{len(items) - MAX_RANK_ROWS} more", "")
        metrics = Table(title="key metrics (lowest rank)", title_justify="left")
        metrics.add_column("metric")
        metrics.add_column("latest", justify="right")
        metrics.add_column("recent (a point per refresh)")
        for key in self._keys(monitor):
            metrics.add_row(key, f"{self._latest[key]:.4g}",
                            sparkline(list(self._history[key]), width=HISTORY))
        alerts = Table(title="firing alerts", title_justify="left")
        alerts.add_column("severity")
        alerts.add_column("rule")
        alerts.add_column("rank", justify="right")
        alerts.add_column("step", justify="right")
        alerts.add_column("what")
        for alert in list(self._firing.values())[-10:]:
            alerts.add_row(Text(alert.severity, style=_SEVERITY_STYLE.get(alert.severity, "")),
                           alert.rule, "" if alert.rank is None else str(alert.rank),
                           str(alert.step), alert.message[:80])
        if not self._firing:
            alerts.add_row("-", "none", "", "", "")
        stop = Text("stop: " + (self._stop or "none")
                    + (f"\n  then: {self._outcome}" if self._outcome else ""),
                    style="bold red" if self._stop else "green")
        return Group(head, ranks, metrics, alerts, stop)
