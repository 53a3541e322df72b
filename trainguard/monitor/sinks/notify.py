"""``--notify URL``: alerts sent to people through apprise (Slack, Discord, Telegram, ntfy,
email, Matrix, JSON webhooks...), without ever holding up the monitor.

* **Never in the way.** :meth:`Notifier.emit` formats the message and puts it on a queue; one
  background thread per URL delivers, retrying a slow or dead endpoint with exponential backoff.
  The loop and a stop (sent before any sink is told) never wait for it. What fails is reported.
* **Once per alert, across restarts.** A restarted monitor raises no alert twice (the checkpoint
  ledger admits each once), and a notification not yet delivered when a session ends is kept in
  the ledger (``notify_pending``) and sent by the next session. A notice is removed from there
  once every URL took it; a crash in the instant between delivery and the next save can repeat
  it (at least once, never lost).
* **Storms.** At most ``burst`` messages per ``window`` seconds per URL; the alerts past that
  are held and sent as one summary when the window allows (how many, by rule, the worst).
* A severity floor (default ``high``); resolutions only when asked.

apprise is the optional extra ``trainguard[notify]``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trainguard.exceptions import ConfigError
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.observer import RunView
from trainguard.rules.models import SEVERITY_ORDER

__all__ = ["Notice", "Notifier", "NotifyStats", "format_notice", "redact"]

_MISSING_EXTRA = ("--notify needs apprise, the optional extra: pip install 'trainguard[notify]'")


def redact(url: str) -> str:
    """``scheme://host`` of a notify URL: tokens and passwords never reach a log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<notify url>"
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True, slots=True)
class Notice:
    """One message for people: the alert's key (for the ledger), title, body and severity."""

    key: str
    title: str
    body: str
    severity: str
    state: str
    rule: str
    alert: dict[str, Any] = field(default_factory=dict)


def alert_key(alert: Alert) -> str:
    """The key the ledger keeps a pending notice under."""
    return f"{alert.rule}|{alert.rank}|{alert.step}|{alert.state}"


def format_notice(alert: Alert, run: str) -> Notice:
    """The message: what, do, why, run, rank and step, the value and what was done."""
    rank = alert.rank if alert.rank is not None else 0
    if alert.state == "resolved":
        title = f"trainguard resolved: {alert.rule} ({run}, rank {rank}, step {alert.step})"
    elif alert.state == "stop_outcome":
        title = f"trainguard stop: {alert.rule} ({run}, step {alert.step})"
    else:
        title = (f"trainguard {alert.severity.upper()}: {alert.rule} ({run}, rank {rank}, "
                 f"step {alert.step})")
    lines = [f"what: {alert.message}"]
    if alert.recommendation:
        lines.append(f"do: {alert.recommendation}")
    if alert.reference:
        lines.append(f"why: {alert.reference}")
    lines.append(f"run: {run}  rank: {rank}  step: {alert.step}")
    if alert.metric:
        lines.append(f"metric: {alert.metric} = {alert.value}")
    if alert.delivery:
        lines.append(f"action: {alert.delivery}")
    return Notice(alert_key(alert), title, "\n".join(lines), alert.severity, alert.state,
                  alert.rule, alert.to_json())


def _alert_from_json(obj: dict[str, Any]) -> Alert:
    value = obj.get("value")
    if isinstance(value, str):
        value = float(value.replace("Infinity", "inf"))
    fields = {k: obj[k] for k in Alert.__dataclass_fields__ if k in obj}
    fields["value"] = value
    return Alert(**fields)


@dataclass(slots=True)
class NotifyStats:
    """What the notifier did, for the summary and ``/metrics``."""

    queued: int = 0
    delivered: int = 0
    retries: int = 0
    failed: int = 0
    held: int = 0
    summaries: int = 0


