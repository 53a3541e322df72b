"""Signalling only the process we were given: PID reuse, refusals, group or process alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainguard.exceptions import ConfigError
from trainguard.monitor.act.process import ProcessTarget, parse_signal

ROOT = Path(__file__).resolve().parent.parent


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def _sleeper(*, new_session: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=new_session)


@pytest.mark.skipif(not _unshare_works(),
                    reason="needs root and `unshare --pid` to force a PID onto an impostor")
def test_impostor_on_a_recycled_pid_is_never_signalled():
    """In a private PID namespace an impostor gets the old PID; no signal reaches it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             str(ROOT / "tests" / "pid_reuse_scenario.py")],
                            capture_output=True, env=env, timeout=30, check=False)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["old_pid"] == report["impostor_pid"]
    assert report["delivered"] == [False, False, False, False]
    assert report["impostor_alive"] is True
    assert "is not the process it was" in report["recapture"]


def test_a_pid_whose_creation_time_differs_is_refused():
    """Without a pidfd, a PID whose creation time is not the recorded one is left alone."""
    proc = _sleeper()
    try:
        real = psutil.Process(proc.pid).create_time()
        target = ProcessTarget(proc.pid, real - 5.0, os.getuid(), pidfd=None)
        outcome = target.send(signal.SIGKILL)
        assert (outcome.delivered, outcome.scope) == (False, "none")
        assert proc.poll() is None
        with pytest.raises(ConfigError, match="is not the process it was"):
            ProcessTarget.capture(proc.pid, expected_create_time=real - 5.0)
    finally:
        proc.kill()
        proc.wait()


def test_pid_one_and_trainguard_itself_are_refused():
    """PID 1 and our own process can never be targets."""
    for pid in (1, os.getpid()):
        with pytest.raises(ConfigError):
            ProcessTarget.capture(pid)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to start a process as another user")
def test_a_process_of_another_user_is_refused():
    """A process owned by another uid is never captured, so never signalled."""
    proc = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534",
                             "--clear-groups", "sleep", "30"])
    try:
        time.sleep(0.2)  # let setpriv drop privileges before we look
        with pytest.raises(ConfigError, match="another user"):
            ProcessTarget.capture(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_group_leader_gets_the_group_and_a_member_of_ours_only_itself():
    """A session leader's group is signalled; a process in our own group is signalled alone."""
    leader, member = _sleeper(new_session=True), _sleeper(new_session=False)
    try:
        lead_target = ProcessTarget.capture(leader.pid)
        member_target = ProcessTarget.capture(member.pid)
        outcomes = [lead_target.send(signal.SIGTERM), member_target.send(signal.SIGTERM)]
        assert [o.scope for o in outcomes] == ["group", "process"]
        assert [leader.wait(5), member.wait(5)] == [-15, -15]
        lead_target.close()
        member_target.close()
    finally:
        for proc in (leader, member):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_signal_names_are_parsed_and_unknown_ones_refused():
    """TERM, SIGKILL and numbers are accepted; nonsense is a ConfigError."""
    assert [
        parse_signal("TERM"), parse_signal("SIGKILL"), parse_signal("2")] == [
        signal.SIGTERM, signal.SIGKILL, signal.SIGINT]
    with pytest.raises(ConfigError):
        parse_signal("SIGNOPE")
