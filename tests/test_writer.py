"""EventWriter: what it writes, how it reads stop requests, and that it never raises on I/O."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

from trainguard import EventWriter
from trainguard.control import StopRequest, write_stop_request
from trainguard.events import Record, parse_line


def test_log_metrics_writes_one_flushed_line_per_step(run_dir: Path):
    """Each step is one line a follower can read at once, before close."""
    writer = EventWriter(run_dir, rank=0, world_size=1)
    writer.log_metrics(1, {"loss": 0.5, "grad_norm": float("nan")})
    lines = (run_dir / "events.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = parse_line(lines[0])
    assert isinstance(record, Record) and record.step == 1 and math.isnan(record.metrics["grad_norm"])
    assert "rank" not in json.loads(lines[0])
    writer.close()


def test_log_accumulates_a_step_and_should_stop_flushes_it(run_dir: Path):
    """log() builds the step's line; should_stop writes it so the monitor sees the step."""
    with EventWriter(run_dir, rank=2, world_size=4) as writer:
        writer.log(5, "loss", 1.0)
        writer.log(5, "lr", 0.1)
        assert not (run_dir / "events.rank2.jsonl").read_text()
        assert writer.should_stop is False
        line = json.loads((run_dir / "events.rank2.jsonl").read_text())
    assert line["rank"] == 2 and line["metrics"] == {"loss": 1.0, "lr": 0.1}


def test_should_stop_obeys_a_request_for_this_run(run_dir: Path):
    """A stop request carrying this run's id stops it, with a reason."""
    writer = EventWriter(run_dir, stop_check_interval=0)
    assert writer.should_stop is False
    write_stop_request(run_dir / "control.json", StopRequest(
        rule="common.nonfinite_loss", reason="loss is NaN", step=4, time=time.time(),
        run_id=writer.run_id))
    assert writer.should_stop is True
    assert writer.stop_reason == "common.nonfinite_loss at step 4: loss is NaN"
    writer.close()


def test_stale_control_file_of_another_run_is_ignored(run_dir: Path):
    """A control file left by an earlier run never stops a new one."""
    write_stop_request(run_dir / "control.json", StopRequest(
        rule="x", reason="old", step=1, time=time.time() - 3600, run_id="old-run"))
    write_stop_request(run_dir / "control.json", StopRequest(
        rule="x", reason="old", step=1, time=time.time() - 3600, run_id=None))
    writer = EventWriter(run_dir, stop_check_interval=0)
    assert writer.should_stop is False
    writer.close()


def test_unwritable_run_dir_warns_once_and_counts_dropped_events(tmp_path: Path):
    """An I/O failure never raises into the training loop."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer = EventWriter(blocker / "run")
        writer.log_metrics(1, {"loss": 1.0})
        writer.log_metrics(2, {"loss": 1.0})
        assert writer.should_stop is False
        writer.close()
    assert writer.events_dropped == 2
    assert len([w for w in caught if "trainguard" in str(w.message)]) == 1


def test_importing_the_writer_does_not_import_torch():
    """The trainer side stays light: torch is an extra."""
    import subprocess
    code = "import trainguard, sys; trainguard.EventWriter; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
