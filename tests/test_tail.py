"""FileTail and the file/directory sources on real files: the awkward cases one by one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trainguard.monitor.checkpoint import AlertLedger, load_state
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.ingest import tail as tail_module
from trainguard.monitor.ingest.sources import DirectorySource, FileSource
from trainguard.monitor.ingest.tail import FileTail
from trainguard.monitor.ingest.watch import ChangeWatcher


def _lines(tail: FileTail) -> list[bytes]:
    return [data for _, data in tail.read_lines()]


def test_partial_line_is_held_until_its_newline(tmp_path: Path):
    """A line without its newline is not handed out; it is, whole, once the newline arrives."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1}\n{"ste')
    tail = FileTail(str(path))
    assert [b'{"step": 1}'] == _lines(tail)
    with open(path, "ab") as handle:
        handle.write(b'p": 2}\n')
    assert [b'{"step": 2}'] == _lines(tail)
    tail.close()


def test_partial_line_is_read_once_across_a_restart(tmp_path: Path):
    """The checkpointed position stops before a partial line, so a restart reads it whole."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1}\n{"ste')
    tail = FileTail(str(path))
    assert [b'{"step": 1}'] == _lines(tail)
    position = tail.position()
    tail.close()
    with open(path, "ab") as handle:
        handle.write(b'p": 2}\n')
    again = FileTail(str(path), position=position)
    assert [(2, b'{"step": 2}')] == again.read_lines()
    again.close()


def test_truncate_and_rewrite_to_the_same_size_is_read_again(tmp_path: Path):
    """Truncated and rewritten to the size last seen, between two reads: the new lines come.

    Found by the model test: ``stat`` shows the same size (and, within one tick, the same
    mtime); only the head of the file tells the new content from the old.
    """
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 2}\n{"step": 3}\n')
    tail = FileTail(str(path))
    assert [b'{"step": 2}', b'{"step": 3}'] == _lines(tail)
    with open(path, "r+b") as handle:  # one open: truncate, then the same number of bytes
        handle.truncate(0)
        handle.write(b'{"step": 5}\n{"step": 6}\n')
    assert ([(1, b'{"step": 5}'), (2, b'{"step": 6}')], 1) == (tail.read_lines(),
                                                              tail.stats.skips["rewritten"])
    tail.close()


def test_copytruncate_nul_hole_is_dropped_and_counted(tmp_path: Path):
    """A non-append writer after copytruncate leaves NULs; the next line still parses clean."""
    path = tmp_path / "a.jsonl"
    writer = open(path, "wb")  # noqa: SIM115 - plays a writer that keeps its offset
    writer.write(b'{"step": 1}\n' * 3)
    writer.flush()
    tail = FileTail(str(path))
    assert 3 == len(_lines(tail))
    shutil.copyfile(path, tmp_path / "a.jsonl.1")
    os.truncate(path, 0)
    writer.write(b'{"step": 4}\n')  # lands at the old offset: a hole of NULs before it
    writer.close()
    assert [b'{"step": 4}'] == _lines(tail)
    assert 1 == tail.stats.skips["nul_bytes"]
    assert 1 == tail.stats.truncations
    tail.close()


def test_over_long_line_is_skipped_counted_and_memory_bounded(tmp_path: Path):
    """A line over the bound is dropped (never buffered whole); the next line is read."""
    path = tmp_path / "a.jsonl"
    tail = FileTail(str(path), max_line_bytes=1000)
    with open(path, "wb") as handle:
        handle.write(b"x" * 5000)
        handle.flush()
        assert [] == _lines(tail)
        assert len(tail._partial) <= 1000
        handle.write(b"y" * 5000 + b'\n{"step": 2}\n')
    assert [(2, b'{"step": 2}')] == tail.read_lines()
    assert 1 == tail.stats.skips["line_too_long"]
    assert (1, "line_too_long") == tail.stats.examples[0][:2]
    tail.close()


def test_crlf_and_an_over_long_line_in_one_chunk_keep_their_line_numbers(tmp_path: Path):
    """CRLF endings are stripped; an over-long line among short ones is skipped, numbered."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1}\r\n' + b"z" * 50 + b'\n{"step": 3}\n')
    tail = FileTail(str(path), max_line_bytes=20)
    assert ([(1, b'{"step": 1}'), (3, b'{"step": 3}')], [(2, "line_too_long", "50 bytes")]) == (
        tail.read_lines(), tail.stats.examples)
    tail.close()


def test_crlf_split_across_two_reads_is_still_stripped(tmp_path: Path):
    """A CR read with the partial line and its LF read later: the line comes without the CR."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1}\r')
    tail = FileTail(str(path))
    assert [] == tail.read_lines()
    with open(path, "ab") as handle:
        handle.write(b'\n{"step": 2}\n')
    assert [(1, b'{"step": 1}'), (2, b'{"step": 2}')] == tail.read_lines()
    tail.close()


def test_blocks_read_in_chunks_that_cut_lines_carry_their_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Reads that end inside a line, an over-long line dropped: each block's ``raw`` is its
    lines' bytes as read (a line begun in the previous read included), newlines and all."""
    monkeypatch.setattr(tail_module, "_READ_CHUNK", 10)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"s": 1}\n' + b"x" * 25 + b'\n{}\n{"s": 3}\n')
    tail = FileTail(str(path), max_line_bytes=12)
    blocks = []
    while chunk := tail.read_blocks():
        blocks += chunk
    tail.close()
    assert [(1, b'{"s": 1}\n'), (3, b"{}\n"), (4, b'{"s": 3}\n')] == [
        (block.first, block.raw) for block in blocks]


