"""Sources: where the monitor's lines come from (a file, a run directory, stdin).

Every source has one small contract, :class:`Source`: ``poll()`` returns the complete lines that
arrived since the last call, each with the stream it belongs to and its line number. A source
never raises for bad input; one it cannot read says so in ``problems`` so the monitor reports
itself degraded instead of healthy.

A file-backed source also offers ``poll_blocks()``: the same lines as :class:`Block` runs of
consecutive lines (raw bytes and the number of the first), which the monitor prefers, since
building one :class:`Line` per line costs as much as decoding it; most blocks also carry the
bytes of all their lines as read, which the monitor decodes in one call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from trainguard.exceptions import SourceError
from trainguard.monitor.ingest.pipe import PipeSource
from trainguard.monitor.ingest.run_dir import (
    FD_RESERVE,
    MAX_POLL_BYTES,
    MAX_RETIRED,
    STATE_DIRNAME,
    DirectorySource,
    raise_fd_limit,
)
from trainguard.monitor.ingest.tail import Block, FileTail, Line, TailStats

__all__ = ["Block", "DirectorySource", "FileSource", "Line", "Source", "StdinSource", "open_source",
           "FD_RESERVE", "MAX_POLL_BYTES", "MAX_RETIRED", "STATE_DIRNAME", "raise_fd_limit"]


class Source(Protocol):
    """Yields complete lines; reports what it cannot read instead of raising."""

    name: str

    def poll(self) -> list[Line]:
        """Lines that arrived since the last call."""

    def problems(self) -> list[str]:
        """Why parts of this source cannot be read right now (empty when all is well)."""

    @property
    def exhausted(self) -> bool:
        """True when no more lines can ever arrive (a closed pipe); files never are."""

    def stats(self) -> dict[str, TailStats]:
        """Per-stream counters."""

    def close(self) -> None:
        """Release files and threads."""


#: Reads of a file that is behind (a backlog, a finished run) per poll of one file. The monitor
#: evaluates a poll's records as one batch, and each rule pays a fixed cost per batch: four
#: reads (about 5,000 steps of 10 metrics) took a quarter off the rules' CPU time against one.
#: A directory reads one per file and poll: its files' reads add up already.
CATCH_UP_READS = 4


class FileSource:
    """One file followed like ``tail -F``."""

    def __init__(self, path: str | os.PathLike[str], *, from_start: bool = True,
                 positions: dict[str, dict[str, Any]] | None = None) -> None:
        self.name = str(path)
        pos = (positions or {}).get(self.name)
        self._tail = FileTail(self.name, from_start=from_start or pos is not None, position=pos)

    def poll(self) -> list[Line]:
        """New complete lines of the file."""
        return self._tail.read()

    def poll_blocks(self) -> list[Block]:
        """New complete lines of the file, as blocks of consecutive lines: up to
        :data:`CATCH_UP_READS` reads of the tail (a megabyte each) while it is behind."""
        tail = self._tail
        blocks = tail.read_blocks()
        for _ in range(CATCH_UP_READS - 1):
            if not tail.behind:
                break
            blocks += tail.read_blocks()
        return blocks

    def problems(self) -> list[str]:
        """A missing or unreadable file is a problem: the monitor cannot see the run."""
        if self._tail.losses:
            return [f"{self.name}: {self._tail.losses}"]
        if self._tail.error:
            return [f"{self.name}: {self._tail.error}"]
        if not os.path.exists(self.name):
            return [f"{self.name}: no such file (waiting for it to appear)"]
        return []

    @property
    def exhausted(self) -> bool:
        """Files can always grow."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """Counters of the one file."""
        return {self.name: self._tail.stats}

    def positions(self) -> dict[str, dict[str, Any]]:
        """Checkpointable position of the file (see :meth:`FileTail.position`)."""
        return {self.name: self._tail.position()}

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """``(directory, recursive)`` pairs whose changes should wake the monitor."""
        return [(os.path.dirname(os.path.abspath(self.name)), False)]

    def notify(self, path: str) -> None:
        """A change was seen under a watched directory (one file: nothing to narrow down)."""

    def close(self) -> None:
        """Close the file."""
        self._tail.close()


class StdinSource(PipeSource):
    """Lines from standard input (see :mod:`trainguard.monitor.ingest.pipe`); ``tee`` receives every
    byte unchanged before it is parsed."""

    def __init__(self, stream: BinaryIO | None = None, *, tee: BinaryIO | None = None) -> None:
        fd = (stream if stream is not None else sys.stdin.buffer).fileno()
        super().__init__(fd, "<stdin>", passthrough=tee)


def open_source(spec: str, *, exclude: Iterable[str] = (), from_start: bool = True,
                positions: dict[str, dict[str, Any]] | None = None,
                tee: BinaryIO | None = None, rescan_interval: float = 1.0) -> Source:
    """Open ``spec``: ``-`` for stdin, a directory for a run directory, else a file.

    ``positions`` (from a checkpoint) resume each file where the last session stopped;
    ``tee`` receives every stdin line unchanged.
    """
    if spec == "-":
        return StdinSource(tee=tee)
    path = Path(spec)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise SourceError(f"{spec}: permission denied: the monitor cannot read this run "
                              "directory (check its mode and owner)")
        return DirectorySource(path, exclude=exclude, positions=positions,
                               rescan_interval=rescan_interval, from_start=from_start)
    if path.exists() and not os.access(path, os.R_OK):
        raise SourceError(f"{spec}: permission denied: the monitor cannot read this file")
    return FileSource(path, from_start=from_start, positions=positions)
