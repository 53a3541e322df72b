"""A pipe as a source: stdin, or the merged output of the command ``trainguard run`` started.

A background thread reads the file descriptor in chunks, so the monitor loop never blocks on
it; each chunk is passed through byte for byte first (``--tee``, or the trainer's own output
under ``trainguard run``), then split into lines for parsing. A line without an end (a progress
bar that only ever writes ``\\r``) is handed over once it reaches :data:`MAX_LINE` bytes, so
memory stays bounded whatever the other end writes; before that, once it holds
:data:`REDRAW_FLUSH` bytes, its redraws up to the last ``\\r`` are handed over as one line, so
a program whose only output is a progress bar (OpenRLHF's SFT, RM and DPO trainers print their
metrics in the bar's postfix) is read as it runs, not once a megabyte.
"""

from __future__ import annotations

import os
import queue
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


class PipeSource:
    """Complete lines of a pipe; exhausted once the writer closed it and all lines were read."""

    #: Lines are still arriving until the pipe closes, even in ``--once`` mode.
    streaming = True

    def __init__(self, fd: int, name: str, *, passthrough: BinaryIO | None = None,
                 keep_last: int = 0) -> None:
        self.name = name
        self._fd = fd
        self._out = passthrough
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
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

    def _pump(self) -> None:
        buffer = b""
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
                for raw in lines:
                    self._queue.put(raw)
                if len(buffer) >= REDRAW_FLUSH:
                    cut = buffer.rfind(b"\r") + 1
                    if cut and len(buffer) < MAX_LINE:
                        self._queue.put(buffer[:cut])  # whole redraws; the one being drawn waits
                        buffer = buffer[cut:]
                if len(buffer) >= MAX_LINE:
                    self._queue.put(buffer)
                    buffer = b""
        except OSError:
            pass
        finally:
            if buffer:
                self._queue.put(buffer)
            self._queue.put(None)

    def poll(self) -> list[Line]:
        """Lines that arrived since the last call (a trailing ``\\r`` removed)."""
        out: list[Line] = []
        name, keep, stats = self.name, self._keep, self._stats
        while True:
            try:
                raw = self._queue.get_nowait()
            except queue.Empty:
                return out
            if raw is None:
                self._done = True
                return out
            data = raw[:-1] if raw.endswith(b"\r") else raw
            self._number += 1
            stats.lines += 1
            if keep:
                self.tail.append(data.decode("utf-8", "replace")[-1000:])
            out.append(Line(name, self._number, data))

    def problems(self) -> list[str]:
        """A pipe has no problems the monitor can see."""
        return []

    @property
    def exhausted(self) -> bool:
        """True once the pipe closed and every line was handed out."""
        return self._done

    def stats(self) -> dict[str, TailStats]:
        """Counters of the pipe."""
        return {self.name: self._stats}

    def join(self, timeout: float) -> None:
        """Wait for the reader to reach the end of the pipe."""
        self._thread.join(timeout)

    def close(self) -> None:
        """The reader thread is a daemon and ends with the pipe."""
