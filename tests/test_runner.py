"""`trainguard run` end to end: exit codes, output passed through, stops, hangs, postmortems."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLES, run_cli
from trainguard.control import StopRequest, write_stop_request


def _post(run_dir: Path) -> dict[str, object]:
    return json.loads((run_dir / "postmortem.json").read_text())


def _alerts(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]


def test_healthy_command_exits_with_its_own_code_and_output_unchanged(tmp_path: Path):
    """Exit 7 stays 7; every byte of stdout and stderr comes through; postmortem says failed."""
    run_dir = tmp_path / "run"
    script = ("import sys, os; sys.stdout.write('plain \\u00e9\\n{\"step\": 1, \"metrics\": "
              "{\"loss\": 0.5}}\\n'); sys.stderr.write('to stderr\\n'); "
              "sys.stdout.write('no newline'); sys.stdout.flush(); "
              "assert os.environ['TRAINGUARD_RUN_DIR'] == os.path.abspath(sys.argv[1]); "
              "assert os.environ['PYTHONUNBUFFERED'] == '1'; sys.exit(7)")
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c", script,
                     str(run_dir))
    assert result.returncode == 7, result.stderr.decode()
    assert (result.stdout
            == b'plain \xc3\xa9\n{"step": 1, "metrics": {"loss": 0.5}}\nto stderr\nno newline')
    post = _post(run_dir)
    assert (post["status"], post["exit"]["code"], post["stop"]) == ("failed", 7, None)
    assert post["last_step"] == {"0": 1} and post["last_metrics"] == {"0": {"loss": 0.5}}
    assert post["output_tail"][-1] == "no newline"


def test_a_command_killed_by_sigkill_is_reported_as_such(tmp_path: Path):
    """An OOM-kill looks like SIGKILL: exit 137, postmortem names the signal and the OOM killer."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c",
                     "import os; print('bye', flush=True); os.kill(os.getpid(), 9)")
    assert result.returncode == 137
    post = _post(run_dir)
    assert (post["status"], post["exit"]["signal"]) == ("killed", "SIGKILL")
    assert "OOM" in str(post["exit"]["description"])


NAN_PRINTER = r"""
import json, os, time
run_dir = os.environ["TRAINGUARD_RUN_DIR"]
for n in (1, 2, 5):
    os.makedirs(os.path.join(run_dir, f"checkpoint-{n}"))
for i in range(1, 600):
    print(json.dumps({"step": i, "metrics": {"loss": float("nan") if i >= 3 else 1.0}}))
    time.sleep(0.05)
"""


def test_nan_lines_from_a_trainer_without_events_get_sigterm_at_once(tmp_path: Path):
    """No events of its own, so it cannot read the control file: SIGTERM at once, exit 3."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c",
                     NAN_PRINTER)
    assert result.returncode == 3, result.stderr.decode()
    post = _post(run_dir)
    stop = post["stop"]
    assert (post["status"], post["exit"]["signal"]) == ("stopped", "SIGTERM")
    assert [d["method"] for d in stop["deliveries"]][:2] == ["control_file", "signal"]
    assert "SIGTERM sent to group" in stop["deliveries"][1]["detail"]
    assert stop["obeyed"] is True and post["first_critical_step"] == 3
    assert (2, str(run_dir / "checkpoint-2")) == (post["resume"]["step"],
                                                   post["resume"]["checkpoint"])
    assert "stop_outcome" in [a["state"] for a in _alerts(run_dir)]


@pytest.mark.slow
def test_diverging_minimal_loop_is_stopped_within_a_step_by_the_control_file(tmp_path: Path):
    """The example loop obeys the control file at the next step; no signal is needed."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable,
                     str(EXAMPLES / "minimal_streaming_loop.py"), "--run-dir", str(run_dir),
                     "--steps", "80", "--blowup-at", "5", "--step-time", "0.1", timeout=120)
    assert result.returncode == 3, result.stderr.decode()
    post = _post(run_dir)
    first = post["first_critical_step"]
    assert isinstance(first, int) and post["last_step"]["0"] <= first + 1
    assert (post["exit"]["code"],
                                     [d["method"] for d in post["stop"]["deliveries"]]) == (
        0, ["control_file"])
    assert post["stop"]["obeyed"] is True
    assert b"stopping at the monitor's request" in result.stdout


