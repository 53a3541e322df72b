"""`trainguard monitor` ingest options end to end through the real CLI: --report, --tee,
TRAINGUARD_METRICS_PATH, --from-end, and a blind source making the verdict degraded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DROP_ROOT_READ, run_cli

GOOD = b'{"step": 1, "metrics": {"loss": 1.0}}\n'


def test_report_counts_lines_events_and_skips_per_source(run_dir: Path, tmp_path: Path):
    """--report holds per-stream lines and skips by reason with a located example."""
    (run_dir / "rank0.jsonl").write_bytes(GOOD + b"x" * 200 + b"\n" + b'{"step": 2, "metrics": {"loss": 1}}\n')
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(run_dir), "--once", "--report", str(report))
    assert 0 == result.returncode, result.stderr
    data = json.loads(report.read_text())
    stream = data["streams"][str(run_dir / "rank0.jsonl")]
    assert (3, "clean", 2, {"malformed_json": 1}) == (stream["lines"], data["status"],
                                                      data["events"], data["parse_skips"])
    assert 2 == data["parse_skip_examples"][0]["line"]
    assert f"{run_dir / 'rank0.jsonl'}: 3 lines" in result.stderr.decode()


def test_unreadable_file_in_run_dir_makes_the_verdict_degraded(run_dir: Path):
    """chmod 000 on a rank file: loud DEGRADED and exit 1, never clean."""
    (run_dir / "rank0.jsonl").write_bytes(GOOD)
    blocked = run_dir / "rank1.jsonl"
    blocked.write_bytes(GOOD)
    blocked.chmod(0)
    result = run_cli("monitor", str(run_dir), "--once", prefix=DROP_ROOT_READ)
    assert 1 == result.returncode
    assert "DEGRADED" in result.stderr.decode() and "rank1.jsonl" in result.stderr.decode()


def test_unreadable_run_dir_exits_one(run_dir: Path):
    """chmod 000 on the run directory: exit 1 with a clear message."""
    run_dir.chmod(0)
    try:
        result = run_cli("monitor", str(run_dir), "--once", prefix=DROP_ROOT_READ)
    finally:
        run_dir.chmod(0o755)
    assert 1 == result.returncode
    assert "permission denied" in result.stderr.decode()


def test_tee_passes_stdin_through_unchanged_and_exits_with_the_verdict():
    """--tee copies every line (garbage too) to stdout; pipe close ends with the verdict."""
    data = GOOD + b"not json \xff\r\n" + b'{"step": 2, "metrics": {"loss": "NaN"}}\n'
    result = run_cli("monitor", "-", "--tee", input=data)
    assert (2, data) == (result.returncode, result.stdout)


def test_no_tee_keeps_stdout_empty():
    """--no-tee: the monitor prints nothing on stdout."""
    result = run_cli("monitor", "-", "--no-tee", input=GOOD)
    assert (0, b"") == (result.returncode, result.stdout)


def test_metrics_path_env_names_the_source(tmp_path: Path):
    """With no SOURCE, TRAINGUARD_METRICS_PATH is followed."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"step": 3, "metrics": {"loss": "NaN"}}\n')
    env = dict(os.environ, TRAINGUARD_METRICS_PATH=str(path))
    result = subprocess.run([sys.executable, "-m", "trainguard", "monitor", "--once"],
                            capture_output=True, env=env, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert 2 == result.returncode, result.stderr


def test_record_holds_normalized_events(tmp_path: Path):
    """--record writes the evaluated step records, renamed by the field map."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"step": 1, "name": "train/loss", "value": 0.5}\n'
                     b'{"step": 1, "name": "gn", "value": 2}\n')
    record = tmp_path / "rec.jsonl"
    result = run_cli("monitor", str(path), "--once", "--record", str(record),
                     "--field-map", "train/loss=loss")
    assert 0 == result.returncode, result.stderr
    assert [{"step": 1, "metrics": {"loss": 0.5, "gn": 2.0}}] == [
        {k: v for k, v in json.loads(x).items() if k != "time"}
        for x in record.read_text().splitlines()]


def test_a_line_without_end_on_stdin_is_cut_into_bounded_pieces_and_reading_goes_on():
    """3 MiB of progress bar with no newline, then a NaN loss: the monitor reads on and fires."""
    data = b"\r 42%|####" * (3 * (1 << 20) // 10) + b'\n{"step": 1, "metrics": {"loss": NaN}}\n'
    result = run_cli("monitor", "-", "--no-tee", "--rules", "common", "-q", input=data)
    assert 2 == result.returncode, result.stderr.decode()
