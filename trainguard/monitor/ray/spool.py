"""The head's spool: what every node's agent shipped, one file per node and stream, exactly once.

An agent ships *chunks*: the complete lines of one stream (a file of its node's run directory,
or its GPU samples) that follow byte ``start`` of everything that stream ever shipped. The
spool appends each chunk to ``SPOOL/<node>/<stream>`` and answers with the stream's new length:
that length is the acknowledgement, and what the agent checkpoints. Since the length of a spool
file *is* what was received, de-duplication by stream and offset needs no table of its own and
survives the monitor's restart: a chunk shipped again (the agent died between our answer and
its checkpoint, or our answer was lost) starts below the length and only its unseen tail, if
any, is appended. A chunk that starts beyond the length leaves a hole: it is appended and the
hole reported (and filled with blank lines), never hidden (the spool lost bytes it had
acknowledged: a crash of the head's host before the page cache reached the disk).

The monitor follows the spool as an ordinary run directory (``DirectorySource``), so tailing,
checkpoints, the alert ledger and ``--record`` work on Ray exactly as on one machine. Line
numbers in its messages are those of the spool file (a node's file rotated on the node is one
growing spool file here).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "Spool", "safe_part"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_part(name: str) -> str:
    """``name`` as one path component (a node label): no separators, no ``..``, never empty."""
    cleaned = _UNSAFE.sub("_", name).strip(".") or "_"
    return cleaned[:120]


def _safe_stream(stream: str) -> str:
    """A stream (a path relative to the node's run directory) as a relative path here."""
    parts = [safe_part(p) for p in stream.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "_"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines of one stream, starting at byte ``start`` of everything it shipped."""

    stream: str
    start: int
    data: bytes

    @property
    def end(self) -> int:
        """The stream's length once this chunk is in."""
        return self.start + len(self.data)


class Spool:
    """Appends shipped chunks to ``root/<node>/<stream>``, once each (see the module docstring).

    Safe to call from several threads (the monitor actor serves agents concurrently).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lengths: dict[str, int] = {}
        #: Chunks (or parts of chunks) received again and dropped, and their bytes.
        self.duplicates = 0
        self.duplicate_bytes = 0
        self.bytes_appended = 0
        #: ``(node, stream, expected start, chunk start)`` of every chunk refused for a hole.
        self.gaps: list[tuple[str, str, int, int]] = []

    def path(self, node: str, stream: str) -> Path:
        """Where the spool keeps ``stream`` of ``node``."""
        return self.root / safe_part(node) / _safe_stream(stream)

    def length(self, node: str, stream: str) -> int:
        """Bytes of ``stream`` received so far (0 for a stream never seen)."""
        key = str(self.path(node, stream))
        with self._lock:
            return self._length(key)

    def _length(self, key: str) -> int:
        known = self._lengths.get(key)
        if known is None:
            try:
                known = os.stat(key).st_size
            except FileNotFoundError:
                known = 0
            self._lengths[key] = known
        return known

    def append(self, node: str, chunks: list[Chunk]) -> dict[str, int]:
        """Take ``chunks`` of ``node``; return each stream's length after them (the ack)."""
        acked: dict[str, int] = {}
        with self._lock:
            for chunk in chunks:
                path = self.path(node, chunk.stream)
                key = str(path)
                length = self._length(key)
                if chunk.start > length:
                    # Taken anyway, so that the agent goes on; the hole is reported, and filled
                    # with blank lines (which the reader ignores) so that offsets stay lengths.
                    self.gaps.append((node, chunk.stream, length, chunk.start))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "ab") as handle:
                        handle.write(b"\n" * (chunk.start - length))
                    length = self._lengths[key] = chunk.start
                skip = length - chunk.start
                if skip:
                    self.duplicates += 1
                    self.duplicate_bytes += min(skip, len(chunk.data))
                fresh = chunk.data[skip:]
                if fresh:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "ab") as handle:
                        handle.write(fresh)
                    length += len(fresh)
                    self._lengths[key] = length
                    self.bytes_appended += len(fresh)
                acked[chunk.stream] = length
        return acked

    def problems(self) -> list[str]:
        """Holes: the spool lost bytes it had acknowledged."""
        return [f"{node}/{stream}: spool has {have} bytes but the agent resumed at {start}: "
                "bytes acknowledged earlier were lost on the head (host crash?); the gap is "
                "not monitored" for node, stream, have, start in self.gaps[:5]]
