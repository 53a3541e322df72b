"""`monitor --live` in a real terminal (tmux): ranks with their last step and its age, the
detected trainer's key metrics with sparklines, firing alerts and the stop; off on a pipe."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reach_runs import grpo_metrics
from trainguard import EventWriter

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install -y tmux)")


def _tmux(*args: str) -> str:
    return subprocess.run([TMUX, *args], capture_output=True, text=True, timeout=20,  # type: ignore[list-item]
                          check=False).stdout


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait_for(session: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _screen(session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")


def test_live_view_in_tmux_follows_ranks_metrics_alerts_and_the_stop(tmp_path: Path):
    """A GRPO run grows on two ranks; the view shows both ranks' steps, the trainer's key
    metrics with sparklines, then the KL alert firing and the stop on the NaN."""
    run = tmp_path / "run"
    writers = [EventWriter(run, rank=r, world_size=2) for r in range(2)]
    session = f"tg-live-{time.monotonic_ns()}"
    # rich sizes itself from COLUMNS/LINES when set: the pane's own size must count.
    command = (f"env -u COLUMNS -u LINES {shlex.quote(sys.executable)} -m trainguard monitor "
               f"{shlex.quote(str(run))} --live --stop; sleep 60")
    _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "60", command)
    try:
        for step in range(1, 41):  # a step every 0.1 s: the view samples at each refresh
            for r, w in enumerate(writers):
                w.log_metrics(step, grpo_metrics(step, r, kl_from=None, nan_step=None))
            time.sleep(0.1)
        screen = _wait_for(session, "trainer: grpo")
        screen = _wait_for(session, "│    1 │        40 │")
        assert "│    0 │        40 │" in screen
        for key in ("reward", "kl", "entropy"):
            assert f"│ {key} " in screen
        assert any(ch in screen for ch in "▂▃▄▅▆▇█")  # a sparkline rose
        assert "stop: none" in screen
        for step in range(41, 60):  # KL > 1 for 5 steps, then a NaN loss on rank 1
            for r, w in enumerate(writers):
                w.log_metrics(step, grpo_metrics(step, r, kl_from=41, nan_step=55))
        screen = _wait_for(session, "common.nonfinite_loss at step 55")
        assert "grpo.kl_blowup" in screen
        assert "│    1 │        59 │" in screen
        _tmux("send-keys", "-t", session, "C-c", "")
        _wait_for(session, "trainguard: alert:")
    finally:
        for w in writers:
            w.close()
        _tmux("kill-session", "-t", session)


def test_live_is_off_when_stdout_is_not_a_terminal(tmp_path: Path):
    """Piped stdout: no live frame (no box drawing), the plain summary as without --live."""
    run = tmp_path / "run"
    with EventWriter(run) as w:
        for step in range(1, 20):
            w.log_metrics(step, {"loss": 1.0})
    result = run_cli("monitor", str(run), "--once", "--live")
    assert result.returncode == 0
    out = result.stdout.decode() + result.stderr.decode()
    assert "┏" not in out and "trainguard live" not in out
    assert "trainguard: clean" in out
