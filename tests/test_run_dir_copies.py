"""A run directory follows every ``*.jsonl``; logrotate can give a rank file's rotated copy such a
name (``extension .jsonl``: ``events.rank0.1.jsonl``, shifting to ``.2.jsonl`` on the next
run). Neither a copytruncate copy nor a renamed file that shifts along is read as a new
stream: every event is counted once, whichever of the copy and the truncation the monitor sees
first, behind or not, across restarts. Real files, real copies, renames and truncations."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from trainguard.monitor.ingest.sources import DirectorySource


class RankFile:
    """A trainer's rank file, appended to (``O_APPEND``), rotated the ways logrotate does."""

    def __init__(self, run: Path, name: str = "events.rank0.jsonl") -> None:
        self.path = run / name
        self.seq = 0

    def write(self, count: int) -> None:
        with open(self.path, "a") as handle:
            for _ in range(count):
                handle.write(json.dumps({"step": self.seq, "metrics": {"loss": 1.0}}) + "\n")
                self.seq += 1

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name[:-len('.jsonl')]}.{n}.jsonl")

    def _shift(self) -> None:
        for n in range(9, 0, -1):
            if self._rotated(n).exists():
                os.rename(self._rotated(n), self._rotated(n + 1))

    def copytruncate(self) -> None:
        """Shift the numbered copies, copy the file to number 1, truncate it in place."""
        self._shift()
        shutil.copyfile(self.path, self._rotated(1))
        with open(self.path, "r+") as handle:
            handle.truncate(0)

    def rename(self) -> None:
        """Shift the numbered files, rename the file to number 1, create it anew."""
        self._shift()
        os.rename(self.path, self._rotated(1))
        self.path.touch()


def _poll(source: DirectorySource, seen: Counter[int]) -> None:
    for _ in range(50):
        lines = source.poll()
        if not lines:
            return
        seen.update(json.loads(line.data)["step"] for line in lines)
    raise AssertionError("the source never ran dry")


def _once_each(seen: Counter[int], total: int) -> dict[str, list[int]]:
    return {"twice": sorted(k for k, n in seen.items() if n > 1),
            "missing": sorted(set(range(total)) - set(seen))}


NONE = {"twice": [], "missing": []}


@pytest.mark.parametrize("rotate", ["copytruncate", "rename"])
@pytest.mark.parametrize("behind", [False, True])
def test_rotated_copies_under_jsonl_names_are_not_read_as_new_streams(
        run_dir: Path, rotate: str, behind: bool):
    """Three rotations whose names shift (.1.jsonl, .2.jsonl, ...): each event once, with the
    monitor caught up at each rotation or with lines it had not read yet (then read from the
    copy, or from the renamed file)."""
    rank = RankFile(run_dir)
    rank.write(5)
    source = DirectorySource(run_dir)
    seen: Counter[int] = Counter()
    _poll(source, seen)
    for _ in range(3):
        rank.write(4)
        if not behind:
            _poll(source, seen)
        getattr(rank, rotate)()
        _poll(source, seen)
        rank.write(3)
        _poll(source, seen)
    assert (NONE, []) == (_once_each(seen, rank.seq), source.problems())
    assert 4 == len(list(run_dir.glob("*.jsonl")))
    source.close()


def test_a_truncation_seen_before_the_copy_reads_the_rest_from_the_copy(run_dir: Path):
    """With a watcher reporting only the rank file, its tail meets the truncation before the
    directory has listed the copy: it reads its unread lines from the copy (counted as the
    rank file's), and the directory, when it lists the copy, reads none of it again."""
    rank = RankFile(run_dir)
    rank.write(5)
    source = DirectorySource(run_dir, rescan_interval=3600)
    seen: Counter[int] = Counter()
    _poll(source, seen)  # the first poll is a full one
    source.notify("")  # a watcher is attached: polls read only what it reports
    rank.write(4)
    rank.copytruncate()
    rank.write(2)
    source.notify(str(rank.path))
    _poll(source, seen)
    copy = str(rank.path.with_name("events.rank0.1.jsonl"))
    source.notify(copy)
    _poll(source, seen)
    stats = source.stats()
    assert (NONE, []) == (_once_each(seen, rank.seq), source.problems())
    assert (rank.seq, 0) == (stats[str(rank.path)].lines, stats[copy].lines if copy in stats
                             else 0)
    source.close()


def test_a_recognised_copy_stays_unread_across_a_restart(run_dir: Path):
    """The checkpoint remembers the copy (a position at its end, marked copy_of): the next
    session reads only new lines, even though the rank file no longer starts like it."""
    rank = RankFile(run_dir)
    rank.write(6)
    source = DirectorySource(run_dir)
    seen: Counter[int] = Counter()
    _poll(source, seen)
    rank.copytruncate()
    _poll(source, seen)
    rank.write(3)
    _poll(source, seen)
    saved = source.positions()
    source.close()
    copy = str(run_dir / "events.rank0.1.jsonl")
    assert str(rank.path) == saved[copy]["copy_of"]
    rank.write(2)
    restarted = DirectorySource(run_dir, positions=saved)
    _poll(restarted, seen)
    assert (NONE, []) == (_once_each(seen, rank.seq), restarted.problems())
    restarted.close()


def test_copytruncate_while_down_resumes_in_the_copy(run_dir: Path):
    """The monitor is down when the copy is made: after the restart the checkpointed rest is
    read from the copy (found by its first bytes: a new inode), then the truncated file."""
    rank = RankFile(run_dir)
    rank.write(5)
    source = DirectorySource(run_dir)
    seen: Counter[int] = Counter()
    _poll(source, seen)
    saved = source.positions()
    source.close()
    rank.write(4)
    rank.copytruncate()
    rank.write(3)
    restarted = DirectorySource(run_dir, positions=saved)
    _poll(restarted, seen)
    assert (NONE, []) == (_once_each(seen, rank.seq), restarted.problems())
    restarted.close()


def test_a_file_of_its_own_under_a_rotated_name_is_read(run_dir: Path):
    """``events.rank0.1.jsonl`` that does not start like the rank file is a stream: read."""
    rank = RankFile(run_dir)
    rank.write(3)
    other = RankFile(run_dir, "events.rank0.1.jsonl")
    other.seq = 100
    other.write(3)
    source = DirectorySource(run_dir)
    seen: Counter[int] = Counter()
    _poll(source, seen)
    assert [0, 1, 2, 100, 101, 102] == sorted(seen.elements())
    source.close()
