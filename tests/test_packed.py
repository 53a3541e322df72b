"""Rotated files compressed by logrotate (``compress``, with and without ``delaycompress``): the
rest of a file the monitor had not read when it went down, fell behind or closed it idle is
read from its ``.gz`` (matched by content: the plain file is gone, the copy has a new inode),
exactly once; where no copy can be told safely to be it, the loss is said (file, from where),
never guessed. Real files, real gzip, rotated the way logrotate does it."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainguard.monitor.ingest.sources import DirectorySource, FileSource
from trainguard.monitor.ingest.tail import FileTail


def _line(seq: int) -> str:
    return json.dumps({"step": seq, "metrics": {"seq": seq, "loss": 1.0}}) + "\n"


def _append(path: Path, first: int, count: int) -> int:
    with open(path, "a") as handle:
        handle.write("".join(_line(first + i) for i in range(count)))
    return first + count


def _gzip(plain: Path, packed: Path) -> None:
    """What logrotate's ``compresscmd gzip`` does: the copy keeps the file's mtime; the
    plain file goes."""
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    st = plain.stat()
    os.utime(packed, ns=(st.st_atime_ns, st.st_mtime_ns))
    plain.unlink()


def _logrotate(path: Path, *, delaycompress: bool, rotated: str = "{name}.{n}") -> None:
    """One logrotate run with ``compress`` (``rotate 9``, ``create``): the numbered copies
    shift up, the file becomes number 1 (compressed at once, or the run after with
    ``delaycompress``) and a new empty file takes its name."""
    def name(n: int) -> Path:
        stem = path.name[:-len(".jsonl")]
        return path.with_name(rotated.format(name=path.name, stem=stem, n=n))
    for n in range(9, 0, -1):
        if name(n).with_name(name(n).name + ".gz").exists():
            os.rename(name(n).with_name(name(n).name + ".gz"),
                      name(n + 1).with_name(name(n + 1).name + ".gz"))
    if name(1).exists():  # delaycompress: last run's copy, compressed now
        _gzip(name(1), name(2).with_name(name(2).name + ".gz"))
    os.rename(path, name(1))
    if not delaycompress:
        _gzip(name(1), name(1).with_name(name(1).name + ".gz"))
    path.touch()


def _seqs(lines: list[Any]) -> list[int]:
    return [json.loads(line.data)["step"] for line in lines]


def _drain(source: FileSource | DirectorySource | FileTail) -> list[int]:
    """Everything the source hands out until it has nothing more."""
    got: list[int] = []
    for _ in range(100):
        lines = source.read() if isinstance(source, FileTail) else source.poll()
        if not lines:
            return got
        got += _seqs(lines)
    raise AssertionError("the source never ran dry")


@pytest.mark.parametrize("delaycompress", [False, True])
@pytest.mark.parametrize("rotations", [1, 2])
def test_a_restart_reads_the_rest_of_a_rotated_file_from_its_gz_exactly_once(
        tmp_path: Path, delaycompress: bool, rotations: int):
    """Down while the file was rotated once or twice and compressed: after the restart the
    unread rest of the checkpointed file (from its .gz, or from the plain copy while
    delaycompress keeps one), the files between, and the new file are read, each line once."""
    path = tmp_path / "events.jsonl"
    seq = _append(path, 0, 5)
    source = FileSource(path)
    assert list(range(5)) == _drain(source)
    saved = source.positions()
    source.close()
    seq = _append(path, seq, 7)  # written, not read: the monitor is down
    for _ in range(rotations):
        _logrotate(path, delaycompress=delaycompress)
        seq = _append(path, seq, 6)
    if not delaycompress:
        assert not any(p.name.endswith(".1") for p in tmp_path.iterdir())
    restarted = FileSource(path, positions=saved)
    assert (list(range(5, seq)), []) == (_drain(restarted), restarted.problems())
    restarted.close()


@pytest.mark.parametrize("delaycompress", [False, True])
def test_a_live_rotation_with_compress_reads_nothing_twice(tmp_path: Path, delaycompress: bool):
    """Seen live, the old file is read to its end through its descriptor; its compressed copy,
    which starts like it, is not read again."""
    path = tmp_path / "events.jsonl"
    source = FileSource(path)
    seq = _append(path, 0, 8)
    got = _drain(source)
    for _ in range(3):
        seq = _append(path, seq, 4)
        _logrotate(path, delaycompress=delaycompress)
        got += _drain(source)
        seq = _append(path, seq, 3)
        got += _drain(source)
    assert (list(range(seq)), []) == (got, source.problems())
    source.close()


def test_files_rotated_and_compressed_while_the_monitor_was_behind_are_read(tmp_path: Path):
    """Two rotations (compressed at once) between two reads: the rest of the open file, the
    file in between (only in its .gz now) and the new one, in order, each once."""
    path = tmp_path / "events.jsonl"
    source = FileSource(path)
    seq = _append(path, 0, 6)
    got = _drain(source)
    seq = _append(path, seq, 5)
    _logrotate(path, delaycompress=False)
    seq = _append(path, seq, 5)  # the file in between
    _logrotate(path, delaycompress=False)
    seq = _append(path, seq, 4)
    got += _drain(source)
    assert (list(range(seq)), []) == (got, source.problems())
    source.close()


def test_an_idle_closed_file_compressed_meanwhile_is_read_on_from_its_gz(tmp_path: Path):
    """A tail that closed its idle file (too many files open) finds it again in the .gz."""
    path = tmp_path / "events.jsonl"
    tail = FileTail(str(path))
    seq = _append(path, 0, 5)
    got = _drain(tail)
    tail.suspend()
    assert not tail.is_open
    seq = _append(path, seq, 5)
    _logrotate(path, delaycompress=False)
    seq = _append(path, seq, 2)
    got += _drain(tail)
    assert (list(range(seq)), None) == (got, tail.losses)
    tail.close()


def test_a_run_directory_restart_resumes_a_rank_file_from_its_gz(tmp_path: Path):
    """The same through a run directory: ``events.rank0.jsonl.1.gz`` is no rank file of its
    own, but holds the rest of rank 0's checkpointed file."""
    run = tmp_path / "run"
    run.mkdir()
    ranks = [run / f"events.rank{r}.jsonl" for r in (0, 1)]
    seqs = [_append(p, 100 * r, 4) for r, p in enumerate(ranks)]
    source = DirectorySource(run)
    assert sorted(_drain(source)) == [0, 1, 2, 3, 100, 101, 102, 103]
    saved = source.positions()
    source.close()
    seqs[0] = _append(ranks[0], seqs[0], 6)
    _logrotate(ranks[0], delaycompress=False)
    seqs[0] = _append(ranks[0], seqs[0], 3)
    restarted = DirectorySource(run, positions=saved)
    assert (list(range(4, seqs[0])), []) == (sorted(_drain(restarted)), restarted.problems())
    restarted.close()


