"""The monitor killed with SIGKILL mid-ingest and restarted: every event recorded exactly once,
no alert raised twice, no stop sent twice (real processes, real files, real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROWS = 30_000


def _monitor(run: Path, record: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(run), "--record", str(record),
         "--stop", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _write_rank(path: Path, rank: int, start: int, stop: int, nan_at: int | None) -> None:
    with open(path, "a") as handle:
        for step in range(start, stop):
            loss = "NaN" if step == nan_at else 1.0 + (step % 7) / 10
            handle.write(json.dumps({"step": step, "rank": rank, "metrics": {"loss": loss}}) + "\n")


@pytest.mark.slow
def test_sigkill_mid_ingest_then_restart_records_each_event_once(run_dir: Path, tmp_path: Path):
    """Three kill -9s while reading 60,000 events; the record holds each (rank, step) once."""
    record = tmp_path / "record.jsonl"
    (run_dir / "r0").mkdir()
    files = [run_dir / "r0" / "rank0.jsonl", run_dir / "rank1.jsonl"]
    for rank, path in enumerate(files):
        _write_rank(path, rank, 0, ROWS // 2, nan_at=500 if rank == 0 else None)
    delays = [0.9, 1.3, 1.7]
    for i, delay in enumerate(delays):
        proc = _monitor(run_dir, record)
        time.sleep(delay)  # let it read part of the files
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for rank, path in enumerate(files):  # the run goes on while the monitor is down
            lo = ROWS // 2 + i * 1000
            _write_rank(path, rank, lo, lo + 1000, nan_at=None)
        with open(files[0], "a") as handle:  # a partial line across the restart
            handle.write('{"step": ' + str(ROWS + i) + ', "rank": 0, "met')
        with open(files[0], "a") as handle:
            handle.write('rics": {"loss": 1.0}}\n')
    final = subprocess.run(
        [sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--record", str(record),
         "--stop", "--once", "--quiet"], capture_output=True, timeout=120, check=False)
    assert final.returncode == 2, final.stderr.decode()  # the NaN alert is still the verdict

    keys = Counter()
    for line in record.read_bytes().splitlines():
        obj = json.loads(line)
        keys[(obj.get("rank", 0), obj["step"])] += 1
    expected = {(r, s) for r in (0, 1) for s in range(ROWS // 2 + len(delays) * 1000)}
    expected |= {(0, ROWS + i) for i in range(len(delays))}
    assert set(keys) == expected
    assert [] == [k for k, n in keys.items() if n != 1]

    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    firing = [(a["rule"], a["rank"], a["step"]) for a in alerts if a["state"] == "firing"]
    assert [("common.nonfinite_loss", 0, 500)] == [f for f in firing if f[0].endswith("nonfinite_loss")]
    assert len(firing) == len(set(firing))
    state = json.loads((run_dir / ".trainguard" / "state.json").read_text())
    assert [["common.nonfinite_loss", 0]] == state["alerts"]["stops"]


def test_a_session_killed_before_its_first_checkpoint_leaves_no_duplicate_record(tmp_path: Path):
    """Lines the recorder's buffer flushed before the first checkpoint are cut by the next
    session: the state of a session is on disk from its start (real files; the kill is the
    end of the first session's code before any commit)."""
    from trainguard.events import Record
    from trainguard.monitor.checkpoint import AlertLedger, Checkpointer, load_state
    from trainguard.monitor.ingest.sources import FileSource
    from trainguard.monitor.sinks.record import Recorder

    events = tmp_path / "rank0.jsonl"
    events.write_text('{"step": 0, "metrics": {"loss": 1.0}}\n')
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    recorder = Recorder(record)
    Checkpointer(state, FileSource(events), AlertLedger(), recorder)
    for step in range(5000):
        recorder.write(Record(step, {"loss": 1.0}))
    recorder._write_buffer()  # what a full buffer does by itself; then the process dies
    assert record.stat().st_size > 0

    saved, warning = load_state(state)
    assert warning is None
    Recorder(record, resume_length=saved["record_length"]).close()
    assert record.stat().st_size == 0


def test_an_alert_resolved_before_a_restart_is_still_the_verdict_after_it(run_dir: Path):
    """A NaN that fired and resolved in one session leaves the next session's exit code at 2:
    the restarted session reads on from the checkpoint and never sees the NaN again, but the
    run it reports on had one (real processes and files)."""
    events = run_dir / "rank0.jsonl"
    _write_rank(events, 0, 0, 100, nan_at=5)
    cmd = [sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--once", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert first.returncode == 2, first.stderr.decode()
    states = [json.loads(x)["state"] for x in (run_dir / "alerts.jsonl").read_text().splitlines()
              if json.loads(x)["rule"] == "common.nonfinite_loss"]
    assert ["firing", "resolved"] == states  # nothing is firing when the first session ends

    _write_rank(events, 0, 100, 200, nan_at=None)
    second = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert second.returncode == 2, second.stderr.decode()
    assert len((run_dir / "alerts.jsonl").read_text().splitlines()) == len(states)