# Runs of plain bytes (up to twice the length bound), newlines, now and then a CR or a NUL
# (either sends a whole chunk down the slow path).
_run = st.text(alphabet="a{}", max_size=24).map(str.encode)
_write = st.lists(st.one_of(_run, _run, st.just(b"\n"), st.just(b"\n"),
                            st.sampled_from([b"\r\n", b"\r", b"\x00"])),
                  max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_write, st.booleans()), max_size=8), st.integers(3, 40))
@example([(b"a" * 10, True), (b"abc\nde\n", True)], 7)  # the first line over the bound
@example([(b"\n" + b"a" * 13 + b"\n", True)], 15)  # a line over it inside one chunk
def test_a_block_raw_is_exactly_its_lines_joined(writes: list[tuple[bytes, bool]], chunk: int):
    """Any writes, read at any points in chunks of any size, CRs, NULs and over-long lines
    included: the lines are the file's complete lines up to the length bound (NULs dropped, a
    final CR stripped), and a block that carries ``raw`` carries exactly its lines, each with
    its newline."""
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(tail_module, "_READ_CHUNK", chunk):
        path = os.path.join(tmp, "a.jsonl")
        open(path, "wb").close()
        tail = FileTail(path, max_line_bytes=12)
        blocks = []
        for data, read in [*writes, (b"", True)]:
            with open(path, "ab") as handle:
                handle.write(data)
            while read and (got := tail.read_blocks()):
                blocks += got
        tail.close()
    complete = b"".join(data for data, _ in writes).replace(b"\x00", b"").split(b"\n")[:-1]
    expected = [x.removesuffix(b"\r") for x in complete if len(x) <= 12]
    assert (expected, []) == ([x for block in blocks for x in block.lines],
                              [block for block in blocks if block.raw is not None
                               and block.raw != b"".join(x + b"\n" for x in block.lines)])


def test_recreated_file_while_down_is_read_from_its_start(tmp_path: Path):
    """Delete + recreate with the same name while stopped: the fingerprint differs, read from 0."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1, "run": "old"}\n' * 4)
    tail = FileTail(str(path))
    assert 4 == len(_lines(tail))
    position = tail.position()
    tail.close()
    path.unlink()
    path.write_bytes(b'{"step": 1, "run": "new"}\n' * 6)  # longer than the old offset
    again = FileTail(str(path), position=position)
    assert [b'{"step": 1, "run": "new"}'] * 6 == _lines(again)
    assert 1 == again.stats.skips["replaced_while_down"]
    again.close()


def test_from_end_skips_what_is_already_there(tmp_path: Path):
    """--from-end: only lines appended after the start are read."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"step": 1}\n')
    source = FileSource(path, from_start=False)
    assert [] == source.poll()
    with open(path, "ab") as handle:
        handle.write(b'{"step": 2}\n')
    assert [b'{"step": 2}'] == [line.data for line in source.poll()]
    source.close()


def test_identical_first_lines_are_distinct_streams(run_dir: Path):
    """64 rank files starting with the same line are 64 streams, none merged."""
    for rank in range(64):
        (run_dir / f"rank{rank}.jsonl").write_bytes(b'{"step": 0, "metrics": {"loss": 1}}\n')
    source = DirectorySource(run_dir)
    lines = source.poll()
    assert 64 == len({line.stream for line in lines})
    source.close()


def test_directory_source_excludes_its_own_outputs_and_finds_nested_ranks(run_dir: Path):
    """alerts, record and state files are not read back as events; rank folders are."""
    (run_dir / "node1").mkdir()
    (run_dir / "node1" / "rank3.jsonl").write_bytes(b'{"step": 1}\n')
    (run_dir / "alerts.jsonl").write_bytes(b'{"step": 9}\n')
    (run_dir / ".trainguard").mkdir()
    (run_dir / ".trainguard" / "x.jsonl").write_bytes(b'{"step": 9}\n')
    source = DirectorySource(run_dir, exclude=[str(run_dir / "alerts.jsonl")])
    assert [str(run_dir / "node1" / "rank3.jsonl")] == [line.stream for line in source.poll()]
    source.close()


@pytest.mark.parametrize("mode", ["poll", "inotify"])
def test_new_rank_file_is_picked_up(run_dir: Path, mode: str):
    """A file that appears after the start is followed, with inotify and with polling."""
    source = DirectorySource(run_dir, rescan_interval=3600.0 if mode == "inotify" else 0.0)
    watcher = ChangeWatcher(source) if mode == "inotify" else None
    assert [] == source.poll()
    (run_dir / "rank5.jsonl").write_bytes(b'{"step": 1}\n')
    got: list[bytes] = []
    for _ in range(100):
        got += [line.data for line in source.poll()]
        if got or watcher is None:
            break
        watcher.wait(0.05)
    assert [b'{"step": 1}'] == got
    if watcher is not None:
        watcher.close()
    source.close()