def _down_then_rotated(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]], int]:
    """A file read to line 5, then written on and rotated with compress while down."""
    path = tmp_path / "events.jsonl"
    seq = _append(path, 0, 5)
    source = FileSource(path)
    _drain(source)
    saved = source.positions()
    source.close()
    seq = _append(path, seq, 7)
    _logrotate(path, delaycompress=False)
    return path, saved, _append(path, seq, 3)


def test_two_compressed_copies_that_start_alike_are_not_guessed_at(tmp_path: Path):
    """The checkpointed file's rest could be in either of two copies: neither is read, the
    problem names both and the line after which the file is lost; the new file is read."""
    path, saved, seq = _down_then_rotated(tmp_path)
    shutil.copy(tmp_path / "events.jsonl.1.gz", tmp_path / "events.jsonl-20261201.gz")
    source = FileSource(path, positions=saved)
    got = _drain(source)
    (problem,) = source.problems()
    assert list(range(12, seq)) == got
    assert ("events.jsonl.1.gz" in problem and "events.jsonl-20261201.gz" in problem
            and "after line 5" in problem and "lost" in problem), problem
    source.close()


def test_a_copy_in_a_format_that_cannot_be_read_is_said_to_be_lost(tmp_path: Path):
    """zstd (not in the standard library): the problem says where the rest may be and why it
    was not read."""
    path, saved, seq = _down_then_rotated(tmp_path)
    os.rename(tmp_path / "events.jsonl.1.gz", tmp_path / "events.jsonl.1.zst")
    source = FileSource(path, positions=saved)
    got = _drain(source)
    (problem,) = source.problems()
    assert list(range(12, seq)) == got
    assert "events.jsonl.1.zst" in problem and "cannot read" in problem, problem
    source.close()


