"""Fault injection, limits: more rank files than descriptors, a pipe burst faster than the
monitor, more files behind than memory should hold. Real processes, pipes and rlimits."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.monitor.ingest.pipe import PipeSource
from trainguard.monitor.ingest.sources import MAX_POLL_BYTES, DirectorySource


def _ulimit(n: int) -> list[str]:
    return ["prlimit", f"--nofile={n}:{n}", "--"]


@pytest.mark.slow
def test_1024_rank_files_under_ulimit_1024_are_all_read_without_a_traceback(
        tmp_path: Path) -> None:
    """``ulimit -n 1024`` (soft and hard), 1,024 rank files, a NaN in rank 1,000: every file
    is read (idle ones closed and reopened), the alert fires, no EMFILE, no traceback."""
    run = tmp_path / "run"
    run.mkdir()
    for rank in range(1024):
        (run / f"events.rank{rank}.jsonl").write_text("".join(
            json.dumps({"step": s, "rank": rank, "metrics": {"loss": 1.0}}) + "\n"
            for s in range(5)))
    with open(run / "events.rank1000.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 5, "rank": 1000, "metrics": {"loss": "NaN"}}) + "\n")
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(run), "--once", "-r", "common", "--report", str(report),
                     prefix=_ulimit(1024), timeout=300)
    err = result.stderr.decode()
    assert 2 == result.returncode, err[-2000:]
    assert "Traceback" not in err and "Too many open files" not in err
    data = json.loads(report.read_text())
    assert (5121, []) == (data["events"], data["problems"])


def test_a_directory_closes_idle_files_past_its_budget_and_reopens_them_on_change(
        tmp_path: Path) -> None:
    """With room for 16 open files, 40 rank files: at most 16 held open; a file appended to
    while closed is reopened and read on from where it was; one renamed away while closed is
    found under its rotated name and read to its end first."""
    for rank in range(40):
        (tmp_path / f"r{rank}.jsonl").write_text(f'{{"step": 0, "rank": {rank}}}\n')
    source = DirectorySource(tmp_path)
    source.max_open = 16
    source._make_room()
    assert 40 == sum(b.count for b in source.poll_blocks())
    assert 16 >= sum(t.is_open for t in source._tails.values())
    closed = [p for p, t in source._tails.items() if not t.is_open]
    assert closed
    with open(closed[0], "a") as handle:
        handle.write('{"step": 1}\n')
    with open(closed[1], "a") as handle:
        handle.write('{"step": 1}\n')
    os.rename(closed[1], closed[1] + ".1")  # rotated while closed
    Path(closed[1]).write_text('{"step": 2}\n')
    lines = [(b.stream, b.first, line) for b in source.poll_blocks() for line in b.lines]
    source.close()
    assert sorted([(closed[0], 2, b'{"step": 1}'), (closed[1], 2, b'{"step": 1}'),
                   (closed[1], 1, b'{"step": 2}')]) == sorted(lines)


def test_a_directory_poll_holds_a_bounded_number_of_bytes_however_many_files_are_behind(
        tmp_path: Path) -> None:
    """48 files of 1 MiB each behind: each poll returns at most MAX_POLL_BYTES plus one read,
    and the polls together return every line once."""
    line = json.dumps({"step": 1, "name": "loss", "value": 1.0}).encode() + b"\n"
    per_file = (1 << 20) // len(line)
    for rank in range(48):
        (tmp_path / f"r{rank}.jsonl").write_bytes(line * per_file)
    source = DirectorySource(tmp_path)
    total, biggest = 0, 0
    for _ in range(20):
        blocks = source.poll_blocks()
        size = sum(len(b.raw or b"") for b in blocks)
        biggest = max(biggest, size)
        total += sum(b.count for b in blocks)
    source.close()
    assert 48 * per_file == total
    assert biggest <= MAX_POLL_BYTES + (1 << 20)


def test_a_pipe_burst_waits_in_a_bounded_queue_and_every_line_arrives_in_order() -> None:
    """8 MiB written into a pipe while the monitor does not read: the reader holds at most
    its bound (then the writer blocks: backpressure, counted); every line arrives, in order."""
    read_fd, write_fd = os.pipe()
    source = PipeSource(read_fd, "<pipe>", max_queued_bytes=1 << 20)
    lines = [b'{"step": %d, "name": "loss", "value": 1.0}' % i for i in range(200_000)]
    writer = threading.Thread(target=lambda: (os.write(write_fd, b"\n".join(lines) + b"\n"),
                                              os.close(write_fd)))
    writer.start()
    time.sleep(1.0)
    held = source._queued
    got: list[bytes] = []
    while not source.exhausted:
        got += [line.data for line in source.poll()]
        time.sleep(0.01)
    writer.join(10)
    os.close(read_fd)
    assert held <= (1 << 20) + (1 << 16)
    assert source.backpressure_waits > 0
    assert lines == got