class _Target:
    """One URL: its queue, its thread, its rate limit."""

    def __init__(self, url: str, owner: Notifier) -> None:
        self.url, self.name, self.owner = url, redact(url), owner
        self.queue: queue.Queue[Notice] = queue.Queue()
        self.sent_at: deque[float] = deque()
        self.held: list[Notice] = []
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=f"trainguard-notify {self.name}",
                                       daemon=True)

    def _allowed(self, now: float) -> bool:
        window, burst = self.owner.window, self.owner.burst
        while self.sent_at and now - self.sent_at[0] >= window:
            self.sent_at.popleft()
        return len(self.sent_at) < burst

    def _run(self) -> None:
        owner = self.owner
        while not owner.abandon.is_set():
            try:
                notice: Notice | None = self.queue.get(timeout=0.1)
            except queue.Empty:
                notice = None
            self.busy = True
            try:
                if notice is not None:
                    if self._allowed(time.monotonic()):
                        self._deliver(notice)
                    else:
                        self.held.append(notice)
                        owner.stats.held += 1
                if self.held and self._allowed(time.monotonic()):
                    held, self.held = self.held, []
                    self._deliver(_summary(held), notices=held)
                    owner.stats.summaries += 1
            finally:
                self.busy = False
            if (notice is None and owner.closing.is_set() and not self.held
                    and self.queue.empty()):
                return

    def _deliver(self, notice: Notice, notices: list[Notice] | None = None) -> None:
        owner = self.owner
        delay = owner.backoff
        for attempt in range(1, owner.attempts + 1):
            if owner.abandon.is_set():
                break
            ok = False
            try:
                ok = bool(owner.send(self.url, notice))
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not kill delivery
                owner.report(f"notify {self.name}: {type(exc).__name__}: {exc}")
            if ok:
                self.sent_at.append(time.monotonic())
                owner.delivered(self, notices or [notice])
                return
            if attempt == owner.attempts:
                break
            owner.stats.retries += 1
            if attempt == 1:
                owner.report(f"notify {self.name}: delivery failed; retrying with backoff "
                             f"(up to {owner.attempts} attempts)")
            if owner.abandon.wait(delay):
                break
            delay = min(delay * 2, owner.max_backoff)
        owner.stats.failed += len(notices or [notice])
        owner.report(f"notify {self.name}: gave up on '{notice.title}' after "
                     f"{attempt} attempt(s); it stays pending for the next session"
                     if owner.ledger is not None else
                     f"notify {self.name}: gave up on '{notice.title}' after {attempt} "
                     "attempt(s)")


def _summary(held: list[Notice]) -> Notice:
    """One message for the alerts a storm held back."""
    by_rule = Counter(n.rule for n in held)
    worst = max((n.severity for n in held), key=lambda s: SEVERITY_ORDER.get(s, -1))
    lines = [f"{count} x {rule}" for rule, count in by_rule.most_common(20)]
    if len(by_rule) > 20:
        lines.append(f"... and {len(by_rule) - 20} more rules")
    lines.append("The alerts file and `trainguard report` have each one.")
    return Notice(key="summary", title=f"trainguard: {len(held)} more alerts "
                  f"(rate-limited; worst {worst.upper()})", body="\n".join(lines),
                  severity=worst, state="firing", rule="summary")


def _apprise_send() -> Callable[[str, Notice], bool]:
    """The delivery function, through apprise (imported here: an optional extra)."""
    try:
        import apprise
    except ImportError as exc:
        raise ConfigError(_MISSING_EXTRA) from exc
    clients: dict[str, Any] = {}
    types = {"critical": apprise.NotifyType.FAILURE, "high": apprise.NotifyType.FAILURE,
             "medium": apprise.NotifyType.WARNING}

    def send(url: str, notice: Notice) -> bool:
        client = clients.get(url)
        if client is None:
            client = clients[url] = apprise.Apprise()
            client.add(url)
        kind = (apprise.NotifyType.SUCCESS if notice.state == "resolved"
                else types.get(notice.severity, apprise.NotifyType.INFO))
        return bool(client.notify(body=notice.body, title=notice.title, notify_type=kind))

    def check(url: str) -> None:
        if not apprise.Apprise().add(url):
            raise ConfigError(f"--notify {redact(url)}: apprise does not understand this URL; "
                              "see https://github.com/caronc/apprise/wiki for the syntax")

    send.check = check  # type: ignore[attr-defined]
    return send


