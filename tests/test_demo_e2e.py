"""End to end, two real processes: a training loop goes wrong and the monitor stops it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow


def _run_loop_under_monitor(run_dir: Path, *extra: str) -> tuple[dict, int, list[dict]]:
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir),
                                "--stop", "--quiet"])
    try:
        time.sleep(0.5)
        loop = subprocess.run([sys.executable, str(EXAMPLES / "minimal_streaming_loop.py"),
                               "--run-dir", str(run_dir), "--steps", "40", "--step-time", "0.2",
                               *extra], capture_output=True, text=True, timeout=120, check=True)
        time.sleep(0.3)
    finally:
        monitor.send_signal(signal.SIGINT)
        code = monitor.wait(timeout=30)
    summary = json.loads(loop.stdout.strip().splitlines()[-1])
    alerts_file = run_dir / "alerts.jsonl"
    alerts = [json.loads(x) for x in alerts_file.read_text().splitlines()] if alerts_file.exists() else []
    return summary, code, alerts


def test_monitor_stops_a_diverging_loop_within_one_step(run_dir: Path):
    """The loop ends at most one step after its first non-finite loss or grad norm."""
    summary, code, alerts = _run_loop_under_monitor(run_dir, "--blowup-at", "12")
    events = [json.loads(x) for x in (run_dir / "events.rank0.jsonl").read_text().splitlines()]
    first_bad = next(e["step"] for e in events
                     if any(isinstance(v, str) for v in e["metrics"].values()))
    assert summary["stopped_by_monitor"] is True
    assert 0 <= summary["last_step"] - first_bad <= 1
    assert code == 2
    critical = [a for a in alerts if a["severity"] == "critical"]
    assert critical and critical[0]["step"] == first_bad and critical[0]["action"] == "stop"
    control = json.loads((run_dir / "control.json").read_text())
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert control["run_id"] == meta["run_id"] and control["step"] == first_bad


def test_monitor_does_not_stop_a_healthy_loop(run_dir: Path):
    """A healthy run trains to the end, with no stop and exit code 0."""
    summary, code, alerts = _run_loop_under_monitor(run_dir)
    assert summary == {"last_step": 40, "stopped_by_monitor": False, "reason": None}
    assert code == 0 and alerts == []
    assert not (run_dir / "control.json").exists()
