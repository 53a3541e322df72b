"""Notifications (--notify) through apprise to a real HTTP server on 127.0.0.1: the message,
the severity floor, never in the way of the loop or a stop, once across restarts, storms."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reach_runs import NAN_STEP, grpo_run
from tests.webhook import Webhook
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.notify import Notifier

pytest.importorskip("apprise", reason="the notify extra (pip install 'trainguard[notify]')")


def _alert(step: int, severity: str = "high", rule: str = "t.rule", state: str = "firing"
           ) -> Alert:
    return Alert(time=1.0, rule=rule, severity=severity, action="warn", metric="loss",
                 value=2.0, step=step, rank=0, message=f"loss is 2.0 at step {step}",
                 recommendation="lower the learning rate", reference="a paper", state=state)


def test_monitor_notifies_what_do_why_run_rank_and_step(tmp_path: Path):
    """The NaN alert reaches the webhook once, saying what, what to do, why, run, rank, step."""
    run = grpo_run(tmp_path / "run")
    with Webhook() as hook:
        result = run_cli("monitor", str(run), "--once", "-q", "--notify", hook.url,
                         "--notify-severity", "critical")
        posts = hook.wait_for(1, timeout=2)
    assert result.returncode == 2, result.stderr
    assert len(posts) == 1
    title, body = posts[0]["title"], posts[0]["message"]
    assert "common.nonfinite_loss" in title and "CRITICAL" in title
    assert f"step {NAN_STEP}" in title and "rank 1" in title and str(run) in title
    for part in ("what: loss is NaN", "do: ", "why: ", f"run: {run}", "rank: 1",
                 f"step: {NAN_STEP}"):
        assert part in body


def test_the_severity_floor_keeps_lower_alerts_quiet(tmp_path: Path):
    """The default floor is high: a high KL alert is sent; with --notify-severity critical only
    the critical ones are."""
    run = grpo_run(tmp_path / "run")
    with Webhook() as hook:
        run_cli("monitor", str(run), "--once", "-q", "--notify", hook.url,
                "--state", str(tmp_path / "s1.json"), "--alerts", str(tmp_path / "a1"))
        default = {p["title"].split(":")[1].split("(")[0].strip() for p in hook.wait_for(3)}
    assert "grpo.kl_blowup" in default
    with Webhook() as hook:
        run_cli("monitor", str(run), "--once", "-q", "--notify", hook.url,
                "--notify-severity", "critical", "--state", str(tmp_path / "s2.json"),
                "--alerts", str(tmp_path / "a2"))
        critical = hook.wait_for(1)
    assert critical and all("CRITICAL" in p["title"] for p in critical)


def test_a_dead_endpoint_never_delays_the_stop(tmp_path: Path):
    """With the webhook's port closed, the stop is written before delivery gives up; the
    session ends within the notifier's flush timeout and says the message is kept."""
    run = grpo_run(tmp_path / "run")
    with Webhook() as hook:
        url = hook.url
    started = time.monotonic()
    result = run_cli("monitor", str(run), "--once", "--stop", "--notify", url,
                     "--notify-severity", "critical")
    elapsed = time.monotonic() - started
    control = json.loads((run / "control.json").read_text())
    assert control["rule"] == "common.nonfinite_loss"
    assert "pending for the next session" in result.stderr.decode().replace("\n", " ")
    assert elapsed < 20


def test_an_undelivered_notice_is_sent_by_the_next_session_once(tmp_path: Path):
    """Session 1 cannot reach the endpoint: the notice stays pending in the ledger. Session 2
    (endpoint up) sends it; session 3 sends nothing more."""
    run = grpo_run(tmp_path / "run")
    with Webhook() as hook:
        port = hook.port
    url = f"json://127.0.0.1:{port}/hook"
    run_cli("monitor", str(run), "--once", "-q", "--notify", url, "--notify-severity",
            "critical")
    state = json.loads((run / ".trainguard" / "state.json").read_text())
    assert list(state["alerts"]["notify_pending"]) == [f"common.nonfinite_loss|1|{NAN_STEP}|firing"]
    with Webhook(port=port) as hook:
        run_cli("monitor", str(run), "--once", "-q", "--notify", url, "--notify-severity",
                "critical")
        assert len(hook.wait_for(1, timeout=5)) == 1
        run_cli("monitor", str(run), "--once", "-q", "--notify", url, "--notify-severity",
                "critical")
        time.sleep(0.5)
        assert len(hook.posts) == 1
    state = json.loads((run / ".trainguard" / "state.json").read_text())
    assert state["alerts"]["notify_pending"] == {}


