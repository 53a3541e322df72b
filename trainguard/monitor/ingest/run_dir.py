"""The run-directory source: every ``*.jsonl`` under a folder, one stream per file, new files
picked up as they appear, one reader per file identity across renames, copies told from
streams (:mod:`.copies`). Re-exported by :mod:`.sources`, whose :class:`~.sources.Source`
contract it keeps.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainguard.monitor.ingest.copies import holds, originals_first, originals_of
from trainguard.monitor.ingest.rotated import open_regular
from trainguard.monitor.ingest.tail import (
    FINGERPRINT_BYTES,
    Block,
    FileTail,
    Line,
    TailStats,
    expand_blocks,
)

__all__ = ["FD_RESERVE", "MAX_POLL_BYTES", "MAX_RETIRED", "STATE_DIRNAME", "DirectorySource",
           "raise_fd_limit"]


#: Bytes a directory poll reads at most across all its files: one read per file of a
#: thousand files behind would hold a gigabyte at once (the records decoded from them, more).
#: Files keep their whole 1 MiB read: sharing the bytes out in smaller reads (all ranks
#: moving on together) measured the same peak at 4,096 files and 30-80% more CPU, since the
#: rules pay a fixed cost per rank and batch.
MAX_POLL_BYTES = 16 << 20
#: Descriptors left for everything but rank files (the state, alerts, inotify, a trainer).
FD_RESERVE = 128


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one (the usual soft 1,024 is less
    than a 1,024-rank run needs); return the soft limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return int(soft if soft != resource.RLIM_INFINITY else 1 << 20)


#: Files left at a rotation remembered, in case they show up under a ``*.jsonl`` name.
MAX_RETIRED = 4096

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
        #: ``*.jsonl`` files that are copies of a followed file (copytruncate's, under a
        #: rotated name), by path: never read as streams of their own (see _copy_of). Kept
        #: in the checkpoint as positions at their end, marked ``copy_of``.
        self._copies: dict[str, dict[str, Any]] = {
            p: pos for p, pos in self._positions.items()
            if isinstance(pos, dict) and isinstance(pos.get("copy_of"), str)}
        for path in self._copies:
            del self._positions[path]
        #: Paths whose tail handed back a new file in this poll (see _drop_replaced).
        self._replaced: list[str] = []
        #: Counters of streams whose tail handed back a new file (see _drop_replaced).
        self._carried: dict[str, TailStats] = {}
        #: Saved positions by the identity of their file, to find one under a new name.
        self._saved_by_identity: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}
        for path, pos in self._positions.items():
            if (isinstance(pos, dict) and type(pos.get("ino")) is int and pos.get("ino")
                    and type(pos.get("dev")) is int):
                self._saved_by_identity[(pos["dev"], pos["ino"])] = (path, pos)
        #: Where tails left files at a rotation, by identity (see _add_tails).
        self._retired: dict[tuple[int, int], dict[str, Any]] = {}
        #: Files to read first in the next poll (the last one stopped at MAX_POLL_BYTES).
        self._unread: set[str] = set()
        #: Open files, least recently read first; at most ``max_open`` (see _make_room).
        self._active: OrderedDict[str, None] = OrderedDict()
        self.max_open = max(16, raise_fd_limit() - FD_RESERVE)
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
        self._unreadable: list[str] = []
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
        if self._copies:
            present = set(found)
            for path in [p for p in self._copies if p not in present]:
                del self._copies[path]
        new = [p for p in found if p not in self._tails and not self._excluded(p)]
        if new:
            self._add_tails(new)

    def _add_tails(self, paths: list[str]) -> None:
        """Follow new files, one reader per file *identity* (device and inode), whatever its
        name: a file rotated to a name that is itself ``*.jsonl`` (``events.rank0.1.jsonl``)
        goes on from where the tail that read it under its old name left it, and while that
        tail still reads it the new name waits; a file checkpointed under its old name is
        resumed under its new one after a restart. A file that is a copy of a followed one
        (copytruncate to a ``*.jsonl`` name: :meth:`_copy_of`) is not followed at all; the
        tail of the original reads on in it if it was behind. Nothing is read twice."""
        for tail in self._tails.values():
            for left, where in tail.retired:
                self._retired[left] = where
            tail.retired.clear()
        while len(self._retired) > MAX_RETIRED:
            del self._retired[next(iter(self._retired))]
        claimed = {t.identity for t in self._tails.values()}
        for path in originals_first(paths):
            pos = self._positions.pop(path, None)
            try:
                st = os.stat(path)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
            copy = self._copies.get(path)
            if copy is not None:
                if ident == (copy.get("dev"), copy.get("ino")):
                    continue  # still the copy it was
                del self._copies[path]  # another file took the name
            if ident is not None:
                if ident in claimed:
                    if pos is not None:
                        self._positions[path] = pos
                    continue  # read under its other name for now; taken over once left
                retired = self._retired.pop(ident, None)
                if retired is not None and not holds(path, retired):
                    retired = None  # the inode number was handed to a new file: not ours
                saved = self._saved_by_identity.pop(ident, None)
                if retired is not None:
                    pos = retired
                elif saved is not None and saved[0] != path:
                    self._positions.pop(saved[0], None)  # its old name holds another file
                    pos = saved[1]
                if pos is None and self._copy_of(path) is not None:
                    continue  # a copy, or maybe one still being written: looked at again
            self._make_room()
            tail = FileTail(path, from_start=self._from_start or pos is not None, position=pos,
                            skip_jsonl_siblings=True, hand_back_new_files=True,
                            may_read_copy=self._not_followed)
            carried = self._carried.pop(path, None)
            if carried is not None:
                tail.stats = carried.merge(tail.stats)
            self._tails[path] = tail
            if tail.is_open:
                self._active[path] = None
                self._saved_by_identity.pop(tail.identity, None)  # type: ignore[arg-type]
            claimed.add(tail.identity)

    def _not_followed(self, path: str) -> bool:
        """Whether no tail of this directory reads ``path`` as a stream of its own."""
        return path not in self._tails

    def _copy_of(self, path: str) -> str | None:
        """The followed file that the new file ``path`` is a copy of, or may be while it is
        still being copied; ``None`` when it is a file of its own.

        copytruncate copies a file and truncates it; when the copy's name is itself
        ``*.jsonl`` (``events.rank0.1.jsonl``, logrotate's ``extension .jsonl``) it would be
        read as a new stream: every event twice. A copy is a rotated name of a followed file
        (:func:`.rotated.rotated_name`) that starts with the bytes that file started with:
        its head now, or that of a content read before (rotated or truncated away). A file
        shorter than such a head that starts like it may be a copy still being written: it
        waits for the next scan. A copy found is remembered (and checkpointed) by identity.
        """
        folder, name = os.path.split(path)
        owners = [(p, self._tails[p]) for p in originals_of(folder, name)
                  if p in self._tails and p != path]
        if not owners:
            return None
        fd = open_regular(path)
        if not isinstance(fd, int):
            return None
        try:
            st = os.fstat(fd)
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
        except OSError:
            return None
        finally:
            os.close(fd)
        for owner, tail in owners:
            for known in tail.known_heads():
                if b"\n" not in known:
                    continue  # not one whole line yet: too little to tell a copy by
                if head.startswith(known):
                    self._copies[path] = {
                        "offset": st.st_size, "line": 0, "dev": st.st_dev, "ino": st.st_ino,
                        "fp_len": len(head), "discarding": False, "copy_of": owner,
                        "fp_hash": hashlib.blake2b(head, digest_size=8).hexdigest()}
                    return owner
                if len(head) < len(known) and known.startswith(head):
                    return owner  # perhaps a copy still being written: decided later
        return None

    def _drop_replaced(self) -> list[str]:
        """Tails that found a new file at their path hand it back: the tail goes, and the
        next scan gives the path a tail by the file's identity (another tail may have read
        it under its old name: rotation to a ``*.jsonl`` name that shifts, ``.1.jsonl`` to
        ``.2.jsonl``) or content (a copy), never a fresh read of what was read."""
        replaced, self._replaced = self._replaced, []
        for path in replaced:
            tail = self._tails.pop(path)
            for left, where in tail.retired:
                self._retired[left] = where
            tail.close()
            self._carried[path] = tail.stats
            self._active.pop(path, None)
            self._unread.discard(path)
        if replaced:
            with self._dirty_lock:
                self._dirty.update(replaced)  # rescanned by the next poll
        return replaced

    def _walk(self, top: str) -> list[str]:
        """``*.jsonl`` files under ``top`` (symlinked files yes, symlinked folders not entered).

        A folder is listed again only when its mtime changed (an entry was added, removed or
        renamed), so a rescan of 1,024 idle rank files in 128 folders costs 129 ``stat`` calls,
        not a thousand directory entries (nor the inotify open/close events that listing a
        watched folder raises). ``os.scandir`` tells files from folders without a ``stat`` per
        entry when a folder does need listing.
        """
        found: list[str] = []
        unreadable: list[str] = []
        listings: dict[str, tuple[int, list[str], list[str]]] = {}
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                files, folders = self._list(folder, listings)
            except FileNotFoundError:
                if folder == top:
                    raise
                continue  # a rank folder that vanished: the rest still count
            except OSError as exc:
                if folder == top:
                    raise
                # Unreadable (its mode, its owner): the rest still count, but a rank in it
                # may hold the NaN, so the monitor is partly blind and says so.
                unreadable.append(f"{folder}: {exc.strerror or exc} (its files are not read)")
                continue
            found += files
            stack += folders
        self._listings = listings  # folders no longer there are forgotten
        self._unreadable = unreadable
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
                if entry.name.endswith(".jsonl") and not entry.is_dir():
                    # A FIFO or socket named like a rank file too: its tail refuses it and
                    # says so (degraded), rather than the folder hiding it.
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
        """What :meth:`poll` returns, as blocks of consecutive lines of one file.

        At most about :data:`MAX_POLL_BYTES` are read per poll, however many files are
        behind (a restart on a 4,096-rank run): the files not reached are read first by the
        next poll. At most :attr:`max_open` files are held open; the least recently active
        are closed and reopened when they change.
        """
        now = time.monotonic()
        full = not self._watched or now - self._last_full >= self._rescan_interval
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        dirty |= self._unread
        if full:
            self._last_full = now
            self._scan()
            # With a watcher, the rescan is only the net under a dropped kernel event: a file
            # nobody reported is read only if stat says it changed. Without one (--poll), every
            # file gets the full check, its head compared too.
            watched = self._watched
            todo = [(path, watched and path not in dirty) for path in self._tails]
        else:
            if any(p not in self._tails and p.endswith(".jsonl") for p in dirty):
                self._scan()
            # In the tails' order, as a full pass reads.
            todo = [(path, False) for path in self._tails if path in dirty]
        out = self._read(todo)
        replaced = self._drop_replaced()
        if replaced:
            # Their paths get tails by identity or content at once, and are read in this
            # poll: a batch run (--once) ends at the first poll that brings nothing.
            self._scan()
            unread = self._unread
            out += self._read([(p, False) for p in replaced if p in self._tails])
            self._unread |= unread  # what the first pass did not reach still goes first
            self._drop_replaced()  # a file handed back twice in a poll waits for the next
        self._keep_behind_dirty()
        return out

    def _read(self, todo: list[tuple[str, bool]]) -> list[Block]:
        """Read ``(path, quick)`` in order, files not read in the last cut-short poll first,
        until the poll holds :data:`MAX_POLL_BYTES`; the rest wait in ``_unread``."""
        if self._unread:
            unread = self._unread
            todo.sort(key=lambda item: item[0] not in unread)  # stable: order kept otherwise
        out: list[Block] = []
        held = 0
        tails, active = self._tails, self._active
        for i, (path, quick) in enumerate(todo):
            if held >= MAX_POLL_BYTES:
                self._unread = {p for p, _ in todo[i:]}
                break
            tail = tails[path]
            if not tail.is_open:
                self._make_room()
            blocks = tail.read_blocks(quick)
            if tail.replaced:
                self._replaced.append(path)
            if tail.is_open:
                active[path] = None
                active.move_to_end(path)
            if blocks:
                out += blocks
                held += sum(len(b.raw) if b.raw is not None else 80 * b.count for b in blocks)
        else:
            self._unread = set()
        return out

    def _make_room(self) -> None:
        """Close the least recently read idle files while too many are open."""
        active, tails = self._active, self._tails
        while len(active) >= self.max_open:
            for path in active:
                tail = tails.get(path)
                if tail is not None:
                    tail.suspend()
                    if tail.is_open:
                        continue  # mid-line or behind: kept open
                del active[path]
                break
            else:
                return  # every open file is busy: the limit is soft, stay over it

    def _keep_behind_dirty(self) -> None:
        """A file read only in part this poll is read on by the next, event or not."""
        behind = [p for p, t in self._tails.items() if t.behind]
        if behind:
            with self._dirty_lock:
                self._dirty.update(behind)

    def problems(self) -> list[str]:
        """An unreadable or vanished directory, or files that cannot be read."""
        found = [self._error] if self._error else []
        found += self._unreadable
        found += [f"{p}: {t.error}" for p, t in self._tails.items() if t.error]
        found += [f"{p}: {t.losses}" for p, t in self._tails.items() if t.losses]
        return found

    @property
    def exhausted(self) -> bool:
        """A directory can always get new files."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """Counters per file."""
        return {**self._carried, **{p: t.stats for p, t in self._tails.items()}}

    def positions(self) -> dict[str, dict[str, Any]]:
        """Checkpointable position of every file (and of files not yet seen again, and of
        the copies not read)."""
        return {**self._positions, **self._copies,
                **{p: t.position() for p, t in self._tails.items()}}

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