def test_a_gz_cut_short_yields_what_it_holds_and_says_the_rest_is_lost(tmp_path: Path):
    """A copy truncated mid-stream: the lines before the cut are read, then the loss is said
    and the new file is read."""
    path = tmp_path / "events.jsonl"
    seq = _append(path, 0, 5)
    source = FileSource(path)
    _drain(source)
    saved = source.positions()
    source.close()
    seq = _append(path, seq, 3000)  # enough that a cut copy still holds whole lines
    _logrotate(path, delaycompress=False)
    packed = tmp_path / "events.jsonl.1.gz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    after = _append(path, seq, 3)
    source = FileSource(path, positions=saved)
    got = _drain(source)
    (problem,) = source.problems()
    cut = got.index(seq)  # where the new file starts
    assert (got[:cut], got[cut:]) == (list(range(5, 5 + cut)), list(range(seq, after)))
    assert 5 + cut < seq and "cut short" in problem, (cut, problem)
    source.close()


def _start_monitor(run: Path, record: Path, state: Path) -> subprocess.Popen[bytes]:
    """A monitor process whose output (and, if it is made to abort, its threads' stacks:
    PYTHONFAULTHANDLER) goes to ``monitor.log`` beside the record."""
    log = open(record.with_name("monitor.log"), "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "trainguard", "monitor", str(run), "-r", "common",
             "--record", str(record), "--state", str(state), "--quiet", "--poll",
             "--poll-interval", "0.01"], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    finally:
        log.close()


def _stop_monitor(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM and wait; a monitor that does not end is aborted and the test fails with the
    stacks it printed (where it hung), not a bare timeout."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(30)
        raise AssertionError("the monitor did not end on SIGTERM:\n"
                             + log.read_text(errors="replace")[-6000:]) from None


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _recorded(record: Path) -> Counter[int]:
    if not record.exists():
        return Counter()
    return Counter(json.loads(line)["step"] for line in record.read_text().splitlines())


def test_the_cli_killed_then_restarted_across_a_compressing_rotation_records_each_event_once(
        tmp_path: Path):
    """A real ``trainguard monitor`` process, kill -9 once its state is saved; the rank file is
    written on, rotated and compressed while it is down; the restarted process records the
    rest (from the .gz) and the new file: every step once in ``--record``, nothing degraded."""
    run = tmp_path / "run"
    run.mkdir()
    rank = run / "events.rank0.jsonl"
    record, state = tmp_path / "record.jsonl", tmp_path / "state.json"
    seq = _append(rank, 0, 50)
    proc = _start_monitor(run, record, state)
    try:
        def saved_all() -> bool:
            try:
                positions = json.loads(state.read_text())["positions"]
            except (OSError, ValueError, KeyError):
                return False
            return positions.get(str(rank), {}).get("offset") == rank.stat().st_size
        _wait_for(saved_all, "the checkpoint of the first 50 steps")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    seq = _append(rank, seq, 30)  # never read before the kill
    _logrotate(rank, delaycompress=False)
    seq = _append(rank, seq, 20)
    assert not (run / "events.rank0.jsonl.1").exists()
    proc = _start_monitor(run, record, state)
    try:
        _wait_for(lambda: len(_recorded(record)) >= seq, "every step in the record")
        time.sleep(0.5)  # a double would come in the polls right after
    finally:
        _stop_monitor(proc, tmp_path / "monitor.log")
    seen = _recorded(record)
    assert ([], list(range(seq))) == (sorted(k for k, n in seen.items() if n > 1), sorted(seen))
