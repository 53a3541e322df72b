"""A stop reaches only the session whose events fired it: a fresh monitor that reads a run
directory from its start meets the NaN that ended an earlier session, and must not stop the
session running now for it (through the real CLI, with real files)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import run_cli


def _run_dir(run_dir: Path, *, session_start: float, event_time: float) -> None:
    """A run directory whose current session began at ``session_start``, holding events
    (a NaN loss at step 3) written at ``event_time`` onwards."""
    (run_dir / "run_metadata.json").write_text(json.dumps({
        "run_id": "run-1", "session_id": "today", "session_start": session_start}))
    with open(run_dir / "events.rank0.jsonl", "w") as f:
        for step in range(1, 6):
            loss = "NaN" if step == 3 else 1.0 / step
            f.write(json.dumps({"time": event_time + step, "step": step, "rank": 0,
                                "metrics": {"loss": loss}}) + "\n")


def _outcomes(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "alerts.jsonl").read_text().splitlines()
    return [a for a in map(json.loads, lines) if a.get("state") == "stop_outcome"]


def test_an_earlier_sessions_nan_does_not_stop_the_session_running_now(run_dir: Path) -> None:
    """Events written an hour before the recorded session start: the alert fires (the NaN is
    real), no control file is written, and the outcome says why."""
    now = time.time()
    _run_dir(run_dir, session_start=now, event_time=now - 3600)
    result = run_cli("monitor", str(run_dir), "--once", "--stop")
    assert not (run_dir / "control.json").exists()
    assert b"common.nonfinite_loss" in result.stderr
    outcome = _outcomes(run_dir)
    assert len(outcome) == 1
    assert "earlier run of this directory" in str(outcome[0]["message"])
    assert "not stopped" in result.stderr.decode()


def test_a_nan_of_the_session_running_now_still_stops_it(run_dir: Path) -> None:
    """The same events written after the session start: the stop request goes out, addressed
    to that session."""
    now = time.time()
    _run_dir(run_dir, session_start=now - 60, event_time=now - 30)
    run_cli("monitor", str(run_dir), "--once", "--stop")
    request = json.loads((run_dir / "control.json").read_text())
    assert request["session"] == "today"
    assert request["rule"] == "common.nonfinite_loss"
