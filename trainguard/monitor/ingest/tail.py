"""Following one file like ``tail -F``: complete lines only, across truncation and rotation.

A line is handed out only once its newline has arrived, so a partial last line is never parsed
early; the checkpointed position (:meth:`FileTail.position`) stops before it, so after a restart
it is read again from its start and handed out exactly once. A shrinking file (truncation,
copytruncate) restarts from offset 0; a new inode at the path (rename rotation, delete and
recreate) is followed after the old file is drained. A file is recognised by its *fingerprint*:
device, inode and its first bytes (checkpointed as a hash), as Filebeat does, so a file deleted
and recreated while the monitor was down (the kernel may hand out the same inode again) is read
from its start, not from a stale offset. The head is compared on every read, not only when the
size changed: a file truncated and rewritten to exactly the size we last saw (two polls apart,
or within one mtime tick) looks unchanged to ``stat`` and differs only in its content. Polling
cannot see one case: a rewrite to at least our offset whose first :data:`FINGERPRINT_BYTES`
are byte-identical to the old ones (no reader that does not keep the whole file can; ``tail -F``
and Filebeat miss it too). NUL bytes (the hole a copytruncate leaves before a non-append
writer's next line) are dropped and counted; over-long lines are skipped and counted, and
memory stays bounded by ``max_line_bytes`` (the cutting of chunks into lines: :mod:`.lines`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from trainguard.monitor.ingest.blocks import Block, Line, expand_blocks
from trainguard.monitor.ingest.lines import LineCutter
from trainguard.monitor.ingest.packed import Packed, find_packed, next_rotated
from trainguard.monitor.ingest.rotated import (
    find_by_fingerprint,
    find_copy,
)
from trainguard.monitor.ingest.rotated import (
    find_by_identity as _find_by_identity,
)
from trainguard.monitor.ingest.rotated import (
    open_regular as _open_regular,
)
from trainguard.monitor.ingest.tail_packed import CompressedCopyReading
from trainguard.monitor.ingest.tail_stats import MAX_EXAMPLES, TailStats

__all__ = ["Block", "FileTail", "Line", "TailStats", "expand_blocks", "MAX_LINE_BYTES",
           "FINGERPRINT_BYTES", "MAX_EXAMPLES"]

MAX_LINE_BYTES = 1 << 20
#: How many leading bytes identify a file's content (with its device and inode).
FINGERPRINT_BYTES = 256
#: Files read to their end remembered per tail, so a rotated name is never read twice.
MAX_RETIRED_IDS = 256
_READ_CHUNK = 1 << 20


def _head_hash(fd: int, length: int) -> str:
    return hashlib.blake2b(os.pread(fd, length, 0), digest_size=8).hexdigest()


class FileTail(CompressedCopyReading, LineCutter):
    """Follow one path; :meth:`read_lines` returns the complete lines appended since last call."""

    def __init__(self, path: str, *, from_start: bool = True,
                 max_line_bytes: int = MAX_LINE_BYTES,
                 position: dict[str, Any] | None = None,
                 skip_jsonl_siblings: bool = False,
                 hand_back_new_files: bool = False,
                 may_read_copy: Callable[[str], bool] | None = None) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.stats = TailStats()
        self.line_no = 0  # number of the last complete line handed out (1-based numbering)
        self.error: str | None = None
        #: More is already in the file than the last :meth:`read_lines` handed out (it reads
        #: about one chunk a call, so catching up on a big file never builds one huge batch).
        self.behind = False
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._head = b""  # the first bytes of the file (up to FINGERPRINT_BYTES), as last read
        self._head_hash: tuple[bytes, str] = (b"", "")
        self._seen: tuple[int, int] | None = None  # (size, mtime_ns) at the last full read
        self._partial = b""
        self._discarding = False  # inside an over-long line, dropping bytes until its newline
        #: ``(identity, position)`` of files this tail read to their end and left at a
        #: rotation: a run directory hands one to a tail of the rotated name, if it is a
        #: ``*.jsonl`` it also follows, so that file is not read twice.
        self.retired: list[tuple[tuple[int, int], dict[str, Any]]] = []
        #: The rotated name the checkpointed file was found under after a restart, if any.
        self.resumed_from: str | None = None
        #: Leave ``*.jsonl`` rotated names to the run directory that follows them itself.
        self.skip_jsonl_siblings = skip_jsonl_siblings
        #: With ``skip_jsonl_siblings``: whether a ``*.jsonl`` copy (copytruncate's) may be
        #: read on in all the same, since the run directory does not follow it itself.
        self.may_read_copy = may_read_copy
        #: A new file at the path is not opened here but left to the owner (a run directory,
        #: which knows whether another tail read it under another name): ``replaced`` says so.
        self.hand_back_new_files = hand_back_new_files
        self.replaced = False
        self._read_ids: dict[tuple[int, int], None] = {}  # files read to their end
        #: The heads of the files read to their end: how a compressed copy of one (a new
        #: inode, see packed.py) is told from a file not read yet.
        self._read_heads: dict[bytes, None] = {}
        #: The compressed copy being read instead of a file (packed.py), or None.
        self._packed: Packed | None = None
        self._suspended = False  # closed while idle (see suspend); reopened on change
        self._size_seen = 0  # the file's size at the last stat
        #: Bytes known to be lost (truncated before they were read, no copy found).
        self.lost_bytes = 0
        #: What was lost, for the verdict (degraded), or ``None``.
        self.losses: str | None = None
        opened = self._open(seek_end=not from_start)
        if position is not None and (opened or self.error is None):
            self._restore(position)

    # -- identity and checkpoints ----------------------------------------------------------

    def _open(self, seek_end: bool = False) -> bool:
        fd = _open_regular(self.path)
        if not isinstance(fd, int):
            self.error = fd
            return False
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._seen = None
        self._offset = st.st_size if seek_end else 0
        self._partial, self._discarding = b"", False
        self.line_no = 0
        self._head = b""
        self._refresh_fingerprint(st.st_size)
        self.error = None
        return True

    def _refresh_fingerprint(self, size: int) -> None:
        """Remember up to FINGERPRINT_BYTES of the head; grows with the file until it is full."""
        if self._fd is not None and len(self._head) < FINGERPRINT_BYTES and size > len(self._head):
            self._head = os.pread(self._fd, min(size, FINGERPRINT_BYTES), 0)

    def _same_content(self, size: int) -> bool:
        """False when the bytes we fingerprinted are no longer what the file starts with."""
        head = self._head
        if self._fd is None or not head:
            return True
        if size < len(head):
            return False
        return os.pread(self._fd, len(head), 0) == head

    def position(self) -> dict[str, Any]:
        """Where a restart should resume: the end of the last complete line handed out."""
        dev, ino = self._ino or (0, 0)
        offset = self._offset if self._discarding else self._offset - len(self._partial)
        head = self._head
        if self._head_hash[0] is not head:  # hashed once per head, not once per checkpoint
            self._head_hash = (head, hashlib.blake2b(head, digest_size=8).hexdigest()
                               if head else "")
        return {"offset": offset, "line": self.line_no, "dev": dev, "ino": ino,
                "fp_len": len(head), "fp_hash": self._head_hash[1],
                "discarding": self._discarding}

    @property
    def identity(self) -> tuple[int, int] | None:
        """``(device, inode)`` of the file being read, while one is open."""
        return self._ino if self._fd is not None else None

    def _restore(self, pos: dict[str, Any]) -> None:
        """Resume at a checkpointed position if the file there is still the same file, or
        if it is found next to it under a rotated name (``name.1``, ``name.jsonl.1``,
        ``name-20261201``, ``name.1.jsonl``): that file is read on from the position, then
        the file now at the path from its start, as a rotation seen live would be."""
        try:
            offset, line = int(pos["offset"]), int(pos["line"])
            ident = (int(pos["dev"]), int(pos["ino"]))
            fp_len, fp_hash = int(pos["fp_len"]), str(pos["fp_hash"])
        except (KeyError, TypeError, ValueError):
            self.stats.skip(0, "bad_checkpoint_entry")
            return
        if offset < 0 or fp_len < 0:
            self.stats.skip(0, "bad_checkpoint_entry")
            return
        same = False
        if self._fd is not None:
            size = os.fstat(self._fd).st_size
            same = (ident == self._ino and size >= offset and size >= fp_len
                    and (fp_len == 0 or _head_hash(self._fd, fp_len) == fp_hash))
        if not same:
            found = _find_by_identity(self.path, ident, fp_len, fp_hash, offset)
            if found is None:
                # copytruncate while we were down: the copy has a new inode, our first bytes.
                copy = find_by_fingerprint(self.path, fp_len, fp_hash, offset,
                                           self.skip_jsonl_siblings, self.may_read_copy)
                if isinstance(copy, str):
                    self._lose(copy)
                else:
                    found = copy
            if found is not None:
                self.resumed_from, fd = found
                self.close()
                st = os.fstat(fd)
                self._fd, self._ino, self._seen = fd, (st.st_dev, st.st_ino), None
                self._partial, self._head = b"", b""
                self._refresh_fingerprint(os.fstat(fd).st_size)
                self._offset, self.line_no = offset, line
                self._discarding = bool(pos.get("discarding", False))
                self.error = None
                return
            # Rotated and compressed while we were down (logrotate's compress): the rest is
            # only in the copy, found by its content.
            packed, lost = find_packed(self.path, fp_len, fp_hash, offset, line,
                                       head_bytes=FINGERPRINT_BYTES,
                                       skip_jsonl=self.skip_jsonl_siblings)
            if packed is not None:
                self._adopt_packed(packed, ident, offset, line,
                                   bool(pos.get("discarding", False)))
                return
            if lost is not None:
                self._lose(lost)
        if self._fd is None:
            return  # nothing at the path, nor next to it: read it whole once it appears
        if not same:
            # Replaced, truncated or rewritten while we were down: read the new file whole.
            self.stats.truncations += 1
            self.stats.skip(0, "replaced_while_down", f"checkpoint offset {offset}")
            return
        self._offset, self.line_no = offset, line
        self._discarding = bool(pos.get("discarding", False))

    # -- reading ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file descriptor (and a compressed copy being read)."""
        self._suspended = False
        if self._packed is not None:
            self._packed.close()
            self._packed = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def is_open(self) -> bool:
        """Whether this tail holds a file descriptor now."""
        return self._fd is not None

    def suspend(self) -> None:
        """Close the descriptor of an idle file but remember it (identity, offset, head): the
        next read reopens it, or finds it under its rotated name if it was renamed away
        meanwhile. So a run of more files than the descriptor limit allows is followed whole.
        """
        if self._fd is not None and not self._partial and not self.behind:
            os.close(self._fd)
            self._fd = None
            self._suspended = True

    def _resume(self, st: os.stat_result | None) -> bool:
        """Reopen a suspended file; False when it is gone (then the path is opened anew)."""
        self._suspended = False
        ident = self._ino
        assert ident is not None
        head = self._head
        fp_hash = hashlib.blake2b(head, digest_size=8).hexdigest() if head else ""
        if st is not None and (st.st_dev, st.st_ino) == ident:
            fd = _open_regular(self.path)
            if isinstance(fd, int):
                if os.fstat(fd).st_ino == ident[1]:
                    if not head or os.pread(fd, len(head), 0) == head:
                        self._fd = fd
                        return True
                    # The same inode, other content: truncated (copytruncate), or deleted
                    # and the inode handed to the file now at the path (rotated and
                    # compressed while closed). The rest may be in a compressed copy; else
                    # the truncation logic looks for a plain one.
                    if self._resume_packed(ident, fp_hash, FINGERPRINT_BYTES):
                        os.close(fd)
                        return True
                    self._fd = fd
                    return True
                os.close(fd)
        found = _find_by_identity(self.path, ident, len(head), fp_hash, self._offset)
        if found is not None:
            self._fd = found[1]
            return True
        return self._resume_packed(ident, fp_hash, FINGERPRINT_BYTES)

    def read_lines(self, quick: bool = False) -> list[tuple[int, bytes]]:
        """``(line_number, line)`` for complete lines appended since the last call."""
        return [(line.number, line.data) for line in self.read(quick)]

    def read(self, quick: bool = False) -> list[Line]:
        """The complete lines appended since the last call, as :class:`Line` of this path
        (see :meth:`read_blocks`)."""
        return expand_blocks(self.read_blocks(quick))

    def read_blocks(self, quick: bool = False) -> list[Block]:
        """The complete lines appended since the last call, as blocks of consecutive lines.

        ``quick``: return nothing at once when ``stat`` shows the file exactly as the last
        read left it (inode, size, mtime), skipping the head comparison. For a rescan under
        inotify, which reports every real change; never for polling.
        """
        out: list[Block] = []
        if self._suspended:
            try:
                st0: os.stat_result | None = os.stat(self.path)
            except OSError:
                st0 = None
            if st0 is not None and (st0.st_dev, st0.st_ino) == self._ino and \
                    (st0.st_size, st0.st_mtime_ns) == self._seen:
                return out  # idle and unchanged: stays closed
            if not self._resume(st0):
                self.stats.rotations += 1  # renamed away and gone while closed
                self._read_ids[self._ino] = None  # type: ignore[index]
                if self.hand_back_new_files:
                    self.replaced = True
                    return out
        if self._packed is not None:
            self._read_packed(out)
            return out
        if self._fd is None and not self._open():
            return out
        # One stat of the path answers both "rotated?" and, when not, "how big?" (the same
        # inode): two syscalls per idle file and rescan instead of three.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None  # deleted: keep the old descriptor until a new file appears
        except OSError as exc:
            self.error = exc.strerror
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._ino:
            if self.error:
                self.error = None
            seen = (st.st_size, st.st_mtime_ns)
            size_before, self._size_seen = self._size_seen, st.st_size
            if st.st_size < self._offset:
                self._size_seen = size_before  # what we knew of it before the truncation
            if quick and seen == self._seen:
                return out
            self._drain(out, st.st_size)
            self._seen = None if self.behind else seen  # "unchanged" must mean "all read"
            return out
        self._seen = None
        self._drain(out, os.fstat(self._fd).st_size)  # type: ignore[arg-type]
        if st is not None and not self.behind:
            # Rotation: a different file now lives at the path. The old one is drained above.
            self.stats.rotations += 1
            self._flush_partial_on_rotation()
            left = self._ino
            self._retire()
            # Two renames while the monitor was descheduled (or down): the file between the
            # one just drained and the one now at the path sits under a rotated name, plain
            # or compressed. It is read whole before the new file, as if its rotation had
            # been seen.
            mtime = self._left_mtime()
            self.close()
            self._next_file(out, mtime, {left, (st.st_dev, st.st_ino)})
        return out

    def _retire(self) -> None:
        """Remember the file just read to its end (identity, position, head), so that no
        rotated name, plain or compressed, of it is read again."""
        left = self._ino
        if left is None:
            return
        self.retired.append((left, self.position()))
        del self.retired[:-MAX_RETIRED_IDS]  # a lone file source never takes them
        self._read_ids[left] = None
        while len(self._read_ids) > MAX_RETIRED_IDS:
            del self._read_ids[next(iter(self._read_ids))]
        self._remember_head()

    def _remember_head(self) -> None:
        """Keep the head of the content read so far: a copy of it (compressed, or under a
        ``*.jsonl`` name) is then told from a file not read yet."""
        if self._head:
            self._read_heads[self._head] = None
            while len(self._read_heads) > MAX_RETIRED_IDS:
                del self._read_heads[next(iter(self._read_heads))]

    def known_heads(self) -> list[bytes]:
        """The first bytes of the file being read and of the contents read before it (files
        left at a rotation, contents truncated away): how a run directory tells a copy."""
        return [h for h in (self._head, *self._read_heads) if h]

    def _next_file(self, out: list[Block], mtime_ns: int,
                   exclude: set[tuple[int, int] | None]) -> None:
        """After a file is read to its end: the oldest unread file under a rotated name
        written since ``mtime_ns`` (see :func:`.packed.next_rotated`), else the file at the
        path, from its start; one read of it."""
        between = next_rotated(self.path, mtime_ns, exclude | set(self._read_ids),
                               self._read_heads, FINGERPRINT_BYTES, self.skip_jsonl_siblings)
        if isinstance(between, Packed):
            self._adopt_packed(between, (between.st.st_dev, between.st.st_ino), 0, 0, False)
            self._read_packed(out)
        elif between is not None:
            name, fd = between
            self._adopt(fd)
            self.resumed_from = name
            self._drain(out, os.fstat(fd).st_size)
        elif self.hand_back_new_files:
            self.replaced = True  # the owner decides who reads the file now at the path
        elif self._open():
            self._drain(out, os.fstat(self._fd).st_size)  # type: ignore[arg-type]

    def _left_mtime(self) -> int:
        try:
            return os.fstat(self._fd).st_mtime_ns  # type: ignore[arg-type]
        except OSError:
            return 0

    def _adopt(self, fd: int) -> None:
        """Read ``fd`` (a file under a rotated name) from its start, as the current file."""
        st = os.fstat(fd)
        self._fd, self._ino, self._seen = fd, (st.st_dev, st.st_ino), None
        self._offset, self.line_no = 0, 0
        self._partial, self._discarding, self._head = b"", False, b""
        self._refresh_fingerprint(st.st_size)

    def _flush_partial_on_rotation(self) -> None:
        if self._partial:
            self.stats.skip(self.line_no + 1, "partial_line_at_rotation",
                            f"{len(self._partial)} bytes without a newline")
            self._partial = b""

    def _find_copy(self) -> tuple[str, int] | None:
        """What copytruncate left next to this file, opened (see :func:`.rotated.find_copy`)."""
        return find_copy(self.path, self._head, self._offset, self._ino,
                         self.skip_jsonl_siblings, self.may_read_copy)

    def _restart_from_zero(self, reason: str) -> None:
        self.stats.truncations += 1
        if self._partial:
            self.stats.skip(self.line_no + 1, "truncated_partial_line")
        self.stats.skip(self.line_no + 1, reason, f"at offset {self._offset}")
        self._remember_head()
        self._offset, self._partial, self._discarding = 0, b"", False
        self.line_no = 0
        self._head = b""

    def _drain(self, out: list[Block], size: int) -> None:
        fd = self._fd
        assert fd is not None
        truncated = size < self._offset
        rewritten = not truncated and not self._same_content(size)
        copied = False
        if truncated or rewritten:  # copytruncate (and written again): start over
            copy = self._find_copy()
            if copy is not None:
                copied = True
                # copytruncate left a copy next to it (name.1): read on in the copy from our
                # offset, then the truncated file from its start, as after a rotation.
                self.resumed_from, fd = copy
                self.close()
                st = os.fstat(fd)
                self._fd, self._ino, self._seen = fd, (st.st_dev, st.st_ino), None
                self.stats.truncations += 1
                size = st.st_size
            else:
                unread = self._size_seen - self._offset
                if unread > 0:
                    self.lost_bytes += unread
                    self.losses = (f"truncated with {self.lost_bytes} bytes not yet read and "
                                   "no copy next to it: those lines are lost")
                    self.stats.skip(self.line_no + 1, "lost_at_truncation",
                                    f"{unread} bytes")
                # Rewritten: truncated and written again, past our offset or to the very size
                # we last saw (which the size alone cannot tell from "unchanged"): the head
                # is no longer ours.
                self._restart_from_zero("truncated" if truncated else "rewritten")
        self._refresh_fingerprint(size)
        # One chunk per call, or more while a chunk yields no complete line (inside an
        # over-long line): a call that leaves the tail behind has always handed out lines.
        start = len(out)
        while self._offset < size and len(out) == start:
            chunk = os.pread(fd, min(_READ_CHUNK, size - self._offset), self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            self._split(chunk, out)
        # After the copy, the truncated file may already hold new lines: read on at once,
        # not at the next change (its changes were already reported).
        self.behind = self._offset < size or copied
