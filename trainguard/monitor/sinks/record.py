"""``--record``: every event the monitor evaluated, normalized, as canonical JSONL.

The file is appended to. Exactly once across ``kill -9``: the checkpoint stores the file's
length together with the source offsets it corresponds to, and a restarted monitor truncates the
file back to that length before it re-reads from those offsets, so the events between the last
checkpoint and the crash are written once, not twice.
"""

from __future__ import annotations

import os

from trainguard.events import Record, encode_record

__all__ = ["Recorder"]


class Recorder:
    """Appends normalized step records to a JSONL file; :meth:`commit` makes them durable."""

    def __init__(self, path: str | os.PathLike[str], *, resume_length: int | None = None) -> None:
        self.path = str(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held for the session
        if resume_length is not None and resume_length <= self._file.seek(0, os.SEEK_END):
            # Written after the last checkpoint: those events are about to be read again.
            self._file.truncate(resume_length)
            self._file.seek(resume_length)
        self.events = 0

    def write(self, record: Record) -> None:
        """Append one step record (buffered until :meth:`commit`)."""
        self._file.write(encode_record(record))
        self.events += len(record.metrics)

    def commit(self) -> int:
        """Flush and fsync; return the file's length, which the checkpoint stores."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.flush()
        self._file.close()
