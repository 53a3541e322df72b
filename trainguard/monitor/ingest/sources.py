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
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from trainguard.exceptions import SourceError
from trainguard.monitor.ingest.pipe import PipeSource
from trainguard.monitor.ingest.tail import Block, FileTail, Line, TailStats, expand_blocks

__all__ = ["Block", "DirectorySource", "FileSource", "Line", "Source", "StdinSource", "open_source"]


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


#: The monitor's own state lives here inside a run directory; never read as events.
STATE_DIRNAME = ".trainguard"


class DirectorySource:
    """Every ``*.jsonl`` under a run directory, one stream per file, new files picked up.

    Streams are keyed by path, so two rank files with identical first lines stay two streams.
    With a watcher attached (:meth:`notify` called on changes) a poll reads only the files that
    changed, and every ``rescan_interval`` seconds it rescans the tree and reads every file, to
    catch what an overflowing kernel queue dropped. Without one, every poll is a full scan.
    """

    def __init__(self, root: str | os.PathLike[str], *, exclude: Iterable[str] = (),
                 positions: dict[str, dict[str, Any]] | None = None,
                 rescan_interval: float = 1.0, from_start: bool = True) -> None:
        self.root = Path(root)
        self.name = str(root)
        self._exclude = {os.path.abspath(p) for p in exclude}
        self._state_dir = os.path.abspath(self.root / STATE_DIRNAME)
        self._positions = dict(positions or {})
        self._tails: dict[str, FileTail] = {}
        self._error: str | None = None
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._watched = False
        self._rescan_interval = rescan_interval
        self._last_full = float("-inf")  # the first poll reads everything already there
        self._listings: dict[str, tuple[int, list[str], list[str]]] = {}
        # --from-end: the files already there start at their end; files that appear later
        # are new, read from their start (a checkpointed position wins either way).
        self._from_start = from_start
        self._scan()
        self._from_start = True

    def _excluded(self, path: str) -> bool:
        absolute = os.path.abspath(path)
        return absolute in self._exclude or absolute.startswith(self._state_dir + os.sep)

    def _scan(self) -> None:
        if not self.root.is_dir():
            self._error = f"{self.root}: not a directory (vanished?)"
            return
        if not os.access(self.root, os.R_OK | os.X_OK):
            self._error = f"{self.root}: permission denied"
            return
        try:
            found = sorted(self._walk(str(self.root)))
            self._error = None
        except OSError as exc:
            self._error = f"{self.root}: {exc.strerror or exc}"
            return
        for path in found:
            if path not in self._tails and not self._excluded(path):
                position = self._positions.pop(path, None)
                self._tails[path] = FileTail(path, from_start=self._from_start
                                             or position is not None, position=position)

    def _walk(self, top: str) -> list[str]:
        """``*.jsonl`` files under ``top`` (symlinked files yes, symlinked folders not entered).

        A folder is listed again only when its mtime changed (an entry was added, removed or
        renamed), so a rescan of 1,024 idle rank files in 128 folders costs 129 ``stat`` calls,
        not a thousand directory entries (nor the inotify open/close events that listing a
        watched folder raises). ``os.scandir`` tells files from folders without a ``stat`` per
        entry when a folder does need listing.
        """
        found: list[str] = []
        listings: dict[str, tuple[int, list[str], list[str]]] = {}
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                files, folders = self._list(folder, listings)
            except OSError:
                if folder == top:
                    raise
                continue  # a rank folder that vanished or is unreadable: the rest still count
            found += files
            stack += folders
        self._listings = listings  # folders no longer there are forgotten
        return found

    def _list(self, folder: str, listings: dict[str, tuple[int, list[str], list[str]]]
              ) -> tuple[list[str], list[str]]:
        mtime = os.stat(folder).st_mtime_ns
        cached = self._listings.get(folder)
        if cached is not None and cached[0] == mtime:
            listings[folder] = cached
            return cached[1], cached[2]
        files: list[str] = []
        folders: list[str] = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".jsonl") and entry.is_file():
                    files.append(entry.path)
                elif (entry.is_dir(follow_symlinks=False)
                      and os.path.abspath(entry.path) != self._state_dir):
                    folders.append(entry.path)
        # The kernel stamps mtimes from a coarse clock: a folder that changed in the last two
        # seconds may change again under the same mtime, so it is not trusted until it settles.
        if time.time_ns() - mtime > 2_000_000_000:
            listings[folder] = (mtime, files, folders)
        return files, folders

    def poll(self) -> list[Line]:
        """New lines of the changed files (every file on a full pass), and any new file."""
        return expand_blocks(self.poll_blocks())

    def poll_blocks(self) -> list[Block]:
        """What :meth:`poll` returns, as blocks of consecutive lines of one file."""
        now = time.monotonic()
        full = not self._watched or now - self._last_full >= self._rescan_interval
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        out: list[Block] = []
        if full:
            self._last_full = now
            self._scan()
            # With a watcher, the rescan is only the net under a dropped kernel event: a file
            # nobody reported is read only if stat says it changed. Without one (--poll), every
            # file gets the full check, its head compared too.
            watched = self._watched
            for path, tail in self._tails.items():
                quick = watched and path not in dirty
                out += tail.read_blocks(quick)
            self._keep_behind_dirty()
            return out
        if any(p not in self._tails and p.endswith(".jsonl") for p in dirty):
            self._scan()
        for path, tail in self._tails.items():  # in the tails' order, as a full pass reads
            if path in dirty:
                out += tail.read_blocks()
        self._keep_behind_dirty()
        return out

    def _keep_behind_dirty(self) -> None:
        """A file read only in part this poll is read on by the next, event or not."""
        behind = [p for p, t in self._tails.items() if t.behind]
        if behind:
            with self._dirty_lock:
                self._dirty.update(behind)

    def problems(self) -> list[str]:
        """An unreadable or vanished directory, or files that cannot be read."""
        found = [self._error] if self._error else []
        found += [f"{p}: {t.error}" for p, t in self._tails.items() if t.error]
        return found

    @property
    def exhausted(self) -> bool:
        """A directory can always get new files."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """Counters per file."""
        return {p: t.stats for p, t in self._tails.items()}

    def positions(self) -> dict[str, dict[str, Any]]:
        """Checkpointable position of every file (and of files not yet seen again)."""
        return {**self._positions, **{p: t.position() for p, t in self._tails.items()}}

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """The run directory, recursively: one kernel watch per directory, not per file."""
        return [(str(self.root), True)]

    def notify(self, path: str) -> None:
        """Called by a watcher thread: ``path`` changed; the next poll reads it. The first call
        (``path`` may be empty) tells the source that a watcher is attached."""
        self._watched = True
        if path:
            with self._dirty_lock:
                self._dirty.add(path)

    def close(self) -> None:
        """Close every file."""
        for tail in self._tails.values():
            tail.close()


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
