"""A file driven through random writes, rotations, truncations, deletions and restarts is read
exactly as a simple model says: every complete line once, in order, no partial line early.

Run with inotify (the watcher wakes the reader; the rescan is pushed out so it cannot hide a
missed event) and with polling.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trainguard.monitor.ingest.sources import DirectorySource
from trainguard.monitor.ingest.watch import ChangeWatcher

# No shrinking: a failure prints its steps anyway, and shrinking file I/O takes minutes.
# TG_MODEL_EXAMPLES / TG_MODEL_STEPS raise the effort for a soak run (e.g. 2000 x 30).
_SETTINGS = settings(max_examples=int(os.environ.get("TG_MODEL_EXAMPLES", "25")),
                     stateful_step_count=int(os.environ.get("TG_MODEL_STEPS", "15")),
                     deadline=None,
                     suppress_health_check=list(HealthCheck),
                     phases=[Phase.explicit, Phase.reuse, Phase.generate])


class TailMachine(RuleBasedStateMachine):
    """The model: the complete lines written, in order; the reader must deliver exactly them."""

    mode = "poll"

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tg-model-")
        self.path = os.path.join(self.dir, "rank0.jsonl")
        self.seq = 0
        self.written: list[bytes] = []  # complete lines, in write order
        self.partial = b""  # bytes of the last line written without its newline
        self.delivered: list[bytes] = []
        self.rotations = 0
        # A file created and renamed away before any poll was never seen by any reader; the
        # model's reader keeps up that far (it opens each file), not necessarily further.
        self.seen_current = True
        self._open_source(None)

    def _open_source(self, positions: dict | None) -> None:
        watched = self.mode == "inotify"
        self.source = DirectorySource(self.dir, positions=positions,
                                      rescan_interval=3600.0 if watched else 0.0)
        self.watcher = ChangeWatcher(self.source) if watched else None

    def _close_source(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.source.close()

    def _line(self) -> bytes:
        self.seq += 1
        return b'{"step": %d, "metrics": {"loss": 1.5}}' % self.seq

    def _append(self, data: bytes) -> None:
        if not os.path.exists(self.path):
            self.seen_current = False
        with open(self.path, "ab") as handle:
            handle.write(data)

    def _reader_holds_current_file(self) -> bool:
        """True when the reader has the file now at the path open (or there is none)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        pos = self.source.positions().get(self.path)
        return pos is not None and (pos["dev"], pos["ino"]) == (st.st_dev, st.st_ino)

    def _read_all(self) -> None:
        """Poll until the reader has what the model says (inotify: wait for the events).

        A file counts as seen only once the reader holds it open. Under inotify a reader
        learns of a new file from the kernel's event, which can arrive after a poll that had
        nothing owed to it (a file holding only a partial line). A file created and deleted
        before that event is gone for every reader (``tail -F`` and Filebeat too), so the model
        waits for the reader to open the file before it lets the file be deleted or renamed.
        """
        deadline = time.monotonic() + 5.0
        while True:
            for block in self.source.poll_blocks():
                # A block's raw bytes (what the monitor decodes whole) are its lines, read.
                assert block.raw is None or block.raw == b"".join(
                    line + b"\n" for line in block.lines)
                self.delivered.extend(block.lines)
            if len(self.delivered) >= len(self.written) and (
                    self.seen_current or self._reader_holds_current_file()):
                self.seen_current = True
                return
            if time.monotonic() > deadline:
                return
            if self.watcher is not None:
                self.watcher.wait(0.05)

    def _ensure_seen(self) -> None:
        if not self.seen_current:
            self._read_all()

    @rule(count=st.integers(0, 5), partial=st.booleans())
    def write(self, count: int, partial: bool) -> None:
        """Append complete lines, maybe finishing a partial one first, maybe leaving one."""
        data = b""
        if self.partial:
            data += b"\n"
            self.written.append(self.partial)
            self.partial = b""
        for _ in range(count):
            line = self._line()
            data += line + b"\n"
            self.written.append(line)
        if partial:
            self.partial = self._line()
            data += self.partial[:7]  # the rest arrives with the next write
            self._append(data)
            data = self.partial[7:]
        self._append(data)

    @precondition(lambda self: not self.partial and os.path.exists(self.path))
    @rule()
    def rotate_by_rename(self) -> None:
        """logrotate's default: the file is renamed away and a new one starts at the path."""
        self._ensure_seen()
        self.rotations += 1
        os.replace(self.path, self.path + f".{self.rotations}")

    @precondition(lambda self: not self.partial and os.path.exists(self.path))
    @rule()
    def delete(self) -> None:
        """The file is deleted; the next write creates a new one with the same name."""
        self._ensure_seen()
        os.unlink(self.path)

    @precondition(lambda self: not self.partial and os.path.exists(self.path))
    @rule()
    def truncate_after_read(self) -> None:
        """copytruncate once the reader caught up: later lines are read from offset 0."""
        self._read_all()
        os.truncate(self.path, 0)

    @rule()
    def read(self) -> None:
        """The reader catches up."""
        self._read_all()

    @rule()
    def restart(self) -> None:
        """The monitor stops (positions checkpointed) and starts again from the checkpoint."""
        self._read_all()
        positions = self.source.positions()
        self._close_source()
        self._open_source(positions)

    @precondition(lambda self: not self.partial and os.path.exists(self.path))
    @rule()
    def replace_while_down(self) -> None:
        """Deleted and recreated with the same name while the monitor is down (inode reuse)."""
        self._read_all()
        positions = self.source.positions()
        self._close_source()
        os.unlink(self.path)
        self.write(count=3, partial=False)
        self._open_source(positions)

    @invariant()
    def delivered_is_a_prefix_of_written(self) -> None:
        """Never a line that was not written, never a duplicate, never out of order."""
        assert self.written[:len(self.delivered)] == self.delivered

    def teardown(self) -> None:
        self._read_all()
        try:
            assert self.written == self.delivered
        finally:
            self._close_source()
            shutil.rmtree(self.dir, ignore_errors=True)


class PollingTail(TailMachine):
    mode = "poll"


class InotifyTail(TailMachine):
    mode = "inotify"


@pytest.mark.parametrize("machine", [PollingTail, InotifyTail], ids=["poll", "inotify"])
def test_tail_delivers_exactly_what_the_model_says(machine: type[TailMachine]) -> None:
    """Random writes/rotations/truncations/deletions/restarts: every line once, in order."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=_SETTINGS)
