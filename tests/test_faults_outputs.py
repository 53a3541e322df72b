"""Fault injection, outputs and state: symlinks and FIFOs planted where the monitor writes, a
full disk (a 64 KiB tmpfs), damaged checkpoints, ``kill -9`` between an alert's delivery and
the ledger's save. Real CLI, real files, real mounts and signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

NAN = json.dumps({"step": 9, "metrics": {"loss": "NaN"}}) + "\n"


def _steps(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"step": s, "metrics": {"loss": 1.0}}) + "\n"
                   for s in range(start, start + n))


def _flat(result: subprocess.CompletedProcess[bytes]) -> str:
    return "".join((result.stdout + result.stderr).decode().split())  # rich wraps anywhere


def test_a_symlink_planted_at_alerts_jsonl_is_not_followed(tmp_path: Path) -> None:
    """``alerts.jsonl`` -> a victim file: the victim is untouched, the monitor says it refused
    the link (degraded) and still prints the alert and its exit code."""
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "alerts.jsonl").symlink_to(victim)
    (run / "events.jsonl").write_text(_steps(3) + NAN)
    result = run_cli("monitor", str(run), "--once", "-r", "common")
    text = _flat(result)
    assert 2 == result.returncode, text
    assert "precious\n" == victim.read_text()
    assert "symboliclink" in text and "nonfinite" in text


def test_a_trainguard_folder_planted_as_a_symlink_is_refused(tmp_path: Path) -> None:
    """``.trainguard`` -> another folder: nothing is written there; the session runs without
    a checkpoint and says so (degraded)."""
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    (other / "state.json").write_text("victim\n")
    (run / ".trainguard").symlink_to(other, target_is_directory=True)
    (run / "events.jsonl").write_text(_steps(3))
    result = run_cli("monitor", str(run), "--once", "-r", "common")
    assert 1 == result.returncode, _flat(result)
    assert ["state.json"] == os.listdir(other)
    assert "victim\n" == (other / "state.json").read_text()
    assert "symboliclink,refused" in _flat(result)


def test_a_symlink_at_the_record_path_is_a_clear_error(tmp_path: Path) -> None:
    """``--record`` pointing at a link: exit 1 with a message, no traceback, target intact."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "record.jsonl").symlink_to(victim)
    (tmp_path / "events.jsonl").write_text(_steps(2))
    result = run_cli("monitor", str(tmp_path / "events.jsonl"), "--once", "--record",
                     str(tmp_path / "record.jsonl"))
    assert (1, "precious\n") == (result.returncode, victim.read_text())
    assert "Traceback" not in result.stderr.decode()
    assert "cannotopentherecord" in _flat(result)


def test_a_fifo_at_alerts_jsonl_never_blocks_the_monitor(tmp_path: Path) -> None:
    """A FIFO at the alerts path (no reader): refused at once, alerts on the console."""
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "alerts.jsonl")
    (run / "events.jsonl").write_text(_steps(3) + NAN)
    result = run_cli("monitor", str(run), "--once", "-r", "common", timeout=30)
    assert 2 == result.returncode
    assert "aFIFO" in _flat(result) and "nonfinite" in _flat(result)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): the disk that fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): ENOSPC "
                    "tests need root or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_degrades_keeps_alerting_and_recovers_when_space_returns(
        tmp_path: Path, tiny_fs: Path) -> None:
    """State and alerts on a full tmpfs: the monitor keeps running, prints the alert on the
    console, says it cannot save; once space is freed the alert reaches the file, once."""
    events = tmp_path / "events.jsonl"
    events.write_text(_steps(5))
    (tiny_fs / "keep").mkdir()
    state, alerts = tiny_fs / "keep" / "state.json", tiny_fs / "alerts.jsonl"
    filler = _fill(tiny_fs)
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(events),
                             "-r", "common", "--state", str(state), "--alerts", str(alerts),
                             "--poll"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        with open(events, "a") as handle:
            handle.write(NAN)
        time.sleep(2.0)
        assert proc.poll() is None  # still running on a full disk
        filler.unlink()
        time.sleep(2.5)  # retried every second
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    text = "".join((out + err).decode().split())
    assert 2 == proc.returncode, text
    assert "nonfinite" in text and "Nospaceleftondevice" in text
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert ["common.nonfinite_loss"] == [a["rule"] for a in lines if a["state"] == "firing"]
    assert json.loads(state.read_text())["version"] == 1


