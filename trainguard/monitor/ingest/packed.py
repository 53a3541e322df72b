"""Reading a rotated file from its compressed copy: what logrotate's ``compress`` leaves.

logrotate compresses a rotated file (``events.jsonl.1`` -> ``events.jsonl.1.gz``, at once, or
one rotation later with ``delaycompress``) and removes the plain one. While the monitor holds
the file open it reads on through its descriptor whatever the name does; but after a restart,
after a closed idle file was compressed meanwhile, or for a file rotated *and* compressed
while the monitor was behind, the plain file is gone and only the copy holds the rest.

A compressed copy has an inode of its own, so it is recognised by its *content*: its first
bytes decompressed, against the fingerprint the tail checkpointed (length and hash), and its
decompressed length, which must reach the offset read. One match is read from that offset;
several that start alike, a copy shorter than the offset, a format the standard library
cannot read (``.zst``) or a checkpoint with no fingerprint are not guessed at: the tail says
which file and what was lost (:func:`find_packed`'s reason, an ingest problem). gzip, bzip2
and xz are read with the standard library, a chunk at a time (memory stays bounded whatever the
file's size).

A compressed sibling's name is its stem plus the suffix, where the stem is the followed name
itself or a rotated name of it (:func:`.rotated.rotated_name`): ``events.jsonl.1.gz``,
``events.jsonl-20261201.gz``, ``events.1.jsonl.gz``, ``events.jsonl.gz``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import IO, Final

from trainguard.monitor.ingest.rotated import open_regular, rotated_name, scan_folder, siblings

__all__ = ["Packed", "find_packed", "next_rotated", "packed_siblings"]

#: Formats read here, by suffix. The decompressor stays open across polls (closed by
#: :meth:`Packed.close`), hence no ``with``.
READERS: Final[dict[str, Callable[[IO[bytes]], io.BufferedIOBase]]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    ".xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),  # noqa: SIM115
}
#: Formats that logrotate's ``compresscmd`` may write but the standard library cannot read.
UNREADABLE: Final = (".zst", ".lz4", ".Z")
#: What a damaged or cut-short compressed file raises while it is decompressed.
DECODE_ERRORS: Final = (OSError, EOFError, zlib.error, lzma.LZMAError)
_SKIP_CHUNK: Final = 1 << 20


@dataclass(eq=False)
class Packed:
    """A compressed file opened for reading, decompressed as it is read."""

    name: str
    #: ``lstat`` of the compressed file (its mtime: logrotate's gzip keeps the original's).
    st: os.stat_result
    reader: io.BufferedIOBase
    #: The compressed file itself (a decompressor given a file object never closes it).
    raw: IO[bytes]
    #: Its first decompressed bytes (up to the length asked for when it was opened).
    head: bytes = b""

    @classmethod
    def open(cls, name: str, head_bytes: int) -> Packed | None:
        """Open ``name`` (a regular file of a readable format) and read its first
        ``head_bytes``; ``None`` when it cannot be opened or decompressed."""
        suffix = os.path.splitext(name)[1]
        make = READERS.get(suffix)
        if make is None:
            return None
        fd = open_regular(name)
        if not isinstance(fd, int):
            return None
        try:
            os.set_blocking(fd, True)
            st = os.fstat(fd)
            raw = os.fdopen(fd, "rb")
        except (OSError, ValueError):
            os.close(fd)
            return None
        try:
            reader = make(raw)
        except DECODE_ERRORS:
            raw.close()
            return None
        packed = cls(name, st, reader, raw)
        try:
            packed.head = reader.read(head_bytes) if head_bytes else b""
        except DECODE_ERRORS:
            packed.close()
            return None
        return packed

    def skip_to(self, offset: int) -> bool:
        """Read on to decompressed byte ``offset``; False if the file ends (or breaks) before."""
        try:
            done = self.reader.tell()
            if offset < done:
                self.reader.seek(offset)
                return self.reader.tell() == offset
            while done < offset:
                got = len(self.reader.read(min(_SKIP_CHUNK, offset - done)))
                if not got:
                    return False
                done += got
        except DECODE_ERRORS:
            return False
        return True

    def close(self) -> None:
        """Close the decompressor and its file."""
        try:
            self.reader.close()
        except DECODE_ERRORS:
            pass
        finally:
            self.raw.close()


def packed_siblings(path: str, skip_jsonl: bool = False) -> list[tuple[os.stat_result, str]]:
    """``(lstat, path)`` of the regular files next to ``path`` that are a compressed copy of it
    or of one of its rotated names, readable or not. ``skip_jsonl``: leave out copies of a
    rotated ``*.jsonl`` name, a stream a run directory follows (and resumes) itself."""
    base = os.path.basename(path)
    stem = base[:-len(".jsonl")] if base.endswith(".jsonl") else base
    suffixes = (*READERS, *UNREADABLE)

    def wanted(name: str, _entry_path: str) -> bool:
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is None:
            return False
        inner = name[:-len(suffix)]
        if inner != base and not rotated_name(inner, base, stem):
            return False
        return not (skip_jsonl and inner != base and inner.endswith(".jsonl"))

    return scan_folder(path, wanted)


def find_packed(path: str, fp_len: int, fp_hash: str, offset: int, line: int, *,
                head_bytes: int = 0, skip_jsonl: bool = False
                ) -> tuple[Packed | None, str | None]:
    """The compressed copy of the file of fingerprint ``(fp_len, fp_hash)`` that ``path`` was
    read from, positioned at decompressed byte ``offset`` (the end of line ``line``), its
    first ``max(fp_len, head_bytes)`` bytes in ``head``.

    ``(copy, None)`` for exactly one match; ``(None, why)`` when copies may hold the rest but
    none can be told safely to be it; ``(None, None)`` when no copy resembles the file (then
    nothing is known to be lost).
    """
    candidates = sorted(name for _, name in packed_siblings(path, skip_jsonl))
    if not candidates:
        return None, None
    where = f"the rest of {path} after line {line} (byte {offset})"
    if fp_len == 0:
        return None, (f"{where} may be in {_names(candidates)}, but nothing of the file "
                              "was fingerprinted to tell which: not read, those lines are lost")
    matches: list[Packed] = []
    unreadable: list[str] = []
    for name in candidates:
        packed = Packed.open(name, max(fp_len, head_bytes))
        if packed is None:
            if name.endswith(UNREADABLE):
                unreadable.append(name)
            continue
        if len(packed.head) >= fp_len and _hash(packed.head[:fp_len]) == fp_hash:
            matches.append(packed)
        else:
            packed.close()
    if len(matches) > 1:
        for packed in matches:
            packed.close()
        return None, (f"{where} is in one of {_names(m.name for m in matches)}, which "
                              "start alike: not guessed, those lines are lost")
    if matches:
        packed = matches[0]
        if packed.skip_to(offset):
            return packed, None
        packed.close()
        return None, (f"{where} was looked for in {packed.name}, which starts like it "
                              "but holds less than was read: not read, those lines are lost")
    if unreadable:
        return None, (f"{where} may be in {_names(unreadable)}, a compression the "
                              "monitor cannot read: those lines are lost (use gzip, bzip2 or "
                              "xz, or delaycompress)")
    return None, None


def next_rotated(path: str, mtime_ns: int, read_ids: Collection[tuple[int, int] | None],
                 read_heads: Collection[bytes], head_bytes: int, skip_jsonl: bool
                 ) -> tuple[str, int] | Packed | None:
    """The oldest file under a rotated name of ``path``, plain or compressed, last written at
    or after ``mtime_ns`` and not read yet, opened: the file between two rotations the monitor
    did not see. A plain file is told read by its identity (``read_ids``), a compressed copy
    by its first ``head_bytes`` decompressed (``read_heads``: the heads of the files read)."""
    found: list[tuple[int, int, str]] = [
        (est.st_mtime_ns, 0, name) for est, name in siblings(path, skip_jsonl)
        if est.st_mtime_ns >= mtime_ns and (est.st_dev, est.st_ino) not in read_ids]
    found += [(est.st_mtime_ns, 1, name) for est, name in packed_siblings(path, skip_jsonl)
              if est.st_mtime_ns >= mtime_ns and name.endswith(tuple(READERS))]
    for _, packed_kind, name in sorted(found):
        if not packed_kind:
            fd = open_regular(name)
            if isinstance(fd, int):
                return name, fd
            continue
        packed = Packed.open(name, head_bytes)
        if packed is None:
            continue
        if packed.head and packed.head not in read_heads:
            return packed
        packed.close()
    return None


def _hash(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def _names(names: Iterable[str]) -> str:
    listed = [os.path.basename(n) for n in names]
    return ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
