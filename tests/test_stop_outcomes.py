"""What a stop really did: a trainer that ignores SIGTERM is reported as going on, a process
that died first is not said to have obeyed, a second Ctrl-C ends ``trainguard run``, and group
signals go through pidfds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.monitor.act.actions import StopPlan
from trainguard.monitor.act.process import ProcessTarget
from trainguard.monitor.engine.alerts import Alert

# Ignores SIGTERM, logs a NaN at step 2 and keeps stepping (slowly) for a minute.
DEAF = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
run_dir = sys.argv[1]
with open(os.path.join(run_dir, "events.rank0.jsonl"), "a") as f:
    for i in range(1, 600):
        f.write(json.dumps({"step": i, "metrics": {"loss": float("nan") if i >= 2 else 1.0}})
                + "\n")
        f.flush()
        time.sleep(0.1)
"""


def _alerts(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _nan_alert(step: int) -> Alert:
    return Alert(time=None, rule="common.nonfinite_loss", severity="critical", action="stop",
                 metric="loss", value=float("nan"), step=step, rank=0, message="loss is NaN")


@pytest.mark.slow
def test_a_trainer_ignoring_sigterm_under_pid_is_reported_as_not_obeying(tmp_path: Path):
    """--pid without --kill-after: SIGTERM ignored, the outcome says it still runs (not silence)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = subprocess.Popen([sys.executable, "-c", DEAF, str(run_dir)],
                               start_new_session=True)
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir),
                                "--pid", str(trainer.pid), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        outcome: list[dict[str, object]] = []
        while time.monotonic() < deadline and not outcome:
            time.sleep(0.2)
            outcome = [a for a in _alerts(run_dir) if a["state"] == "stop_outcome"]
        assert trainer.poll() is None, "the trainer ignores SIGTERM and must still be running"
        assert len(outcome) == 1, _alerts(run_dir)
        message = str(outcome[0]["message"])
        assert "not obeyed" in message and f"pid {trainer.pid} still running" in message
        assert "after SIGTERM" in message
    finally:
        trainer.kill()
        trainer.wait()
        out, err = monitor.communicate(timeout=30)
    post = json.loads((run_dir / "postmortem.json").read_text())
    assert post["stop"]["obeyed"] is False and post["status"] == "stopped"


def test_a_process_gone_before_the_stop_is_not_said_to_have_obeyed(tmp_path: Path):
    """The target exited before the rule fired: no signal, outcome 'nothing to stop'."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            start_new_session=True)
    target = ProcessTarget.capture(proc.pid, is_child=True)
    proc.kill()
    proc.wait()
    emitted: list[Alert] = []
    plan = StopPlan(target=target, grace=lambda: 0.0, emit=emitted.append)
    plan.stop(_nan_alert(3))
    plan.finish(exited=True)
    target.close()
    assert plan.record is not None
    assert plan.record.obeyed is None and not plan.record.reached_a_running_trainer
    assert [d for d in plan.record.deliveries if d["method"] == "signal"] == []
    assert [a.message for a in emitted] == [
        "stop of common.nonfinite_loss: nothing to stop: the process had already exited before "
        "the rule fired"]


def test_run_whose_command_died_before_the_rule_fired_is_not_reported_stopped(tmp_path: Path):
    """The leader exits at once; its child prints the NaN later: postmortem says failed."""
    run_dir = tmp_path / "run"
    script = ("import os, sys, time\n"
              "if os.fork() == 0:\n"
              "    time.sleep(0.5)\n"
              "    os.write(1, b'{\"step\": 1, \"metrics\": {\"loss\": NaN}}\\n')\n"
              "    os._exit(0)\n"
              "sys.exit(1)\n")
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c", script)
    post = json.loads((run_dir / "postmortem.json").read_text())
    assert result.returncode == 1, result.stderr.decode()
    assert post["status"] == "failed"
    assert post["stop"]["obeyed"] is None and post["stop"]["target_gone_first"] is True
    assert "nothing to stop" in post["stop"]["outcome"]


@pytest.mark.slow
def test_a_second_interrupt_kills_a_command_that_ignores_sigint_and_sigterm(tmp_path: Path):
    """Ctrl-C is forwarded; the second Ctrl-C sends SIGKILL to the command's group."""
    ready = tmp_path / "ready"
    script = ("import signal, time, pathlib, sys\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "pathlib.Path(sys.argv[1]).write_text('1')\n"
              "time.sleep(120)\n")
    run = subprocess.Popen([sys.executable, "-m", "trainguard", "run", "-q", "--run-dir",
                            str(tmp_path / "run"), "--", sys.executable, "-c", script,
                            str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        run.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert run.poll() is None, "one interrupt is forwarded; the command ignores it"
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    post = json.loads((tmp_path / "run" / "postmortem.json").read_text())
    assert post["exit"]["signal"] == "SIGKILL"
    assert b"interrupt again to kill it" in err and b"SIGKILL sent to group" in err


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the kernel has no pidfds")
def test_group_signals_go_through_pidfds_to_the_leader_and_each_member():
    """A leader with a forked member: both get the signal, through pidfds, not killpg."""
    script = ("import os, time\n"
              "if os.fork() == 0:\n"
              "    time.sleep(60)\n"
              "    os._exit(0)\n"
              "time.sleep(60)\n")
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        target = ProcessTarget.capture(leader.pid)
        deadline = time.monotonic() + 10
        while not target.orphans() and time.monotonic() < deadline:
            time.sleep(0.05)
        members = target.orphans()
        assert len(members) == 1
        outcome = target.send(signal.SIGTERM)
        assert outcome.scope == "group" and "via pidfds (leader and 1 other member(s))" in \
            outcome.detail
        assert leader.wait(5) == -15
        deadline = time.monotonic() + 5
        while target.orphans() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert target.orphans() == []
        target.close()
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except OSError:
            pass
        leader.wait()