def test_emit_returns_at_once_while_a_slow_endpoint_takes_seconds():
    """A 1.5 s endpoint: emit() returns in milliseconds; the message arrives in the background."""
    with Webhook(delay=1.5) as hook:
        notifier = Notifier([hook.url], run="r")
        started = time.monotonic()
        notifier.emit(_alert(1))
        emit_s = time.monotonic() - started
        posts = hook.wait_for(1, timeout=10)
        notifier.close()
    assert emit_s < 0.1
    assert len(posts) == 1


def test_a_failing_endpoint_is_retried_with_backoff_and_reported():
    """Two 500s, then 200: delivered on the third attempt, the failure reported once."""
    reports: list[str] = []
    with Webhook(fail_first=2) as hook:
        notifier = Notifier([hook.url], run="r", backoff=0.05, report=reports.append)
        notifier.emit(_alert(1))
        posts = hook.wait_for(1, timeout=10)
        notifier.close()
    assert (len(posts), hook.attempts, notifier.stats.retries) == (1, 3, 2)
    assert any("retrying with backoff" in r for r in reports)


def test_a_storm_is_rate_limited_and_summarised():
    """Twelve alerts with a burst of 3 per window: 3 messages, then one summary of the 9."""
    with Webhook() as hook:
        notifier = Notifier([hook.url], run="r", burst=3, window=1.0)
        for step in range(12):
            notifier.emit(_alert(step, rule=f"t.rule{step % 2}"))
        posts = hook.wait_for(4, timeout=10)
        notifier.close()
    assert len(posts) == 4
    summary = posts[3]
    assert "9 more alerts" in summary["title"]
    assert "5 x t.rule1" in summary["message"] and "4 x t.rule0" in summary["message"]


def test_resolutions_are_sent_only_when_asked():
    """A resolved alert is quiet by default and sent with resolved=True."""
    with Webhook() as hook:
        quiet = Notifier([hook.url], run="r")
        quiet.emit(_alert(5, state="resolved"))
        quiet.close()
        loud = Notifier([hook.url], run="r", resolved=True)
        loud.emit(_alert(5, state="resolved"))
        posts = hook.wait_for(1)
        loud.close()
    assert [p["title"].split(":")[0] for p in posts] == ["trainguard resolved"]


def test_a_url_apprise_cannot_read_is_refused_at_start(tmp_path: Path):
    """--notify with an unknown scheme: exit 1 with a message, before reading anything."""
    run = grpo_run(tmp_path / "run", steps=5)
    result = run_cli("monitor", str(run), "--once", "--notify", "nosuchscheme://x")
    assert result.returncode == 1
    assert "apprise does not understand" in result.stderr.decode()


def test_check_and_run_notify_too(tmp_path: Path):
    """check --notify sends the batch verdict's alerts; run --notify those of the command."""
    run = grpo_run(tmp_path / "run")
    with Webhook() as hook:
        check = run_cli("check", str(run), "--notify", hook.url, "--notify-severity",
                        "critical")
        assert check.returncode == 2
        assert len(hook.wait_for(1)) == 1
        script = ("import json\nfor i in range(1, 6):\n"
                  "    print(json.dumps({'step': i, 'loss': float('nan') if i == 4 else 1.0}),"
                  " flush=True)\n")
        result = run_cli("run", "--run-dir", str(tmp_path / "wrapped"), "--notify", hook.url,
                         "--notify-severity", "critical", "-q", "--",
                         "python", "-c", script)
        posts = hook.wait_for(2)
    assert result.returncode != 0
    assert "common.nonfinite_loss" in posts[1]["title"]


def test_close_gives_up_on_held_notices_within_the_flush_timeout():
    """Alerts held by the rate limit when the session ends: close() returns within its flush
    timeout, says they were not delivered, and leaves no thread running."""
    reports: list[str] = []
    with Webhook() as hook:
        notifier = Notifier([hook.url], run="r", burst=1, window=60.0, flush_timeout=0.5,
                            report=reports.append)
        for step in range(3):
            notifier.emit(_alert(step))
        assert len(hook.wait_for(1)) == 1
        started = time.monotonic()
        notifier.close()
        took = time.monotonic() - started
    assert took < 3
    assert not any(t.thread.is_alive() for t in notifier.targets)
    assert any("2 notification(s) not delivered" in r for r in reports)
