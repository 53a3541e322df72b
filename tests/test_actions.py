"""Stopping through the monitor: escalation to SIGKILL, sent once across restarts, stale control
files, and a control file that is never torn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_cli
from trainguard.control import StopRequest, write_stop_request
from trainguard.emitters.writer import EventWriter
from trainguard.monitor.act.actions import ControlFileStopper, StopPlan
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.ingest.sources import STATE_DIRNAME

# A trainer that ignores SIGTERM, forks a child that ignores it too, and logs NaN from step 3.
STUBBORN = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
run_dir = sys.argv[1]
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
with open(os.path.join(run_dir, "child.pid"), "w") as f:
    f.write(str(child))
with open(os.path.join(run_dir, "events.rank0.jsonl"), "a") as f:
    for i in range(1, 1200):
        loss = float("nan") if i >= 3 else 1.0
        f.write(json.dumps({"step": i, "metrics": {"loss": loss}}) + "\n")
        f.flush()
        time.sleep(0.1)
"""

# A trainer that counts the SIGTERMs it receives and logs NaN at once.
COUNTING = r"""
import json, os, signal, sys, time
run_dir = sys.argv[1]
def count(signum, frame):
    with open(os.path.join(run_dir, "terms.txt"), "a") as f:
        f.write("TERM\n")
signal.signal(signal.SIGTERM, count)
with open(os.path.join(run_dir, "events.rank0.jsonl"), "a") as f:
    f.write(json.dumps({"step": 1, "metrics": {"loss": float("nan")}}) + "\n")
with open(os.path.join(run_dir, "ready"), "w") as f:
    f.write("1")
time.sleep(60)
"""