class Notifier:
    """An alert sink and session observer that sends alerts to ``urls`` in the background."""

    def __init__(self, urls: list[str], *, run: str = "", min_severity: str = "high",
                 resolved: bool = False, burst: int = 5, window: float = 60.0,
                 attempts: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 flush_timeout: float = 5.0, send: Callable[[str, Notice], bool] | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        if min_severity not in SEVERITY_ORDER:
            raise ConfigError(f"--notify-severity {min_severity!r}: use one of "
                              f"{', '.join(SEVERITY_ORDER)}")
        if send is None:
            send = _apprise_send()
            for url in urls:
                send.check(url)  # type: ignore[attr-defined]
        self.send = send
        self.run = run
        self.floor = SEVERITY_ORDER[min_severity]
        self.resolved = resolved
        self.burst, self.window = burst, window
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.flush_timeout = flush_timeout
        self._report = report
        self.stats = NotifyStats()
        self.closing = threading.Event()
        self.abandon = threading.Event()
        self.ledger: Any = None
        self._checkpointer: Any = None
        # Deliveries done by the threads, applied to the ledger on the monitor's thread (the
        # ledger is saved from there; the threads never touch it).
        self._done: deque[tuple[str, str]] = deque()
        self._remaining: dict[str, int] = {}
        self._lock = threading.Lock()
        self.targets = [_Target(url, self) for url in urls]
        for target in self.targets:
            target.thread.start()

    # -- the sink -------------------------------------------------------------------------------

    def wants(self, alert: Alert) -> bool:
        """Whether ``alert`` is sent: at or above the floor; resolutions only if asked."""
        if SEVERITY_ORDER.get(alert.severity, -1) < self.floor:
            return False
        return alert.state != "resolved" or self.resolved

    def emit(self, alert: Alert) -> None:
        """Queue one alert (returns at once)."""
        if not self.wants(alert):
            return
        notice = format_notice(alert, self.run)
        if self.ledger is not None:
            self.ledger.notify_pending[notice.key] = notice.alert
        self._queue(notice)

    def _queue(self, notice: Notice) -> None:
        with self._lock:
            self._remaining[notice.key] = len(self.targets)
        self.stats.queued += len(self.targets)
        for target in self.targets:
            target.queue.put(notice)

    def delivered(self, target: _Target, notices: list[Notice]) -> None:
        """Called by a target's thread once a message went through."""
        self.stats.delivered += len(notices)
        with self._lock:
            for notice in notices:
                left = self._remaining.get(notice.key, 1) - 1
                if left <= 0:
                    self._remaining.pop(notice.key, None)
                    self._done.append((notice.key, target.name))
                else:
                    self._remaining[notice.key] = left

    def report(self, message: str) -> None:
        """Say what went wrong with a delivery (from any thread)."""
        if self._report is not None:
            self._report(message)

    # -- the observer ---------------------------------------------------------------------------

    def start(self, monitor: RunView) -> None:
        """Bind the ledger; send what a previous session left undelivered."""
        self.ledger = monitor.ledger
        self._checkpointer = getattr(monitor, "checkpointer", None)
        if self.ledger is None:
            return
        if not hasattr(self.ledger, "notify_pending"):
            self.ledger.notify_pending = {}
        for obj in list(self.ledger.notify_pending.values()):
            try:
                alert = _alert_from_json(obj)
            except (TypeError, ValueError):
                continue
            self._queue(format_notice(alert, self.run))

    def tick(self, monitor: RunView) -> None:
        """Drop delivered notices from the ledger (saved with the next checkpoint)."""
        self._apply_done()

    def _apply_done(self) -> bool:
        changed = False
        while self._done:
            key, _ = self._done.popleft()
            if self.ledger is not None and self.ledger.notify_pending.pop(key, None) is not None:
                changed = True
        return changed

    def idle(self) -> bool:
        """Nothing queued, held or being sent."""
        return all(t.queue.empty() and not t.held and not t.busy for t in self.targets)

    def close(self) -> None:
        """Wait up to ``flush_timeout`` s for what is queued, then give up on the rest (kept
        pending in the ledger), and save the ledger once more."""
        deadline = time.monotonic() + self.flush_timeout
        self.closing.set()
        for target in self.targets:
            target.thread.join(max(0.0, deadline - time.monotonic()))
        self.abandon.set()
        for target in self.targets:
            target.thread.join(1.0)
        if self._apply_done() and self._checkpointer is not None:
            self._checkpointer.save_ledger()
        undelivered = self.stats.queued - self.stats.delivered - self.stats.failed
        if undelivered > 0:
            self.report(f"notify: {undelivered} notification(s) not delivered before exit"
                        + ("; kept for the next session" if self.ledger is not None else ""))