@pytest.mark.slow
def test_a_silent_command_is_reported_as_hung(tmp_path: Path):
    """No output and no events past --hang-timeout: an alert, and the postmortem says so."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--hang-timeout", "0.5", "--",
                     sys.executable, "-c",
                     "import json, time; "
                     "print(json.dumps({'step': 1, 'metrics': {'loss': 1.0}})); time.sleep(2)")
    assert result.returncode == 0, result.stderr.decode()
    post = _post(run_dir)
    assert (post["status"], post["hang"]["last_step"]) == ("exited", 1)
    assert [a["rule"] for a in _alerts(run_dir)] == ["trainguard.hang"]


def test_a_command_that_cannot_start_is_one_line_exit_one(tmp_path: Path):
    """A missing program: a clear message and exit 1, no traceback."""
    result = run_cli("run", "--run-dir", str(tmp_path / "r"), "--", "/nonexistent/trainer")
    err = result.stderr.decode()
    assert result.returncode == 1 and "cannot start" in err and "Traceback" not in err


def test_run_help_documents_examples_and_exit_codes():
    """`trainguard run --help` shows an example and the exit codes."""
    text = run_cli("run", "--help").stdout.decode()
    assert "Examples" in text and "Exit codes" in text and "3 trainguard stopped it" in text


STUBBORN_PRINTER = r"""
import json, os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
with open(os.path.join(os.environ["TRAINGUARD_RUN_DIR"], "child.pid"), "w") as f:
    f.write(str(child))
for i in range(1, 1200):
    print(json.dumps({"step": i, "metrics": {"loss": float("nan") if i >= 3 else 1.0}}))
    time.sleep(0.05)
"""


@pytest.mark.slow
def test_run_kill_after_leaves_no_survivor_of_a_trainer_ignoring_sigterm(tmp_path: Path):
    """SIGTERM ignored by the trainer and its forked child; --kill-after ends both."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--kill-after", "0.5", "--",
                     sys.executable, "-c", STUBBORN_PRINTER)
    assert result.returncode == 3, result.stderr.decode()
    child = int((run_dir / "child.pid").read_text())
    try:
        state = psutil.Process(child).status()
    except psutil.NoSuchProcess:
        state = "gone"
    assert state in ("gone", psutil.STATUS_ZOMBIE)
    post = _post(run_dir)
    assert post["exit"]["signal"] == "SIGKILL"
    signals = [d.get("signal") for d in post["stop"]["deliveries"] if d["method"] == "signal"]
    assert signals[:2] == ["SIGTERM", "SIGKILL"]


def test_run_exports_the_run_dir_and_reports_a_stale_control_file(tmp_path: Path):
    """EventWriter finds the run dir unconfigured; an old run's stop request is reported only."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_stop_request(run_dir / "control.json", StopRequest(
        rule="common.nonfinite_loss", reason="old", step=3, time=0.0, run_id="old-run"))
    script = ("from trainguard import EventWriter\n"
              "with EventWriter() as w:\n"
              "    w.log_metrics(1, {'loss': 1.0})\n"
              "    assert not w.should_stop\n"
              "    w.log_metrics(2, {'loss': 0.9})\n")
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert _post(run_dir)["last_step"] == {"0": 2}
    assert [a["rule"] for a in _alerts(run_dir)] == ["trainguard.stale_control_file"]


@pytest.mark.slow
@pytest.mark.trl
def test_a_trl_trainer_without_callback_is_stopped_from_its_printed_logs(tmp_path: Path):
    """No callback, no events of its own: the Trainer's printed log dicts (inside tqdm output
    on the merged pipe) are read, a learning-rate blow-up rule fires at the first log, and the
    trainer gets SIGTERM long before its last step."""
    pytest.importorskip("trl")
    run_dir = tmp_path / "run"
    trainer = [sys.executable, str(Path(__file__).resolve().parent / "trl_stdout_trainer.py"),
               "sft", str(tmp_path / "model"), str(tmp_path / "out"), "--max-steps", "200",
               "--lr", "1e4", "--pace", "0.2"]
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--alert",
                     "learning_rate > 1 -> critical/stop: learning rate blew up", "--",
                     *trainer, timeout=240)
    assert result.returncode == 3, result.stdout.decode()[-3000:]
    post = _post(run_dir)
    assert (post["status"], post["exit"]["signal"], post["first_critical_step"]) == (
        "stopped", "SIGTERM", 1)
    assert 1 <= post["last_step"]["0"] < 20
    assert post["last_metrics"]["0"]["learning_rate"] > 1
    fired = [a for a in _alerts(run_dir) if a.get("state") == "firing"]
    assert ["inline.1"] == [a["rule"] for a in fired]
    assert b"{'loss': " in result.stdout  # the trainer's output passed through


def test_printed_logs_are_not_read_again_once_the_trainer_writes_its_own_events(tmp_path: Path):
    """A trainer with events of its own (the TRL callback) also prints its logs: the printed
    copies are not evaluated, so a step never counts twice (here they would say NaN)."""
    run_dir = tmp_path / "run"
    script = ("import time\n"
              "from trainguard import EventWriter\n"
              "with EventWriter() as w:\n"
              "    for step in (1, 2, 3):\n"
              "        w.log_metrics(step, {'loss': 1.0})\n"
              "        time.sleep(0.3)\n"
              "        print({'loss': 'nan', 'epoch': str(step / 10)}, flush=True)\n")
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    post = _post(run_dir)
    assert (post["last_step"], post["last_metrics"], post["alerts"]) == (
        {"0": 3}, {"0": {"loss": 1.0}}, [])
