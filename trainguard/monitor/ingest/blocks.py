"""What a tail hands the monitor: :class:`Line` (one complete line) and :class:`Block` (a run of
consecutive lines of one stream, usually with their bytes as read), and :func:`expand_blocks`.

Kept apart from the tailer because every source (pipes, trackers, GPU samples) and the loop use
these types, and none of them needs to know how a file is followed.
"""

from __future__ import annotations

from itertools import repeat
from typing import NamedTuple

__all__ = ["Block", "Line", "expand_blocks", "lines_bytes"]


class Line(NamedTuple):
    """One complete line and where it came from (re-exported by :mod:`.sources`).

    A named tuple, so a chunk's lines are built in C (``tuple.__new__`` over ``zip``) rather
    than by one Python ``__init__`` call per line: at a million lines a second that matters.
    """

    stream: str
    number: int
    data: bytes


class Block:
    """Consecutive complete lines of one stream, numbered from ``first``: what a file hands the
    monitor per read, so no per-line object is built before the monitor decodes the line.

    ``raw``, when not ``None``, is exactly ``b"".join(line + b"\n" for line in lines)``: the
    bytes as read (one copy of the chunk at most), so the monitor can decode the whole block in
    one call without joining its lines again. Left ``None`` for a chunk whose lines are not
    its bytes as they stand (a CR stripped, an over-long line dropped).

    A block read whole (:meth:`of_raw`) splits ``raw`` into ``lines`` only when they are first
    asked for: a monitor that decodes the block whole never needs them, and splitting a
    megabyte into bytes objects costs about a tenth of decoding it.
    """

    __slots__ = ("stream", "first", "count", "raw", "_lines")

    def __init__(self, stream: str, first: int, lines: list[bytes],
                 raw: bytes | None = None) -> None:
        self.stream = stream
        self.first = first
        #: How many lines: ``len(lines)``, known without splitting ``raw``.
        self.count = len(lines)
        self.raw = raw
        self._lines: list[bytes] | None = lines

    @classmethod
    def of_raw(cls, stream: str, first: int, raw: bytes, count: int) -> Block:
        """The ``count`` lines of ``raw`` (each ending in a newline, the last included)."""
        block = cls.__new__(cls)
        block.stream, block.first, block.count, block.raw = stream, first, count, raw
        block._lines = None
        return block

    @property
    def lines(self) -> list[bytes]:
        """The lines, without their newlines."""
        lines = self._lines
        if lines is None:
            assert self.raw is not None
            lines = self._lines = self.raw.split(b"\n")
            lines.pop()  # after the last newline: nothing
        return lines

    def __repr__(self) -> str:
        return f"Block({self.stream!r}, {self.first}, {self.count} lines)"


def expand_blocks(blocks: list[Block]) -> list[Line]:
    """The lines of ``blocks``, one :class:`Line` each, in order."""
    out: list[Line] = []
    for block in blocks:
        first = block.first
        out.extend(map(_new_tuple, repeat(Line), zip(
            repeat(block.stream), range(first, first + block.count), block.lines)))
    return out


_new_tuple = tuple.__new__


def lines_bytes(head: bytes, chunk: bytes, start: int, end: int) -> bytes:
    """The bytes of the lines handed out: ``head`` (read with the last chunk), then
    ``chunk[start:end]``; one copy at most, none when the chunk ends with its last line."""
    if head or start:
        return b"".join((head, memoryview(chunk)[start:end]))
    return chunk if end == len(chunk) else chunk[:end]
