"""`trainguard monitor` end to end: verdicts, exit codes and bad input, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import DROP_ROOT_READ, run_cli


def _write(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line if isinstance(line, bytes) else line.encode())
            handle.write(b"\n")
    return path


def test_version_prints_the_version():
    """--version prints the version and exits 0."""
    result = run_cli("--version")
    assert (0, True) == (result.returncode, result.stdout.decode().startswith("trainguard "))


COMMANDS = [[], ["monitor"], ["run"], ["convert"], ["rules"], ["rules", "list"],
            ["rules", "show"], ["rules", "explain"], ["rules", "validate"], ["rules", "test"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "trainguard")
def test_help_of_every_command_renders_whole_with_an_example(command: list[str]):
    """--help exits 0, shows an example and the whole options panel (rich markup included)."""
    result = run_cli(*command, "--help")
    text = result.stdout.decode()
    assert (0, b"") == (result.returncode, result.stderr)
    assert "Example" in text
    assert "--help" in text
    if command == ["monitor"]:
        assert "Exit codes" in text


def test_once_on_a_healthy_file_exits_zero(tmp_path: Path):
    """Clean input: exit 0, no alerts written."""
    path = _write(tmp_path / "e.jsonl", [json.dumps({"step": i, "metrics": {"loss": 1.0}})
                                         for i in range(1, 30)])
    result = run_cli("monitor", str(path), "--once", "--alerts", str(tmp_path / "a.jsonl"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.jsonl").read_text() == ""


def test_once_on_a_nan_exits_two_and_writes_the_alert(tmp_path: Path):
    """A critical finding: exit 2, one alert line with the evidence."""
    path = _write(tmp_path / "e.jsonl", ['{"step": 1, "metrics": {"loss": 1.0}}',
                                         '{"step": 2, "metrics": {"loss": "NaN"}}'])
    result = run_cli("monitor", str(path), "--once", "--alerts", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2
    (alert,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {k: alert[k] for k in ("rule", "severity", "action", "metric", "value", "step", "rank")} == {
        "rule": "common.nonfinite_loss", "severity": "critical", "action": "stop",
        "metric": "loss", "value": "NaN", "step": 2, "rank": 0}
    assert "observe-only" in alert["delivery"]


def test_malformed_lines_are_counted_with_file_and_line_not_fatal(tmp_path: Path):
    """Garbage lines are skipped, counted by reason and located; good lines still count."""
    path = _write(tmp_path / "e.jsonl", ['{"step": 1, "metrics": {"loss": 1.0}}', "{oops",
                                         b"\xff\xfe\x00", '{"step": 2, "metrics": {"loss": 1.0}}'])
    result = run_cli("monitor", str(path), "--once")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "skipped 2 x malformed_json" in err
    assert f"{path}:2: malformed_json" in err and f"{path}:3: malformed_json" in err
    assert "Traceback" not in err


def test_missing_file_is_degraded_exit_one(tmp_path: Path):
    """A file that is not there: one clear line, exit 1, never clean."""
    result = run_cli("monitor", str(tmp_path / "nope.jsonl"), "--once")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "no such file" in err and "Traceback" not in err


def test_unknown_rule_pack_is_one_line_exit_one(tmp_path: Path):
    """An unknown pack names the packs that exist."""
    path = _write(tmp_path / "e.jsonl", ['{"step": 1, "metrics": {"loss": 1.0}}'])
    result = run_cli("monitor", str(path), "--once", "--rules", "no_such_pack")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "unknown rule pack 'no_such_pack'" in err and "common" in err
    assert "Traceback" not in err


def test_bad_rule_file_names_file_line_and_field(tmp_path: Path):
    """A mistake in a rule file points at the file, the line and the field."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: x\n    metric: loss\n    condition: loss >> 2\n")
    path = _write(tmp_path / "e.jsonl", ['{"step": 1, "metrics": {"loss": 1.0}}'])
    result = run_cli("monitor", str(path), "--once", "--rules", str(rules))
    err = result.stderr.decode()
    assert result.returncode == 1
    assert f"{rules}:4: condition: rule x: unexpected '>' at column 7" in err


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_unreadable_run_directory_is_refused_with_exit_one():
    """A run directory the monitor cannot read is an error, never a clean verdict.

    Root reads anything, so as root the monitor runs without its read-override capabilities."""
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        locked = base / "run"
        locked.mkdir()
        (locked / "events.rank0.jsonl").write_text('{"step": 1, "metrics": {"loss": 1.0}}\n')
        os.chmod(locked, 0o000)
        result = run_cli("monitor", str(locked), "--once", "--alerts", str(base / "a.jsonl"),
                         prefix=DROP_ROOT_READ)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert "permission denied" in err and "Traceback" not in err
    finally:
        os.chmod(base / "run", 0o755)
        shutil.rmtree(base)


def test_stdin_is_read_to_its_end(tmp_path: Path):
    """`-` reads a pipe until it closes and gives the verdict."""
    data = b'{"step": 1, "metrics": {"loss": 1.0}}\n{"step": 2, "metrics": {"grad_norm": "Infinity"}}\n'
    result = run_cli("monitor", "-", "--alerts", str(tmp_path / "a.jsonl"), input=data)
    assert result.returncode == 2
    assert json.loads((tmp_path / "a.jsonl").read_text())["rule"] == "common.nonfinite_grad_norm"


def test_following_monitor_flags_a_stream_that_goes_silent(tmp_path: Path):
    """A followed file that stops growing: stale(loss, 2s) fires from the monitor's own
    clock, with no further record to carry it."""
    events = tmp_path / "events.jsonl"
    now = time.time()
    events.write_text("".join(json.dumps({"step": s, "time": now, "metrics": {"loss": 1.0}})
                              + "\n" for s in range(1, 4)))
    alerts = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(events), "--rules", "common",
         "--alert", "stale(loss, 2s) -> high: no loss for 2 s", "--alerts", str(alerts), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "no loss for 2 s" not in (
                alerts.read_text() if alerts.exists() else ""):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    fired = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert [(3, "firing")] == [(a["step"], a["state"]) for a in fired
                               if a["rule"].startswith("inline")]
