"""A garbled control file never raises into, or blocks, the trainer's ``should_stop`` (writer
and TRL callback) or the monitor's stale-control check; a full disk under the control file
degrades the stop (said, retried) instead of ending the monitor. Real files, FIFOs, a tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import run_cli
from trainguard import EventWriter
from trainguard.control import read_stop_request

GARBLED = {
    "infinity_step": b'{"version": 1, "command": "stop", "step": Infinity, "time": 1e18}',
    "nan_time": b'{"version": 1, "command": "stop", "step": 3, "time": NaN}',
    "huge_step": b'{"version": 1, "command": "stop", "step": ' + b"9" * 400 + b', "time": 1e18}',
    "huge_time": b'{"version": 1, "command": "stop", "step": 3, "time": ' + b"9" * 400 + b"}",
    "deep": b"[" * 65536,
    "deep_object": b'{"a":' * 5000,
    "bool_step": b'{"version": 1, "command": "stop", "step": true, "time": 1e18}',
    "long": b'{"command": "stop", "reason": "' + b"x" * (1 << 20) + b'"}',
    "binary": bytes(range(256)) * 10,
}


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging the suite if the code under test blocks."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("blocked")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _garble(path: Path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(GARBLED[kind])


@pytest.mark.parametrize("kind", [*GARBLED, "fifo"])
def test_should_stop_never_raises_or_blocks_on_a_garbled_control_file(run_dir: Path, kind: str):
    """Infinity, 400-digit numbers, 65,536 brackets, a FIFO...: no request, no exception."""
    with _deadline(10), EventWriter(run_dir, rank=0, world_size=1) as writer:
        _garble(run_dir / "control.json", kind)
        writer.log_metrics(1, {"loss": 1.0})
        assert writer.should_stop is False
        assert read_stop_request(run_dir / "control.json") is None


@pytest.mark.parametrize("kind", ["infinity_step", "huge_time", "deep", "fifo"])
def test_trl_callback_step_end_never_raises_or_blocks_on_a_garbled_control_file(
        tmp_path: Path, kind: str):
    """The callback's on_step_end goes on training whatever control.json holds."""
    pytest.importorskip("transformers")
    from trainguard.emitters.trl import TrainGuardCallback

    run_dir = tmp_path / "run"
    callback = TrainGuardCallback(run_dir)
    args = SimpleNamespace(output_dir=str(tmp_path), process_index=0, world_size=1)
    state = SimpleNamespace(global_step=1, max_steps=10)
    control = SimpleNamespace(should_save=False, should_training_stop=False, should_log=False)
    with _deadline(10):
        callback.on_train_begin(args, state, control)
        _garble(run_dir / "control.json", kind)
        callback.on_log(args, state, control, logs={"loss": 1.0})
        callback.on_step_end(args, state, control)
        callback.on_train_end(args, state, control)
    assert control.should_training_stop is False and callback.stopped_at_step is None


@pytest.mark.parametrize("kind", ["infinity_step", "huge_step", "deep", "fifo"])
def test_monitor_stale_control_check_survives_a_garbled_control_file(run_dir: Path, kind: str):
    """`trainguard monitor RUN --stop --once` ends with its verdict, no traceback, no hang."""
    with EventWriter(run_dir, rank=0, world_size=1) as writer:
        writer.log_metrics(1, {"loss": 1.0})
    _garble(run_dir / "control.json", kind)
    result = run_cli("monitor", str(run_dir), "--once", "--stop", timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stdout + result.stderr


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last byte."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        with open(mount / "filler", "wb", buffering=0) as handle:
            for size in (4096, 1):
                try:
                    while True:
                        handle.write(b"x" * size)
                except OSError:
                    pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_control_file_degrades_the_stop_instead_of_ending_the_monitor(
        run_dir: Path, full_disk: Path, tmp_path: Path):
    """ENOSPC on the control file: the monitor still alerts, says the stop was NOT written and
    that it retries, and ends with its verdict (the alert's 2), not a traceback."""
    (run_dir / "events.jsonl").write_text(json.dumps({"step": 1, "metrics": {"loss": "NaN"}})
                                          + "\n")
    result = run_cli("monitor", str(run_dir), "--once", "--control",
                     str(full_disk / "control.json"), "--report", str(tmp_path / "r.json"),
                     timeout=60)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 2, out
    assert "Traceback" not in out
    assert "NOT written" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("not written" in p for p in report["problems"])
    assert not (full_disk / "control.json").exists()


def test_a_stop_written_on_a_retry_once_space_is_back(run_dir: Path, full_disk: Path):
    """Following a run: once space is freed, the next poll writes the control file."""
    (run_dir / "events.jsonl").write_text(json.dumps({"step": 1, "metrics": {"loss": "NaN"}})
                                          + "\n")
    proc = subprocess.Popen(
        [*run_cli_prefix(), "monitor", str(run_dir), "--control", str(full_disk / "control.json"),
         "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        assert not (full_disk / "control.json").exists()
        (full_disk / "filler").unlink()
        for _ in range(100):
            if (full_disk / "control.json").exists():
                break
            time.sleep(0.1)
        request = read_stop_request(full_disk / "control.json")
        assert request is not None and request.rule == "common.nonfinite_loss"
    finally:
        proc.terminate()
        proc.wait(30)


def run_cli_prefix() -> list[str]:
    """The command line that `run_cli` runs, for a process the test keeps running."""
    import sys
    return [sys.executable, "-m", "trainguard"]
