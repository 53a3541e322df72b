"""What a tail hands the monitor: :class:`Line` (one complete line) and :class:`Block` (a run of
consecutive lines of one stream, usually with their bytes as read), and :func:`expand_blocks`.

Kept apart from the tailer because every source (pipes, trackers, GPU samples) and the loop use
these types, and none of them needs to know how a file is followed.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, NamedTuple

__all__ = ["Block", "Line", "count_newlines", "expand_blocks", "line_start", "lines_bytes",
           "one_value_a_line"]

#: Bytes from which numpy's vector compares beat ``bytes.count`` (a C loop a byte, ~2.5 GB/s
#: for one byte, ~1.3 GB/s for three): a megabyte chunk counts its newlines five times faster.
_NUMPY_BYTES = 1 << 16


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

    def around(self, k: int) -> tuple[Block | None, Line, Block | None]:
        """The lines before line ``k`` (0-based), line ``k`` and the lines after it, as blocks
        with their bytes (``None`` where there are no lines); for a block with ``raw``."""
        raw = self.raw
        assert raw is not None and 0 <= k < self.count
        start = line_start(raw, k)
        end = raw.index(b"\n", start)
        head = Block.of_raw(self.stream, self.first, raw[:start], k) if k else None
        rest = (Block.of_raw(self.stream, self.first + k + 1, raw[end + 1:],
                             self.count - k - 1) if k + 1 < self.count else None)
        return head, Line(self.stream, self.first + k, raw[start:end]), rest

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


def _np() -> Any:
    """numpy, as the rules import it (one BLAS thread): a large chunk means a backlog, whose
    batches import it anyway."""
    import trainguard.rules.vector  # noqa: F401, I001  (first: numpy on one BLAS thread)
    import numpy

    return numpy


def line_start(raw: bytes, k: int) -> int:
    """Where line ``k`` (0-based) of ``raw`` starts: past its ``k``-th newline."""
    if not k:
        return 0
    if len(raw) < _NUMPY_BYTES:
        at = -1
        for _ in range(k):
            at = raw.index(b"\n", at + 1)
        return at + 1
    np = _np()
    return int(np.flatnonzero(np.frombuffer(raw, np.uint8) == _NEWLINE)[k - 1]) + 1


def count_newlines(data: bytes, start: int = 0) -> int:
    """``data.count(b"\\n", start)``, in vector compares when ``data`` is large."""
    if len(data) - start < _NUMPY_BYTES:
        return data.count(b"\n", start)
    np = _np()
    return int(np.count_nonzero(np.frombuffer(data, np.uint8, offset=start) == _NEWLINE))


def one_value_a_line(raw: bytes, n: int) -> bool:
    """Whether each newline of ``raw`` but the last stands between ``}`` and ``{`` (``raw``:
    ``n`` lines, each ending in a newline): ``raw.count(b"}\\n{") == n - 1``, in vector
    compares when ``raw`` is large (the pattern cannot overlap itself, so the places where it
    stands are as many as ``bytes.count`` counts)."""
    if len(raw) < _NUMPY_BYTES:
        return raw.count(b"}\n{") == n - 1
    np = _np()
    a = np.frombuffer(raw, np.uint8)
    marks = a[1:-1] == _NEWLINE
    marks &= a[:-2] == _CLOSE
    marks &= a[2:] == _OPEN
    return int(np.count_nonzero(marks)) == n - 1


_NEWLINE, _CLOSE, _OPEN = ord("\n"), ord("}"), ord("{")
