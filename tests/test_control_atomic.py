"""Atomic JSON writes (``control.write_json_atomic``) under kill -9: a writer killed between
create and rename leaves one temporary at most, the next write by anyone removes it once its
writer is gone, a live writer's temporary is never taken from it, and readers only ever see a
whole file. Real writer processes, really killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainguard.control import (
    STALE_TEMP_SECONDS,
    remove_stale_temps,
    temp_name,
    write_json_atomic,
)

#: A writer that writes ``{"n": 0}`` whole, then writes ``{"n": 1}`` but stops before the
#: rename (its own ``os.replace`` waits for a line on stdin) and says so on stdout.
PAUSED_WRITER = """
import os, sys
from trainguard.control import temp_name, write_json_atomic
target = sys.argv[1]
write_json_atomic(target, {"n": 0, "by": os.getpid()})
real_replace = os.replace
def paused(src, dst):
    print("paused", temp_name(dst), flush=True)
    sys.stdin.readline()
    real_replace(src, dst)
os.replace = paused
write_json_atomic(target, {"n": 1, "by": os.getpid()})
print("renamed", flush=True)
"""

#: A writer that rewrites the target as fast as it can until it is killed (a 256 KiB body,
#: so a good share of its time lies between create and rename).
LOOPING_WRITER = """
import sys
from trainguard.control import write_json_atomic
target, n = sys.argv[1], 0
print("started", flush=True)
while True:
    n += 1
    write_json_atomic(target, {"n": n, "pad": "x" * (256 << 10)})
"""


def _temps(folder: Path, name: str = "control.json") -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def _spawn(code: str, target: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _paused(target: Path) -> tuple[subprocess.Popen[str], str]:
    """A writer stopped between its write and its rename, and its temporary's path."""
    proc = _spawn(PAUSED_WRITER, target)
    assert proc.stdout is not None
    word, tmp = proc.stdout.readline().split()
    assert word == "paused"
    return proc, tmp


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@contextmanager
def _reader(target: Path) -> Iterator[dict[str, int]]:
    """A thread reading ``target`` in a tight loop; counts whole reads and torn ones."""
    seen = {"whole": 0, "torn": 0}
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                raw = target.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(raw)
                seen["whole"] += 1
            except ValueError:
                seen["torn"] += 1

    thread = threading.Thread(target=read)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(30)


def test_a_writer_killed_before_its_rename_leaves_one_temp_that_the_next_write_removes(
        run_dir: Path):
    """kill -9 between create and rename: the old file stays whole, one temporary (the
    killed writer's fixed name) is left, and the next write, by another process, removes it."""
    target = run_dir / "control.json"
    proc, tmp = _paused(target)
    _kill(proc)
    left = _temps(run_dir)
    assert ([os.path.basename(tmp)], 0) == (left, json.loads(target.read_text())["n"])
    assert f".{proc.pid}." in left[0]
    write_json_atomic(target, {"n": 2})
    assert ([], {"n": 2}) == (_temps(run_dir), json.loads(target.read_text()))


def test_a_live_writers_temp_is_left_alone_while_a_dead_ones_is_removed(run_dir: Path):
    """Two writers paused mid-write, one killed: a third write removes only the dead one's
    temporary; the live one then renames its own and nothing is left behind."""
    target = run_dir / "control.json"
    dead, dead_tmp = _paused(target)
    live, live_tmp = _paused(target)
    _kill(dead)
    assert sorted(os.path.basename(t) for t in (dead_tmp, live_tmp)) == _temps(run_dir)
    write_json_atomic(target, {"n": 2})
    assert [os.path.basename(live_tmp)] == _temps(run_dir)
    assert live.stdin is not None and live.stdout is not None
    live.stdin.write("go\n")
    live.stdin.flush()
    assert "renamed" == live.stdout.readline().strip()
    assert 0 == live.wait(30)
    live.stdin.close()
    live.stdout.close()
    assert ([], {"n": 1, "by": live.pid}) == (_temps(run_dir), json.loads(target.read_text()))


def test_writers_killed_at_random_leave_one_temp_at_most_and_readers_never_see_a_torn_file(
        run_dir: Path):
    """A writer rewriting the file in a loop is killed at random moments, 20 times, while a
    reader reads it: after each kill one temporary at most is there, the next writer removes
    it, every read is whole JSON, and some kills did land between create and rename."""
    target = run_dir / "control.json"
    write_json_atomic(target, {"n": 0})
    rng = random.Random(7)
    after_kill: list[int] = []
    with _reader(target) as seen:
        for _ in range(20):
            proc = _spawn(LOOPING_WRITER, target)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0.02, 0.15))
            _kill(proc)
            after_kill.append(len(_temps(run_dir)))
    write_json_atomic(target, {"n": -1})
    assert max(after_kill) == 1, after_kill
    assert [] == _temps(run_dir)
    assert (0, True) == (seen["torn"], seen["whole"] > 0)


def test_a_link_planted_at_the_temp_name_is_not_written_through(run_dir: Path, tmp_path: Path):
    """The temporary is created anew: a symlink at its name is replaced, its target untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = run_dir / "control.json"
    os.symlink(victim, temp_name(target))
    write_json_atomic(target, {"n": 1})
    assert ("precious\n", {"n": 1}, []) == (victim.read_text(), json.loads(target.read_text()),
                                            _temps(run_dir))


@pytest.mark.parametrize(("middle", "old", "removed"), [
    ("otherhost.4242.4242", False, False),   # another host's, in flight: its pid means nothing
    ("otherhost.4242.4242", True, True),     # another host's, long stale
    ("abcd1234", False, False),              # an earlier version's mkstemp name, recent
    ("abcd1234", True, True),                # ... and stale
    ("bak", True, False),                    # not a name we make: never ours to remove
])
def test_temps_of_other_hosts_and_earlier_versions_go_only_once_stale(
        run_dir: Path, middle: str, old: bool, removed: bool):
    """What cannot be checked by pid is removed only when older than STALE_TEMP_SECONDS."""
    tmp = run_dir / f".control.json.{middle}.tmp"
    tmp.write_text("{")
    if old:
        past = time.time() - STALE_TEMP_SECONDS - 60
        os.utime(tmp, (past, past))
    assert ([str(tmp)] if removed else []) == remove_stale_temps(run_dir / "control.json")
    assert tmp.exists() is not removed
