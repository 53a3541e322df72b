"""A pipe as a source: stdin, or the merged output of the command ``trainguard run`` started.

A background thread reads the file descriptor in chunks, so the monitor loop never blocks on
it; each chunk is passed through byte for byte first (``--tee``, or the trainer's own output
under ``trainguard run``), then split into lines for parsing. A line without an end (a progress
bar that only ever writes ``\\r``) is dropped once it passes :data:`MAX_LINE` bytes and counted
as one ``line_too_long`` skip (its pieces are never parsed as lines: a NaN after a megabyte of
junk is no metric). Lines wait for the monitor in a queue bounded in bytes
(:data:`MAX_QUEUED_BYTES`); when it is full the reader waits, which blocks the writer on its
pipe: backpressure, counted in ``backpressure_waits``. Memory stays bounded whatever the other
end writes.
Before that, once a line without a newline holds :data:`REDRAW_FLUSH` bytes, its redraws up
to the last ``\\r`` are handed over as one line, so a program whose only output is a progress
bar (OpenRLHF's SFT, RM and DPO trainers print their metrics in the bar's postfix) is read as
it runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import BinaryIO

from trainguard.monitor.ingest.tail import Line, TailStats

__all__ = ["MAX_LINE", "PipeSource", "REDRAW_FLUSH"]

MAX_LINE = 1 << 20
#: Bytes of ``\r``-separated redraws without a newline after which they are handed over.
REDRAW_FLUSH = 4096
_READ = 1 << 16


#: Bytes of lines read from the pipe and not yet handed to the monitor. Past this the reader
#: thread waits (the writer then blocks on its full pipe: backpressure, counted), so a burst
#: of a few hundred megabytes cannot pile up in memory.
MAX_QUEUED_BYTES = 64 << 20


class _TooLong:
    """In the queue: a line over :data:`MAX_LINE` bytes was dropped (counted, never parsed)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class PipeSource:
    """Complete lines of a pipe; exhausted once the writer closed it and all lines were read."""

    #: Lines are still arriving until the pipe closes, even in ``--once`` mode.
    streaming = True

    def __init__(self, fd: int, name: str, *, passthrough: BinaryIO | None = None,
                 keep_last: int = 0, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.name = name
        self._fd = fd
        self._out = passthrough
        self._lines: deque[bytes | _TooLong | None] = deque()
        self._queued = 0
        self._max_queued = max_queued_bytes
        self._cond = threading.Condition()
        #: How often, and for how long, the reader waited for the monitor to catch up.
        self.backpressure_waits = 0
        self.backpressure_seconds = 0.0
        self._done = False
        self._number = 0
        self._stats = TailStats()
        #: The last ``keep_last`` lines as text, for a postmortem.
        self.tail: deque[str] = deque(maxlen=keep_last)
        self._keep = keep_last > 0
        #: When output last arrived (monotonic), for hang detection.
        self.last_output_at = time.monotonic()
        self._thread = threading.Thread(target=self._pump, name=f"trainguard-{name}",
                                        daemon=True)
        self._thread.start()

    def _put(self, items: list[bytes | _TooLong | None], size: int) -> None:
        with self._cond:
            if self._queued and self._queued + size > self._max_queued:
                self.backpressure_waits += 1
                started = time.monotonic()
                while self._queued and self._queued + size > self._max_queued:
                    self._cond.wait(0.5)
                self.backpressure_seconds += time.monotonic() - started
            self._lines.extend(items)
            self._queued += size

    def _pump(self) -> None:
        buffer = b""
        dropping = 0  # bytes of an over-long line dropped so far (0: not inside one)
        try:
            while True:
                chunk = os.read(self._fd, _READ)
                if not chunk:
                    break
                self.last_output_at = time.monotonic()
                if self._out is not None:
                    try:
                        self._out.write(chunk)
                        self._out.flush()
                    except (OSError, ValueError):
                        self._out = None  # our reader went away; keep monitoring
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                items: list[bytes | _TooLong | None] = list(lines)
                if dropping and items:
                    # The end of the over-long line: dropped with the rest of it.
                    items[0] = _TooLong(dropping + len(lines[0]))
                    dropping = 0
                if not dropping and len(buffer) >= REDRAW_FLUSH:
                    cut = buffer.rfind(b"\r") + 1
                    if cut and len(buffer) < MAX_LINE:
                        items.append(buffer[:cut])  # whole redraws; the one being drawn waits
                        buffer = buffer[cut:]
                if len(buffer) >= MAX_LINE:
                    # No newline in a megabyte: the pieces of such a line are never lines.
                    dropping += len(buffer)
                    buffer = b""
                if items:
                    self._put(items, len(chunk))
        except OSError:
            pass
        finally:
            tail: list[bytes | _TooLong | None] = []
            if dropping:
                tail.append(_TooLong(dropping + len(buffer)))
            elif buffer:
                tail.append(buffer)
            tail.append(None)
            self._put(tail, 0)

    def poll(self) -> list[Line]:
        """Lines that arrived since the last call (a trailing ``\\r`` removed)."""
        out: list[Line] = []
        name, keep, stats = self.name, self._keep, self._stats
        with self._cond:
            lines, self._lines = self._lines, deque()
            self._queued = 0
            self._cond.notify_all()
        for raw in lines:
            if raw is None:
                self._done = True
                break
            self._number += 1
            if type(raw) is _TooLong:
                stats.skip(self._number, "line_too_long", f"{raw.size} bytes, over {MAX_LINE}")
                continue
            data: bytes = raw  # type: ignore[assignment]
            if data.endswith(b"\r"):
                data = data[:-1]
            stats.lines += 1
            if keep:
                self.tail.append(data.decode("utf-8", "replace")[-1000:])
            out.append(Line(name, self._number, data))
        return out

    def problems(self) -> list[str]:
        """A pipe has no problems the monitor can see."""
        return []

    @property
    def exhausted(self) -> bool:
        """True once the pipe closed and every line was handed out."""
        return self._done

    def stats(self) -> dict[str, TailStats]:
        """Counters of the pipe (``backpressure`` waits among the skips' neighbours)."""
        return {self.name: self._stats}

    def join(self, timeout: float) -> None:
        """Wait for the reader to reach the end of the pipe."""
        self._thread.join(timeout)

    def close(self) -> None:
        """The reader thread is a daemon and ends with the pipe."""
