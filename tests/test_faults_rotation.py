"""Fault injection, rotation: files renamed away while the monitor is down, descheduled or
reading; rotated names that are themselves ``*.jsonl``; copies left by copytruncate. Real
files, real renames, the real CLI as a subprocess, ``kill -9``; each event carries a sequence
number, and ``--record`` must hold every one exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_cli

EVENTS = 20_000
EVERY = 400


class RotatingWriter:
    """Writes sequence-numbered step lines to ``path``, renaming it away every ``every``."""

    def __init__(self, path: Path, style: str, every: int = EVERY) -> None:
        self.path, self.style, self.every = path, style, every
        self.seq = 0
        self.rotations = 0

    def _rotate(self) -> None:
        self.rotations += 1
        folder, name = self.path.parent, self.path.name
        stem = name[:-len(".jsonl")]
        if self.style == "shift":  # logrotate: name.N -> name.N+1, then name -> name.1
            n = self.rotations
            for k in range(n - 1, 0, -1):
                src = folder / f"{name}.{k}"
                if src.exists():
                    os.rename(src, folder / f"{name}.{k + 1}")
            os.rename(self.path, folder / f"{name}.1")
        elif self.style == "dated":  # dateext: name-YYYYMMDDNN
            os.rename(self.path, folder / f"{name}-2026120{self.rotations:04d}")
        elif self.style == "jsonl":  # a rotated name that is itself *.jsonl
            os.rename(self.path, folder / f"{stem}.{self.rotations}.jsonl")
        else:
            raise AssertionError(self.style)

    def write(self, count: int) -> None:
        for _ in range(count):
            if self.seq and self.seq % self.every == 0 and self.rotations < self.seq // self.every:
                self._rotate()  # before the next line: the last file written stays at the path
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": self.seq, "metrics": {"seq": self.seq}}) + "\n")
            self.seq += 1


def _write_fast(writer: RotatingWriter, count: int) -> None:
    """``count`` events, opening the file once per rotation period (the same files)."""
    while count:
        if writer.seq and writer.seq % writer.every == 0 and \
                writer.rotations < writer.seq // writer.every:
            writer._rotate()
        n = min(count, writer.every - writer.seq % writer.every)
        with open(writer.path, "a") as handle:
            handle.write("".join(json.dumps({"step": writer.seq + i, "metrics": {"seq":
                                             writer.seq + i}}) + "\n" for i in range(n)))
        writer.seq += n
        count -= n


def _recorded(record: Path) -> Counter[int]:
    seen: Counter[int] = Counter()
    for line in record.read_text().splitlines():
        seen[json.loads(line)["step"]] += 1
    return seen


def _start(source: Path, record: Path, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(source), "-r", "common",
         "--record", str(record), "--state", str(state), "--quiet", "--poll",
         "--poll-interval", "0.01"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize(("style", "as_dir"), [
    ("shift", False), ("dated", False), ("shift", True), ("dated", True), ("jsonl", True)],
    ids=["file-shift", "file-dated", "run_dir-shift", "run_dir-dated", "run_dir-jsonl"])
def test_rotation_across_a_kill9_restart_loses_nothing_and_repeats_nothing(
        tmp_path: Path, style: str, as_dir: bool) -> None:
    """20,000 numbered events, a rename rotation every 400, the monitor killed with SIGKILL
    half way and restarted after 25 more rotations: every event recorded exactly once."""
    run = tmp_path / "run"
    run.mkdir()
    events = run / "events.rank0.jsonl"
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    writer = RotatingWriter(events, style)
    _write_fast(writer, EVENTS // 2 - 150)  # the current file holds 250 events
    proc = _start(run if as_dir else events, record, state)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if state.exists() and record.exists() and record.stat().st_size > 0:
                break
        writer.write(100)  # a few more, live, then the kill
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _write_fast(writer, EVENTS - writer.seq)  # 25 rotations while the monitor is down
    done = run_cli("monitor", str(run if as_dir else events), "-r", "common", "--once",
                   "--record", str(record), "--state", str(state), "--quiet", timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    seen = _recorded(record)
    # Files rotated away before the monitor first started are not its business, unless the
    # run directory follows their names (*.jsonl) anyway.
    first = 0 if style == "jsonl" else (EVENTS // 2 - 150) // EVERY * EVERY
    assert [] == [s for s in range(first, EVENTS) if seen[s] != 1][:20]
    assert EVENTS - first == len(seen)


def test_rotation_to_a_jsonl_name_in_a_run_directory_is_not_read_twice(tmp_path: Path) -> None:
    """A rank file renamed to ``events.rank0.1.jsonl`` (and a new rank file at the old name)
    while the monitor follows the directory: every event recorded once."""
    run = tmp_path / "run"
    run.mkdir()
    events = run / "events.rank0.jsonl"
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    writer = RotatingWriter(events, "jsonl", every=300)
    proc = _start(run, record, state)
    try:
        for _ in range(10):
            writer.write(100)
            time.sleep(0.15)
        deadline = time.monotonic() + 20  # read to the end before the stop (SIGTERM stops now)
        while time.monotonic() < deadline and (
                not record.exists() or record.read_bytes().count(b"\n") < 1000):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    seen = _recorded(record)
    assert {s: 1 for s in range(1000)} == dict(seen)


def test_two_renames_while_descheduled_read_the_middle_file(tmp_path: Path) -> None:
    """The monitor is stopped (SIGSTOP) while the file is renamed twice: the file between
    the two renames is read too, before the newest one."""
    events = tmp_path / "events.jsonl"
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    writer = RotatingWriter(events, "shift", every=4000)
    writer.write(10)
    proc = _start(events, record, state)
    try:
        deadline = time.monotonic() + 30
        while not (record.exists() and record.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGSTOP)
        _write_fast(writer, 4000 * 2 - 10)  # two renames; a third file is now at the path
        writer.write(10)
        proc.send_signal(signal.SIGCONT)
        time.sleep(2.0)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    seen = _recorded(record)
    assert {s: 1 for s in range(8010)} == dict(seen)


def _copytruncate(path: Path, copy: Path) -> None:
    """What logrotate's copytruncate does: copy the file, then truncate it in place."""
    copy.write_bytes(path.read_bytes())
    os.truncate(path, 0)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_copytruncate_reads_the_rest_from_the_copy(tmp_path: Path, poll: bool) -> None:
    """Lines written after the monitor's last read and before the truncation are read from
    the copy (``events.jsonl.1``), then the truncated file from its start: all once."""
    events = tmp_path / "events.jsonl"
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    seq = 0

    def write(n: int) -> None:
        nonlocal seq
        with open(events, "a") as handle:
            for _ in range(n):
                handle.write(json.dumps({"step": seq, "metrics": {"seq": seq}}) + "\n")
                seq += 1

    write(100)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(events), "-r", "common", "--record",
         str(record), "--state", str(state), "--quiet", *(["--poll"] if poll else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (record.exists() and record.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(5):
            time.sleep(0.6)
            proc.send_signal(signal.SIGSTOP)  # descheduled: lines arrive, then the rotation
            write(200)
            _copytruncate(events, tmp_path / f"events.jsonl.{i + 1}")
            write(50)
            proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert {s: 1 for s in range(seq)} == dict(_recorded(record))


def test_a_truncation_that_loses_unread_lines_is_counted_and_degrades(tmp_path: Path) -> None:
    """A file truncated while the monitor was behind on it, with no copy to read: the lost
    bytes are counted, located, and the verdict is degraded (never clean)."""
    events = tmp_path / "events.jsonl"
    from trainguard.monitor.ingest.sources import FileSource

    events.write_text("".join(json.dumps({"step": s, "metrics": {"loss": 1.0}}) + "\n"
                              for s in range(60_000)))  # several reads: the tail is behind
    source = FileSource(events)
    first = sum(b.count for b in source._tail.read_blocks())
    assert source._tail.behind
    os.truncate(events, 0)
    events.write_text('{"step": 1, "metrics": {"loss": 1.0}}\n')
    assert 1 == sum(b.count for b in source.poll_blocks())
    problems = source.problems()
    source.close()
    assert 0 < first < 60_000
    assert 1 == len(problems) and "bytes not yet read" in problems[0]