def test_watched_rescan_reads_an_append_no_event_reported(run_dir: Path):
    """Under a watcher, the rescan still reads a file whose change event was lost."""
    path = run_dir / "rank0.jsonl"
    path.write_bytes(b'{"step": 1}\n')
    source = DirectorySource(run_dir, rescan_interval=0.0)
    source.notify("")  # a watcher is attached, but this change is never reported
    assert [b'{"step": 1}'] == [line.data for line in source.poll()]
    assert [] == source.poll()
    with open(path, "ab") as handle:
        handle.write(b'{"step": 2}\n')
    assert [b'{"step": 2}'] == [line.data for line in source.poll()]
    source.close()


def test_big_backlog_is_read_in_bounded_polls_without_waiting_for_events(run_dir: Path):
    """A 3 MB backlog comes in several polls (bounded batches), each next one without an event."""
    line = b'{"step": 1, "metrics": {"loss": 1.5}}'
    count = 3 * (1 << 20) // (len(line) + 1)
    (run_dir / "rank0.jsonl").write_bytes((line + b"\n") * count)
    source = DirectorySource(run_dir, rescan_interval=3600.0)
    source.notify("")  # watched: after the first pass only reported (or unfinished) files
    sizes = []
    while batch := source.poll():
        sizes.append(len(batch))
    assert (count, True) == (sum(sizes), len(sizes) >= 3)
    source.close()


def test_rescan_lists_a_settled_folder_again_once_it_changes(run_dir: Path):
    """A folder listing is reused while its mtime holds, and redone when a file is added."""
    rank_dir = run_dir / "node0"
    rank_dir.mkdir()
    (rank_dir / "rank0.jsonl").write_bytes(b'{"step": 1}\n')
    past = time.time() - 60
    for folder in (rank_dir, run_dir):  # settled: older than the coarse-clock margin
        os.utime(folder, (past, past))
    source = DirectorySource(run_dir, rescan_interval=0.0)
    assert [b'{"step": 1}'] == [line.data for line in source.poll()]
    assert str(rank_dir) in source._listings
    (rank_dir / "rank1.jsonl").write_bytes(b'{"step": 7}\n')
    os.utime(rank_dir, (past + 1, past + 1))  # the kernel moved the mtime; not yet settled
    assert [(str(rank_dir / "rank1.jsonl"), b'{"step": 7}')] == [
        (line.stream, line.data) for line in source.poll()]
    source.close()


def test_vanished_directory_is_a_problem(run_dir: Path):
    """A run directory removed under the monitor makes it say so (degraded), not go quiet."""
    (run_dir / "rank0.jsonl").write_bytes(b'{"step": 1}\n')
    source = DirectorySource(run_dir)
    source.poll()
    shutil.rmtree(run_dir)
    source.poll()
    assert ["vanished" in p for p in source.problems()] == [True]
    source.close()


def test_damaged_state_file_is_a_cold_start_with_a_warning(tmp_path: Path):
    """An empty or garbled checkpoint never crashes the monitor."""
    state = tmp_path / "state.json"
    state.write_bytes(b"")
    data, warning = load_state(state)
    assert ({}, True) == (data, "starting cold" in (warning or ""))
    assert ({}, None) == load_state(tmp_path / "missing.json")


def test_ledger_suppresses_an_alert_raised_before_a_restart():
    """A (rule, rank) already firing is not raised again; after it resolves it can fire again."""
    def alert(step: int, state: str = "firing") -> Alert:
        return Alert(None, "r", "high", "stop", "loss", 1.0, step, 0, "m", state=state)

    ledger = AlertLedger()
    assert ledger.admit(alert(5))
    restored = AlertLedger(ledger.to_json())
    assert [False, True, True] == [restored.admit(alert(5)), restored.admit(alert(9, "resolved")),
                                   restored.admit(alert(12))]


def test_a_file_behind_hands_out_a_few_reads_a_poll_and_the_rest_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A backlog comes out CATCH_UP_READS reads a poll (a bounded batch, big enough to amortize
    the rules' cost per batch), in order, every line once, numbered as in the file."""
    from trainguard.monitor.ingest import sources

    monkeypatch.setattr(tail_module, "_READ_CHUNK", 64)
    path = tmp_path / "a.jsonl"
    lines = [b'{"step": %d, "name": "loss", "value": 1.0}' % i for i in range(200)]
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    source = FileSource(path)
    polls = []
    while blocks := source.poll_blocks():
        polls.append([(block.first + i, line) for block in blocks
                      for i, line in enumerate(block.lines)])
    source.close()
    per_read = 64 // (len(lines[0]) + 1) + 1  # lines a 64-byte read completes, at most
    assert max(map(len, polls)) <= sources.CATCH_UP_READS * per_read
    assert len(polls[0]) > per_read  # more than one read in a poll
    assert list(enumerate(lines, 1)) == [x for poll in polls for x in poll]
