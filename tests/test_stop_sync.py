"""Stop requests: every rank of a process group stops after the same step, a request is seen
within a step, and a request applies only to the writer session it was meant for (real
torchrun processes with gloo, the real monitor CLI, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from trainguard import EventWriter
from trainguard.control import StopRequest, write_stop_request

pytest.importorskip("torch")

LOOP = Path(__file__).with_name("ddp_stop_loop.py")


@pytest.mark.slow
@pytest.mark.parametrize("blow_up_at", [6, 9])
def test_every_rank_stops_after_the_same_step_and_the_group_stays_usable(tmp_path: Path,
                                                                         blow_up_at: int):
    """torchrun, 2 gloo ranks out of step, the README loop, `trainguard monitor --stop`: both
    ranks stop after the same step, and a barrier and a final checkpoint after it work."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(LOOP), str(run_dir), str(blow_up_at)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if (run_dir / "run_metadata.json").exists():
                break
            time.sleep(0.05)
        monitor = subprocess.Popen(
            [sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--stop", "--quiet",
             "--rules", "common", "--alert", "loss > 5 -> critical/stop: loss blew up"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        output = trainer.communicate(timeout=180)[0].decode(errors="replace")
    finally:
        trainer.kill()
    monitor.terminate()
    monitor.wait(30)
    assert trainer.returncode == 0, output[-3000:]
    steps = [int((run_dir / f"stopped.rank{r}").read_text()) for r in (0, 1)]
    assert steps[0] == steps[1] and steps[0] >= blow_up_at, (steps, output[-2000:])
    assert (run_dir / "final_checkpoint.pt").exists()


def test_a_stop_written_during_a_step_is_seen_at_its_end_or_the_next(run_dir: Path):
    """50 ms steps and the default stop_check_interval (50 ms): a request written during step
    N stops the loop after step N or N+1, never later (10 trials at points across a step)."""
    late = []
    for trial in range(10):
        trial_dir = run_dir / str(trial)
        writer = EventWriter(trial_dir, rank=0, world_size=1)
        stopped = None
        written_in = None
        for step in range(1, 40):
            start = time.monotonic()
            if step == 5:
                time.sleep(0.005 * trial)  # somewhere in the step
                write_stop_request(trial_dir / "control.json", StopRequest(
                    rule="r", reason="x", step=step, time=time.time(), run_id=writer.run_id,
                    session=writer.session_id))
                written_in = step
            time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
            writer.log_metrics(step, {"loss": 1.0})
            if writer.should_stop:
                stopped = step
                break
        writer.close()
        assert written_in is not None and stopped is not None
        if stopped - written_in > 1:
            late.append((trial, written_in, stopped))
    assert [] == late


def test_a_new_session_in_a_reused_run_dir_ignores_the_old_sessions_stop(run_dir: Path):
    """A rerun (or a resume) in the same run directory keeps the run id but is a new session:
    the control file the monitor wrote for the previous session does not stop it at step 1."""
    first = EventWriter(run_dir, rank=0, world_size=1)
    first.log_metrics(1, {"loss": float("nan")})
    result = run_cli("monitor", str(run_dir), "--once", "--stop", "--quiet")
    assert result.returncode == 2, result.stderr.decode()
    request = json.loads((run_dir / "control.json").read_text())
    assert request["session"] == first.session_id
    assert first.should_stop is True
    first.close()

    second = EventWriter(run_dir, rank=0, world_size=1)  # the resume
    assert second.run_id == first.run_id and second.session_id != first.session_id
    second.log_metrics(1, {"loss": 1.0})
    assert second.should_stop is False
    second.close()
    other_rank = EventWriter(run_dir, rank=1, world_size=2)  # reads the session rank 0 wrote
    assert other_rank.session_id == second.session_id
    assert other_rank.should_stop is False
    other_rank.close()


@pytest.mark.slow
def test_trl_callback_ranks_stop_after_the_same_step(tmp_path: Path):
    """torchrun, 2 gloo ranks of a real SFTTrainer with TrainGuardCallback, rank 0 slower at
    each step end, the monitor's stop rule firing at step 2: both ranks end at the same step,
    and the group still answers an all-reduce after training."""
    pytest.importorskip("trl")
    from tests.tiny_trl import build_tiny_model

    model = build_tiny_model(tmp_path / "llama")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="0")
    monitor = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--stop", "--quiet",
         "--rules", str(ROOT / "tests" / "data" / "trl_stop_at_step_2.yaml")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        trainer = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "2", str(Path(__file__).with_name("ddp_trl_stop.py")), model, str(tmp_path / "out"),
             str(run_dir)], env=env, capture_output=True, timeout=300, check=False)
    finally:
        monitor.terminate()
        monitor.wait(30)
    output = (trainer.stdout + trainer.stderr).decode(errors="replace")
    assert trainer.returncode == 0, output[-3000:]
    ended = [json.loads((run_dir / f"ended.rank{r}").read_text()) for r in (0, 1)]
    assert ended[0]["global_step"] == ended[1]["global_step"] < 30, ended
    assert ended[0]["stopped_at"] == ended[1]["stopped_at"] == ended[0]["global_step"], ended
    assert [2.0, 2.0] == [e["all_reduce"] for e in ended]