def _start(script: str, run_dir: Path, marker: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], start_new_session=True)
    for _ in range(200):
        if (run_dir / marker).exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("stub trainer did not start")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alerts(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_trainer_ignoring_sigterm_with_a_child_leaves_no_survivor(run_dir: Path):
    """--pid with --kill-after: SIGTERM to the group is ignored, SIGKILL ends parent and child."""
    proc = _start(STUBBORN, run_dir, "child.pid")
    child = int((run_dir / "child.pid").read_text())
    try:
        result = run_cli("monitor", str(run_dir), "--pid", str(proc.pid), "--kill-after", "1",
                         "--quiet", timeout=60)
        assert result.returncode == 2, result.stderr.decode()
        assert proc.wait(10) == -9
        assert _gone(child)
        fired = [a for a in _alerts(run_dir) if a["state"] == "firing"]
        assert "SIGTERM sent to group" in str(fired[0]["delivery"])
        outcome = [a for a in _alerts(run_dir) if a["state"] == "stop_outcome"]
        assert len(outcome) == 1 and "SIGKILL" in str(outcome[0]["delivery"])
        post = json.loads((run_dir / "postmortem.json").read_text())
        assert [d["signal"] for d in post["stop"]["deliveries"]] == ["SIGTERM", "SIGKILL"]
        assert post["status"] == "stopped" and post["stop"]["obeyed"] is True
    finally:
        for pid in (proc.pid, child):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        proc.wait()


def _firing(run_dir: Path) -> list[dict[str, object]]:
    return [a for a in _alerts(run_dir) if a["state"] == "firing"]


@pytest.mark.slow
@pytest.mark.parametrize("state_kept", [True, False], ids=["state-kept", "state-lost"])
def test_a_signal_is_sent_once_even_across_a_monitor_restart(run_dir: Path, state_kept: bool):
    """Two monitors in turn on the same run and PID: the trainer receives one SIGTERM.

    With its checkpoint the second monitor raises nothing twice; without it (state deleted) it
    raises the alert again, but the log of sent stops keeps it from signalling again.
    """
    proc = _start(COUNTING, run_dir, "ready")
    try:
        first = run_cli("monitor", str(run_dir), "--once", "--pid", str(proc.pid), "--quiet")
        if not state_kept:
            (run_dir / STATE_DIRNAME / "state.json").unlink()
        second = run_cli("monitor", str(run_dir), "--once", "--pid", str(proc.pid), "--quiet")
        assert [first.returncode, second.returncode] == [2, 2], second.stderr.decode()
        time.sleep(0.2)  # let the handler of a (wrongly) repeated signal run before counting
        assert (run_dir / "terms.txt").read_text().split() == ["TERM"]
        deliveries = [str(a["delivery"]) for a in _firing(run_dir)]
        if state_kept:
            assert 1 == len(deliveries)
            assert "SIGTERM sent to group" in deliveries[0]
        else:
            assert 2 == len(deliveries)
            assert "already sent before a restart" in deliveries[-1]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("state_kept", [True, False], ids=["state-kept", "state-lost"])
def test_a_control_file_already_written_for_this_run_is_not_written_again(run_dir: Path,
                                                                         state_kept: bool):
    """A restarted monitor with --stop leaves its earlier request as it was, state or not."""
    (run_dir / "run_metadata.json").write_text(json.dumps({"run_id": "run-A"}))
    (run_dir / "events.rank0.jsonl").write_text('{"step": 4, "metrics": {"loss": NaN}}\n')
    assert run_cli("monitor", str(run_dir), "--once", "--stop", "-q").returncode == 2
    written = (run_dir / "control.json").read_bytes()
    if not state_kept:
        (run_dir / STATE_DIRNAME / "state.json").unlink()
    assert run_cli("monitor", str(run_dir), "--once", "--stop", "-q").returncode == 2
    assert written == (run_dir / "control.json").read_bytes()
    deliveries = [str(a["delivery"]) for a in _firing(run_dir)]
    if state_kept:
        assert 1 == len(deliveries)
    else:
        assert 2 == len(deliveries)
        assert "control file already written" in deliveries[-1]


def test_stale_control_file_is_ignored_by_the_trainer_and_reported(run_dir: Path):
    """A stop request for an earlier run: the writer does not stop; the monitor says why."""
    write_stop_request(run_dir / "control.json", StopRequest(
        rule="common.nonfinite_loss", reason="old", step=9, time=time.time(), run_id="old-run"))
    with EventWriter(run_dir, run_id="new-run", metadata={"run_id": "new-run"}) as writer:
        writer.log_metrics(1, {"loss": 1.0})
        assert writer.should_stop is False
    (run_dir / "run_metadata.json").write_text(json.dumps({"run_id": "new-run"}))
    result = run_cli("monitor", str(run_dir), "--once", "--stop", "-q")
    assert result.returncode == 0, result.stderr.decode()
    (stale,) = _alerts(run_dir)
    assert stale["rule"] == "trainguard.stale_control_file"
    assert "old-run" in str(stale["message"]) and "new-run" in str(stale["message"])


WRITER = r"""
import sys, time
from trainguard.control import StopRequest, write_stop_request
path = sys.argv[1]
for i in range(10000):
    request = StopRequest(rule="r", reason="x" * (i % 300), step=i, time=time.time())
    write_stop_request(path, request)
"""

READER = r"""
import json, sys
path = sys.argv[1]
reads = torn = last = 0
while last != 9999:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        continue
    reads += 1
    try:
        obj = json.loads(raw)
        last = obj["step"]
        if obj["reason"] != "x" * (last % 300):
            torn += 1
    except ValueError:
        torn += 1
print(json.dumps({"reads": reads, "torn": torn, "last": last}))
"""


@pytest.mark.slow
def test_ten_thousand_concurrent_control_file_writes_are_never_read_torn():
    """A writer process rewrites the file 10,000 times while a reader process reads it.

    On tmpfs (/dev/shm) when there is one: the fsyncs that make each write durable cost ~11 ms
    each on this disk and do not change what a concurrent reader can see."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        path = os.path.join(tmp, "control.json")
        env = dict(os.environ)
        reader = subprocess.Popen([sys.executable, "-c", READER, path], stdout=subprocess.PIPE,
                                  env=env)
        writer = subprocess.run([sys.executable, "-c", WRITER, path], env=env, timeout=120,
                                check=False)
        out, _ = reader.communicate(timeout=30)
        assert writer.returncode == 0
        report = json.loads(out)
        assert (report["torn"], report["last"]) == (0, 9999)
        assert report["reads"] > 100
        assert [n for n in os.listdir(tmp) if n != "control.json"] == []


def _nan_alert(step: int) -> Alert:
    return Alert(time=None, rule="common.nonfinite_loss", severity="critical", action="stop",
                 metric="loss", value=float("nan"), step=step, rank=0, message="loss is NaN")


@pytest.mark.parametrize(("last_step", "obeyed", "words"), [
    (6, True, "obeyed: events stopped at step 6"),
    (9, False, "not obeyed: the trainer went on to step 9"),
])
def test_stop_outcome_says_whether_the_trainer_obeyed(tmp_path: Path, last_step: int,
                                                      obeyed: bool, words: str):
    """After the grace, events that stopped mean obeyed; steps that went on mean not."""
    emitted: list[Alert] = []
    plan = StopPlan(control=ControlFileStopper(tmp_path / "control.json"), grace=lambda: 0.0,
                    progress=lambda: last_step, emit=emitted.append)
    delivery = plan.stop(_nan_alert(5))
    plan.tick()
    assert delivery is not None and delivery.startswith(f"control_file:{tmp_path}")
    assert plan.stop(_nan_alert(5)) is None
    assert [("stop_outcome", f"stop of common.nonfinite_loss: {words}")] == [
        (a.state, a.message) for a in emitted]
    assert plan.record is not None and obeyed is plan.record.obeyed


def test_monitor_refuses_pid_one_with_a_clear_message(run_dir: Path):
    """--pid 1 is refused before anything runs: one line, exit 1."""
    result = run_cli("monitor", str(run_dir), "--once", "--pid", "1")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "PID 1" in err and "Traceback" not in err
