"""``--record``: every event the monitor evaluated, normalized, as canonical JSONL.

The file is appended to. Exactly once across ``kill -9``: the checkpoint stores the file's
length together with the source offsets it corresponds to, and a restarted monitor truncates the
file back to that length before it re-reads from those offsets, so the events between the last
checkpoint and the crash are written once, not twice.

Opened never through a symlink nor a FIFO (:mod:`.files`). A write that fails (a full disk)
never ends the monitor: the file is cut back to its last committed length (no torn line), the
events of that stretch are counted in ``lost_events``, ``problem`` says so, and the next commit
tries again.
"""

from __future__ import annotations

import os

from trainguard.events import Record, encode_record
from trainguard.monitor.sinks.files import open_output

__all__ = ["Recorder"]

#: Bytes buffered between commits before they are written.
_BUFFER = 1 << 20


class Recorder:
    """Appends normalized step records to a JSONL file; :meth:`commit` makes them durable."""

    def __init__(self, path: str | os.PathLike[str], *, resume_length: int | None = None) -> None:
        self.path = str(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._fd = open_output(self.path)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if resume_length is not None and resume_length <= size:
            # Written after the last checkpoint: those events are about to be read again.
            os.ftruncate(self._fd, resume_length)
            size = resume_length
        self._committed = size
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffered_events = 0
        self.events = 0
        #: Events that could not be recorded (a failed write), and why, while that lasts.
        self.lost_events = 0
        self.problem: str | None = None

    def write(self, record: Record) -> None:
        """Append one step record (buffered until :meth:`commit`)."""
        data = encode_record(record)
        self._buffer.append(data)
        self._buffered += len(data)
        self._buffered_events += len(record.metrics)
        self.events += len(record.metrics)
        if self._buffered >= _BUFFER:
            self._write_buffer()

    def _write_buffer(self) -> bool:
        data = b"".join(self._buffer)
        events = self._buffered_events
        self._buffer, self._buffered, self._buffered_events = [], 0, 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.lost_events += events
            self.problem = (f"cannot write the record {self.path}: {exc.strerror or exc}; "
                            f"{self.lost_events} events not recorded so far")
            try:
                os.ftruncate(self._fd, self._committed)  # no torn line at the end
            except OSError:
                pass
            return False
        return True

    def commit(self) -> int:
        """Write and fsync; return the file's length, which the checkpoint stores."""
        if self._write_buffer():
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.problem = f"cannot sync the record {self.path}: {exc.strerror or exc}"
            else:
                self._committed = os.lseek(self._fd, 0, os.SEEK_END)
        return self._committed

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self._write_buffer()
        os.close(self._fd)
