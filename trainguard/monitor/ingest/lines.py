"""Cutting the chunks a tail reads into complete lines: :class:`LineCutter`.

A line goes out only once its newline has arrived; the start of a line still being written is
held (``_partial``) for the next chunk; CRs are stripped, NUL bytes (the hole copytruncate
leaves) dropped and over-long lines skipped, each counted in the tail's :class:`TailStats`, and
memory stays bounded by ``max_line_bytes``. The common chunk (no CR, no line over the limit)
goes out as one block of its bytes as read, counted but not split.

:class:`~trainguard.monitor.ingest.tail.FileTail` is a ``LineCutter``: this is the half of it
that looks at bytes, the tail the half that looks at files (identity, rotation, truncation).
"""

from __future__ import annotations

from trainguard.monitor.ingest.blocks import Block, count_newlines, lines_bytes
from trainguard.monitor.ingest.tail_stats import TailStats

__all__ = ["LineCutter"]


class LineCutter:
    """The line-cutting state and steps of a tail (see the module docstring)."""

    path: str
    max_line_bytes: int
    stats: TailStats
    #: Number of the last complete line handed out (1-based numbering).
    line_no: int
    _partial: bytes
    _discarding: bool

    def _split(self, chunk: bytes, out: list[Block]) -> None:
        if b"\x00" in chunk:
            # The hole copytruncate leaves before a non-append writer's next write.
            self.stats.skip(self.line_no + 1, "nul_bytes", f"{chunk.count(0)} NUL bytes dropped")
            chunk = chunk.replace(b"\x00", b"")
        end = chunk.rfind(b"\n") + 1  # past the last complete line; 0 when there is none
        if not (end and self._take_whole(chunk, end, out)):
            self._take_lines(chunk, out)
            return
        self._keep_partial(chunk[end:])

    def _take_whole(self, chunk: bytes, end: int, out: list[Block]) -> bool:
        """The common chunk: every line in it as it stands (no CR, none over the limit) goes
        out as one block of raw bytes, counted but not split (see :class:`Block`). False,
        with nothing done, for any other chunk."""
        limit = self.max_line_bytes
        if len(chunk) > limit or b"\r" in chunk:
            return False
        head = self._partial  # the start of the first line, read with the previous chunk
        first = self.line_no + 1
        if self._discarding:  # the end of an over-long line: drop it, count its number
            start = chunk.index(b"\n") + 1
            first += 1
        else:
            start = 0
            # Only the first line can be too long (it starts with the partial line), or end in
            # a CR (one that came with the partial line, before an empty rest of the line).
            newline = chunk.index(b"\n")
            if len(head) + newline > limit or (newline == 0 and head.endswith(b"\r")):
                return False
        self._discarding = False
        self._partial = b""
        count = count_newlines(chunk, start)
        self.line_no = first - 1 + count
        if count:
            out.append(Block.of_raw(self.path, first, lines_bytes(head, chunk, start, end),
                                    count))
            self.stats.lines += count
        return True

    def _take_lines(self, chunk: bytes, out: list[Block]) -> None:
        """Any chunk, line by line: CRs stripped, over-long lines counted and dropped."""
        stats = self.stats
        limit = self.max_line_bytes
        pieces = chunk.split(b"\n")
        rest = pieces.pop()  # after the last newline: the start of a line still being written
        first = self.line_no + 1
        if pieces:
            start = 0  # where the first line handed out starts in ``chunk``
            head = self._partial  # its start, read with the previous chunk
            if self._discarding:  # the end of an over-long line: drop it, count its number
                self._discarding = False
                start = len(pieces[0]) + 1
                del pieces[0]
                first += 1
            elif head:
                pieces[0] = head + pieces[0]
                self._partial = b""
            count = len(pieces)
            self.line_no = first - 1 + count
            # Whole-chunk checks run in C; the per-line loop below is only for odd chunks.
            # (The first piece may end in a CR that came with the last chunk's partial line.)
            # Only the first line can be longer than a chunk no longer than the limit (it
            # starts with the partial line): then it is the only one measured.
            if (b"\r" not in chunk and (not count or not pieces[0].endswith(b"\r"))
                    and (not count or (len(pieces[0]) if len(chunk) <= limit
                                       else max(map(len, pieces))) <= limit)):
                if count:
                    # The lines' bytes as read (one copy at most), for a decoder that takes
                    # the whole block at once (see Monitor.process_blocks).
                    raw = lines_bytes(head, chunk, start, len(chunk) - len(rest))
                    out.append(Block(self.path, first, pieces, raw))
                    stats.lines += count
            else:
                run: list[bytes] = []  # consecutive lines kept: one block per run
                run_first = first
                for number, piece in enumerate(pieces, first):
                    if len(piece) > limit:
                        stats.skip(number, "line_too_long", f"{len(piece)} bytes")
                        if run:
                            out.append(Block(self.path, run_first, run))
                            run = []
                        run_first = number + 1
                        continue
                    if piece.endswith(b"\r"):
                        piece = piece[:-1]
                    stats.lines += 1
                    run.append(piece)
                if run:
                    out.append(Block(self.path, run_first, run))
        self._keep_partial(rest)

    def _keep_partial(self, rest: bytes) -> None:
        """Hold ``rest``, the start of a line still being written, for the next chunk."""
        if self._discarding:
            return
        limit = self.max_line_bytes
        if len(self._partial) + len(rest) > limit:
            self.stats.skip(self.line_no + 1, "line_too_long", f"over {limit} bytes")
            self._partial, self._discarding = b"", True
            return
        self._partial += rest
