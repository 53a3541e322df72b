"""`monitor --metrics-port`: a real HTTP GET of /metrics while the monitor follows a run."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reach_runs import grpo_metrics
from trainguard import EventWriter

pytest.importorskip("prometheus_client",
                    reason="the prometheus extra (pip install 'trainguard[prometheus]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, want: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
                text = r.read().decode()
        except OSError:
            text = ""
        if want in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{want!r} not in /metrics:\n{text}")


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in:\n{text}")


def test_metrics_endpoint_serves_steps_ages_values_alerts_and_counts(tmp_path: Path):
    """Two ranks at step 30 with a KL alert firing and a skipped line: /metrics says so."""
    run = tmp_path / "run"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run), "-q",
                             "--metrics-port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        writers = [EventWriter(run, rank=r, world_size=2) for r in range(2)]
        for step in range(1, 31):
            for r, w in enumerate(writers):
                w.log_metrics(step, grpo_metrics(step, r, kl_from=20, nan_step=None))
        for w in writers:
            w.close()
        with open(run / "events.rank0.jsonl", "a") as handle:
            handle.write("not json\n")
        text = _scrape(port, 'trainguard_last_step{rank="1"} 30.0')
        text = _scrape(port, 'trainguard_lines_skipped_total{reason="malformed_json"} 1.0')
        assert _value(text, 'trainguard_last_step{rank="0"}') == 30
        assert _value(text, 'trainguard_step_age_seconds{rank="1"}') >= 0
        assert _value(text, 'trainguard_ingest_lag_seconds{rank="0"}') >= 0
        assert _value(text, 'trainguard_metric{metric="kl",rank="0"}') == pytest.approx(1.6)
        assert _value(text, 'trainguard_alerts_firing{rule="grpo.kl_blowup",severity="high"}') == 2
        assert _value(text, "trainguard_events_read_total") == 2 * 30 * 8
        assert _value(text, "trainguard_steps_read_total") == 60
        assert _value(text, "trainguard_up") == 1
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 2, proc.stderr.read() if proc.stderr else ""
    with socket.socket() as s:  # nothing listens there any more (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_a_clear_error(tmp_path: Path):
    """--metrics-port on a port already taken: exit 1, naming the port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "e.jsonl").write_text('{"step": 1, "metrics": {"loss": 1.0}}\n')
        result = run_cli("monitor", str(tmp_path / "e.jsonl"), "--once", "--metrics-port",
                         str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
