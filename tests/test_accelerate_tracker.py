"""Accelerate: ``Accelerator(log_with="trainguard")`` writes trainguard events and sees stops
(real accelerate, one CPU process)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytest.importorskip("accelerate")


def _accelerator(**kwargs):  # type: ignore[no-untyped-def]
    from accelerate import Accelerator

    import trainguard.emitters.accelerate  # noqa: F401 - registers "trainguard"

    return Accelerator(cpu=True, **kwargs)


def test_log_with_trainguard_writes_events_the_monitor_reads(tmp_path: Path, monkeypatch):
    """The registered name works with log_with; the loop's dict becomes events (numbers only),
    and the monitor finds the NaN loss in them."""
    import torch

    monkeypatch.setenv("TRAINGUARD_RUN_DIR", str(tmp_path / "run"))
    accelerator = _accelerator(log_with="trainguard")
    accelerator.init_trackers("tiny", config={"lr": 1e-3, "model": "tiny", "layers": [1, 2]})
    for step in range(1, 6):
        loss = torch.tensor(math.nan if step == 4 else 1.0 / step)
        accelerator.log({"train_loss": loss, "lr": 1e-3, "note": "text"}, step=step)
    accelerator.end_training()
    lines = (tmp_path / "run" / "events.rank0.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [1, 2, 3, 4, 5] == [e["step"] for e in events]
    assert {"train_loss": 1.0, "lr": 1e-3} == events[0]["metrics"]
    assert "NaN" == events[3]["metrics"]["train_loss"]
    metadata = json.loads((tmp_path / "run" / "run_metadata.json").read_text())
    assert {"lr": 1e-3, "model": "tiny"} == metadata["config"]
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(tmp_path / "run"), "--once", "--field-map", "accelerate",
                     "--alerts", str(alerts))
    assert 2 == result.returncode, result.stderr.decode()
    assert 4 == json.loads(alerts.read_text().splitlines()[0])["step"]


def test_stop_request_reaches_the_loop_through_the_tracker(tmp_path: Path):
    """A stop written to the run's control file: stop_requested(accelerator) turns True."""
    from trainguard.control import CONTROL_FILENAME, StopRequest, write_stop_request
    from trainguard.emitters.accelerate import TrainguardTracker, stop_requested

    tracker = TrainguardTracker(run_dir=tmp_path / "run", stop_check_interval=0.0)
    accelerator = _accelerator(log_with=[tracker])
    accelerator.init_trackers("tiny")
    accelerator.log({"loss": 0.5}, step=1)
    assert not stop_requested(accelerator)
    write_stop_request(tmp_path / "run" / CONTROL_FILENAME,
                       StopRequest(rule="common.nonfinite_loss", reason="loss is NaN", step=1,
                                   time=time.time(), run_id=tracker.tracker.run_id))
    accelerator.log({"loss": math.nan}, step=2)
    assert stop_requested(accelerator)
    assert "common.nonfinite_loss at step 1: loss is NaN" == tracker.stop_reason
    accelerator.end_training()
