"""`trainguard check` end to end: a line per run, the worst exit code, --json, stateless, and
the same alerts as `monitor --once` on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reach_runs import NAN_STEP, grpo_run


def _key(alert: dict) -> tuple:
    return (alert["rule"], alert["rank"], alert["step"], alert["state"], str(alert["value"]),
            alert["message"])


def test_check_prints_a_line_per_run_and_exits_with_the_worst(tmp_path: Path):
    """A healthy run and a broken one: one verdict line each; exit 2 (the broken one)."""
    good = grpo_run(tmp_path / "good", steps=60, kl_from=None, nan_step=None)
    bad = grpo_run(tmp_path / "bad")
    result = run_cli("check", str(good), str(bad))
    lines = [ln for ln in result.stdout.decode().splitlines() if not ln.startswith("  ")]
    assert result.returncode == 2, result.stderr
    assert [ln.split(":")[0] for ln in lines] == [str(good), str(bad)]
    assert "CLEAN exit 0" in lines[0] and "ALERT exit 2" in lines[1]
    assert f"step {NAN_STEP}" in result.stdout.decode()


def test_check_json_lists_each_run_with_its_alerts(tmp_path: Path):
    """--json: a list of runs, each with status, exit code, trainer and alerts."""
    bad = grpo_run(tmp_path / "bad")
    result = run_cli("check", str(bad), "--json")
    runs = json.loads(result.stdout)
    assert [(r["run"], r["status"], r["exit_code"], r["trainer"]) for r in runs] == [
        (str(bad), "alert", 2, "grpo")]
    rules = {a["rule"] for a in runs[0]["alerts"]}
    assert {"grpo.kl_blowup", "common.nonfinite_loss"} <= rules


def test_check_neither_reads_nor_writes_the_follow_checkpoint(tmp_path: Path):
    """A run a follower already read to its end: check still reads it all and leaves the
    follower's state and alerts file byte for byte as they were."""
    run = grpo_run(tmp_path / "run")
    first = run_cli("monitor", str(run), "--once", "-q")
    assert first.returncode == 2
    state = (run / ".trainguard" / "state.json").read_bytes()
    alerts = (run / "alerts.jsonl").read_bytes()
    result = run_cli("check", str(run), "--json")
    (verdict,) = json.loads(result.stdout)
    assert verdict["events"] >= 2 * 300 * 8  # all of it again, not resumed at the end
    assert (run / ".trainguard" / "state.json").read_bytes() == state
    assert (run / "alerts.jsonl").read_bytes() == alerts


def test_check_raises_the_alerts_monitor_once_raises(tmp_path: Path):
    """Same files, same rules: the alerts of check --json equal monitor --once's alerts file."""
    run = grpo_run(tmp_path / "run")
    alerts_file = tmp_path / "once.jsonl"
    once = run_cli("monitor", str(run), "--once", "-q", "--alerts", str(alerts_file),
                   "--state", str(tmp_path / "state.json"))
    check = run_cli("check", str(run), "--json")
    expected = [_key(json.loads(ln)) for ln in alerts_file.read_text().splitlines()]
    (verdict,) = json.loads(check.stdout)
    assert (once.returncode, check.returncode) == (2, 2)
    assert expected and [_key(a) for a in verdict["alerts"]] == expected


def test_check_of_a_missing_run_exits_one_with_a_message(tmp_path: Path):
    """A run that cannot be read: its line says why, and the exit is 1 when nothing alerted."""
    good = grpo_run(tmp_path / "good", steps=30, kl_from=None, nan_step=None)
    result = run_cli("check", str(good), str(tmp_path / "nope.jsonl"))
    assert result.returncode == 1
    assert "nope.jsonl" in result.stderr.decode()


def test_check_report_writes_the_report_of_its_runs(tmp_path: Path):
    """--report PATH.md: the report of the checked runs, alongside the verdict lines."""
    bad = grpo_run(tmp_path / "bad")
    out = tmp_path / "r.md"
    result = run_cli("check", str(bad), "--report", str(out))
    assert result.returncode == 2
    text = out.read_text()
    assert "grpo.kl_blowup" in text and "**ALERT**" in text


@pytest.mark.parametrize("command", ["check", "report", "diff"])
def test_help_of_the_run_commands_has_examples_and_exit_codes(command: str):
    """--help of check, report and diff renders whole, with examples and exit codes."""
    result = run_cli(command, "--help")
    text = result.stdout.decode()
    assert (0, b"") == (result.returncode, result.stderr)
    assert "Example" in text and "Exit codes" in text