DAMAGED = [
    '{"version": 1, "positions": "x"}',
    '{"version": 1, "positions": [1, 2]}',
    '{"version": 1, "positions": {"P": "x"}}',
    '{"version": 1, "positions": {"P": {"offset": -5, "line": 0, "dev": 1, "ino": 2, '
    '"fp_len": 0, "fp_hash": ""}}}',
    '{"version": 1, "positions": {"P": {"offset": "9", "line": 0, "dev": 1, "ino": 2, '
    '"fp_len": 0, "fp_hash": ""}}}',
    '{"version": 1, "positions": {"P": {"offset": 1e308, "line": 0, "dev": 1, "ino": 2, '
    '"fp_len": 0, "fp_hash": ""}}}',
    '{"version": 1, "record_length": -1}',
    '{"version": 1, "record_length": "x"}',
    '{"version": 1, "alerts": "x"}',
    '{"version": 1, "alerts": {"raised": [[1, 2]]}}',
    '{"version": 1, "alerts": {"raised": "abc"}}',
    '{"version": 1, "alerts": {"firing": [["r", "0", "high"]]}}',
    '{"version": 1, "alerts": {"stops": [[null, 0]]}}',
    '{"version": 1, "alerts": {"firing": [[{"a": 1}, 0, "high"]]}}',
    '[' * 50_000,
    '{"version": 1, "positions": {"P": {"offset": 3, "line": 0, "dev": 1, "ino": 2, '
    '"fp_len": -1, "fp_hash": ""}}}',
]


@pytest.mark.parametrize("damaged", DAMAGED, ids=range(len(DAMAGED)))
def test_a_damaged_state_that_still_parses_is_a_cold_start_with_a_warning(
        tmp_path: Path, damaged: str) -> None:
    """Shapes a state never holds: a warning, the file read from its start, no crash."""
    events = tmp_path / "events.jsonl"
    events.write_text(_steps(4))
    state = tmp_path / "state.json"
    state.write_text(damaged.replace('"P"', json.dumps(str(events))))
    result = run_cli("monitor", str(events), "--once", "-r", "common", "--state", str(state))
    text = _flat(result)
    assert 0 == result.returncode, text
    assert "startingcold" in text and "4eventsin4steps" in text


def test_a_fifo_at_state_json_is_a_cold_start_not_a_hang(tmp_path: Path) -> None:
    """``state.json`` replaced by a FIFO: read without blocking, refused, cold start."""
    events = tmp_path / "events.jsonl"
    events.write_text(_steps(2))
    os.mkfifo(tmp_path / "state.json")
    result = run_cli("monitor", str(events), "--once", "--state", str(tmp_path / "state.json"),
                     timeout=30)
    assert "startingcold" in _flat(result)


@pytest.mark.slow
def test_kill9_during_an_alert_storm_never_delivers_an_alert_twice_nor_loses_one(
        tmp_path: Path) -> None:
    """A rule that fires and resolves every other step, the monitor killed with SIGKILL 25
    times at random moments while it reads: alerts.jsonl holds every alert of a clean run
    exactly once, and the state folder keeps no temporary files."""
    run = tmp_path / "run"
    run.mkdir()
    events = run / "events.jsonl"
    with open(events, "w") as handle:
        for step in range(6000):
            handle.write(json.dumps({"step": step, "metrics": {"storm": float(step % 2 * 2)}})
                         + "\n")
    args = ["monitor", str(run), "-r", "common", "--quiet", "--alert", "storm > 1 -> info: s"]
    rng = random.Random(7)
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, "-m", "trainguard", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = run_cli(*args, "--once", timeout=120)
    assert 0 == final.returncode, final.stderr.decode()
    keys = Counter((a["rule"], a["rank"], a["step"], a["state"])
                   for a in map(json.loads, (run / "alerts.jsonl").read_text().splitlines()))
    assert [] == [k for k, n in keys.items() if n > 1]
    assert 5999 == len(keys)  # 3,000 firing + 2,999 resolved: none lost
    assert [] == [n for n in os.listdir(run / ".trainguard") if n.endswith(".tmp")]


def test_an_alert_journaled_but_not_delivered_is_delivered_once_after_a_restart(
        tmp_path: Path) -> None:
    """The state of a session killed after journaling an alert's intent and before its
    delivery: the restart delivers it to alerts.jsonl once; a second restart adds nothing;
    one already in the file is not written again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(_steps(3))
    first = run_cli("monitor", str(run), "--once", "-r", "common")
    assert 0 == first.returncode
    alert = {"time": 1.0, "rule": "common.nonfinite_loss", "severity": "critical",
             "action": "stop", "metric": "loss", "value": "NaN", "step": 7, "rank": 0,
             "message": "loss is NaN", "state": "firing"}
    journal = run / ".trainguard" / "state.json.journal"
    journal.write_text(json.dumps({"intent": alert}) + "\n"
                       + json.dumps({"intent": {**alert, "step": 8, "rule": "x.y"}}) + "\n")
    with open(run / "alerts.jsonl", "a") as handle:  # delivered just before the kill
        handle.write(json.dumps({**alert, "step": 8, "rule": "x.y"}) + "\n")
    for _ in range(2):
        again = run_cli("monitor", str(run), "--once", "-r", "common")
        assert 2 == again.returncode, _flat(again)  # the journaled critical alert counts
    keys = Counter((a["rule"], a["step"]) for a in
                   map(json.loads, (run / "alerts.jsonl").read_text().splitlines()))
    assert {("common.nonfinite_loss", 7): 1, ("x.y", 8): 1} == dict(keys)
