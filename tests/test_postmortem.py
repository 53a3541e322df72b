"""Postmortem pieces: exit descriptions and the checkpoint to resume from."""

from __future__ import annotations

import json
from pathlib import Path

from trainguard.events import Record
from trainguard.monitor.act.postmortem import (
    describe_exit,
    find_resume_checkpoint,
    write_postmortem,
)
from trainguard.monitor.engine.alerts import Alert


def test_exit_codes_and_signals_are_described():
    """0 is normal, a positive code an error, a negative code the killing signal."""
    assert (describe_exit(0)["code"], describe_exit(0)["signal"]) == (0, None)
    assert (describe_exit(-9)["code"], describe_exit(-9)["signal"]) == (None, "SIGKILL")
    assert "OOM" in describe_exit(-9)["description"]
    assert "code 1" in describe_exit(1)["description"]


def test_resume_checkpoint_is_the_newest_before_the_first_critical_step(tmp_path: Path):
    """checkpoint-N with N < first critical step, searched one level down too."""
    for name in ("checkpoint-10", "out/checkpoint-20", "out/checkpoint-30", "checkpoint-x"):
        (tmp_path / name).mkdir(parents=True)
    found = find_resume_checkpoint([tmp_path], before_step=30)
    assert (20, str(tmp_path / "out" / "checkpoint-20")) == (found["step"], found["checkpoint"])
    assert find_resume_checkpoint([tmp_path], before_step=None)["step"] == 30
    assert find_resume_checkpoint([tmp_path], before_step=5) is None


def test_postmortem_carries_last_steps_metrics_and_non_finite_values(tmp_path: Path):
    """Per-rank last step and metrics, NaN written as a string; the file is valid JSON."""
    alert = Alert(time=1.0, rule="r", severity="critical", action="stop", metric="loss",
                  value=float("nan"), step=7, rank=1, message="m")
    path = write_postmortem(tmp_path, status="stopped", returncode=-15,
                            last_records={1: Record(7, {"loss": float("nan")}, None, 1)},
                            alerts=[alert])
    post = json.loads(path.read_text())
    assert (post["last_step"], post["last_metrics"], post["first_critical_step"]) == (
        {"1": 7}, {"1": {"loss": "NaN"}}, 7)
    assert post["exit"]["signal"] == "SIGTERM"
