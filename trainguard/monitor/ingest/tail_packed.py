"""The part of a tail that reads a file from its compressed copy (:mod:`.packed`): adopting the
copy at an offset, reading it a chunk at a time, going on to the next file at its end, and
saying what was lost when no copy can be trusted.

:class:`~trainguard.monitor.ingest.tail.FileTail` is a ``CompressedCopyReading``; the file
side (closing, retiring a file, choosing the next one) is the tail's own.
"""

from __future__ import annotations

import os

from trainguard.monitor.ingest.blocks import Block
from trainguard.monitor.ingest.lines import LineCutter
from trainguard.monitor.ingest.packed import DECODE_ERRORS, Packed, find_packed

__all__ = ["MAX_LOSSES_CHARS", "CompressedCopyReading"]

#: Characters of lost-data messages kept per tail (the first losses say where it started).
MAX_LOSSES_CHARS = 2000
#: Decompressed bytes read per call from a copy (as a plain file's read).
_READ_CHUNK = 1 << 20


class CompressedCopyReading(LineCutter):
    """Reading on in a compressed copy; the tail supplies the file-side steps."""

    skip_jsonl_siblings: bool
    losses: str | None
    resumed_from: str | None
    error: str | None
    behind: bool
    _packed: Packed | None
    _ino: tuple[int, int] | None
    _seen: tuple[int, int] | None
    _offset: int
    _head: bytes

    def close(self) -> None:  # pragma: no cover - FileTail's
        raise NotImplementedError

    def _retire(self) -> None:  # pragma: no cover - FileTail's
        raise NotImplementedError

    def _flush_partial_on_rotation(self) -> None:  # pragma: no cover - FileTail's
        raise NotImplementedError

    def _next_file(self, out: list[Block], mtime_ns: int,
                   exclude: set[tuple[int, int] | None]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _resume_packed(self, ident: tuple[int, int], fp_hash: str, head_bytes: int) -> bool:
        """Read on in the compressed copy of the closed file, if one holds it (packed.py)."""
        packed, lost = find_packed(self.path, len(self._head), fp_hash, self._offset,
                                   self.line_no, head_bytes=head_bytes,
                                   skip_jsonl=self.skip_jsonl_siblings)
        if packed is not None:
            self._adopt_packed(packed, ident, self._offset, self.line_no, self._discarding)
            return self._packed is not None
        if lost is not None:
            self._lose(lost)
        return False

    def _adopt_packed(self, packed: Packed, ident: tuple[int, int], offset: int, line: int,
                      discarding: bool) -> None:
        """Read on in ``packed`` (a compressed copy, positioned at decompressed byte
        ``offset``, the end of line ``line``) as the file of identity ``ident``: a checkpoint
        taken meanwhile names that file and offset, and finds the copy again by its head."""
        self.close()
        if not packed.skip_to(offset):  # a copy opened for its head: back to the offset
            packed.close()
            self._lose(f"{packed.name}, the compressed copy of {self.path}, cannot be read "
                       f"from byte {offset}: the rest of that file after line {line} is lost")
            return
        self._packed = packed
        self.resumed_from = packed.name
        self._ino, self._seen = ident, None
        self._offset, self.line_no = offset, line
        self._partial, self._discarding, self._head = b"", discarding, packed.head
        self.error = None

    def _read_packed(self, out: list[Block]) -> None:
        """One chunk of the compressed copy (more while no line is complete); at its end,
        on to the next file, as after a rotation."""
        packed = self._packed
        assert packed is not None
        start = len(out)
        self.behind = True
        while len(out) == start:
            try:
                chunk = packed.reader.read(_READ_CHUNK)
            except DECODE_ERRORS as exc:
                self._lose(f"{packed.name}, the compressed copy of {self.path}, is damaged or "
                           f"cut short after line {self.line_no} ({exc}): the rest of that "
                           "file is lost")
                chunk = b""
            if not chunk:
                self._packed = None
                packed.close()
                self.stats.rotations += 1
                self._flush_partial_on_rotation()
                self._retire()
                self._next_file(out, packed.st.st_mtime_ns, {self._path_identity()})
                return
            self._offset += len(chunk)
            self._split(chunk, out)

    def _path_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _lose(self, what: str) -> None:
        """Say that lines are lost (an ingest problem: the verdict is degraded)."""
        self.stats.skip(self.line_no + 1, "lost_with_rotated_file", what)
        if self.losses is None:
            self.losses = what
        elif len(self.losses) < MAX_LOSSES_CHARS:
            self.losses = f"{self.losses}; {what}"
