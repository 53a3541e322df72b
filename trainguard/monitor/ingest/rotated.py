"""Finding a followed file again: under a rotated name, by its identity, or as the copy that
copytruncate left. What :class:`~trainguard.monitor.ingest.tail.FileTail` calls on a rotation,
a truncation, a restart or a reopen; every candidate is opened non-blocking and must be a
regular file (a FIFO planted at a rotated name never blocks the monitor).

A rotated name is the file's name or its stem (without ``.jsonl``), then ``.``, ``-`` or ``_``
and a digit: logrotate's ``name.1``, ``name.jsonl.1``, dated ``name-20261201``, and
``name.1.jsonl``; never another rank's file (``events.rank01.jsonl`` is no rotation of
``events.rank0.jsonl``), never a compressed copy (those are read by content, not by name or
inode: :mod:`.packed`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

__all__ = ["find_by_fingerprint", "find_by_identity", "find_copy", "open_regular",
           "rotated_name", "rotated_since", "scan_folder", "siblings"]


def _head_hash(fd: int, length: int) -> str:
    return hashlib.blake2b(os.pread(fd, length, 0), digest_size=8).hexdigest()


def open_regular(path: str) -> int | str | None:
    """A read descriptor of the regular file at ``path``; else why not (``None``: absent).

    ``O_NONBLOCK``: a FIFO planted at an event file's name (``mkfifo f; mv f events.jsonl``)
    must not block the loop (a blocked ``open`` also keeps SIGTERM from ending the monitor);
    it opens at once and is refused by its type. It has no effect on a regular file's reads.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{exc.strerror}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        return f"{exc.strerror}"
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        return f"{kind}: not read (an event file must be a regular file)"
    return fd


def rotated_name(name: str, base: str, stem: str) -> bool:
    """Whether ``name`` is what a rotation makes of ``base``: ``base`` or its ``stem`` (the
    name without ``.jsonl``), then ``.``, ``-`` or ``_`` and a digit. ``events.rank01.jsonl``
    is no rotation of ``events.rank0.jsonl``; compressed copies are :mod:`.packed`'s."""
    if name.endswith((".gz", ".bz2", ".xz", ".zst")):
        return False
    for prefix in (base, stem):
        n = len(prefix)
        if (len(name) > n + 1 and name.startswith(prefix) and name[n] in ".-_"
                and name[n + 1].isdigit()):
            return True
    return False


def find_by_identity(path: str, ident: tuple[int, int], fp_len: int, fp_hash: str,
                      offset: int) -> tuple[str, int] | None:
    """The file of identity ``ident`` (and fingerprint) in ``path``'s folder under another
    name, opened; ``None`` when it is gone. The folder's entries carry their inode numbers,
    so only a match is opened; device and fingerprint are then checked too."""
    folder = os.path.dirname(path) or "."
    try:
        with os.scandir(folder) as entries:
            matches = [e.path for e in entries if e.inode() == ident[1] and e.path != path]
    except OSError:
        return None
    for candidate in matches:
        fd = open_regular(candidate)
        if not isinstance(fd, int):
            continue
        st = os.fstat(fd)
        if ((st.st_dev, st.st_ino) == ident and st.st_size >= max(offset, fp_len)
                and (fp_len == 0 or _head_hash(fd, fp_len) == fp_hash)):
            return candidate, fd
        os.close(fd)
    return None


def find_by_fingerprint(path: str, fp_len: int, fp_hash: str, offset: int, skip_jsonl: bool,
                        allow: Callable[[str], bool] | None = None
                        ) -> tuple[str, int] | str | None:
    """A copy of the checkpointed file under a rotated name of ``path`` (copytruncate while
    the monitor was down: a new inode, the same first bytes), holding at least ``offset``
    bytes, opened. Several that start alike are not guessed at: the reason is returned (an
    ingest problem) instead; ``None`` when there is none."""
    if fp_len == 0:
        return None
    matches: list[tuple[str, int]] = []
    for est, name in sorted(siblings(path, skip_jsonl, allow), key=lambda item: item[1]):
        if est.st_size < max(offset, fp_len):
            continue
        fd = open_regular(name)
        if not isinstance(fd, int):
            continue
        if _head_hash(fd, fp_len) == fp_hash:
            matches.append((name, fd))
        else:
            os.close(fd)
    if len(matches) == 1:
        return matches[0]
    for _, fd in matches:
        os.close(fd)
    if not matches:
        return None
    names = ", ".join(os.path.basename(name) for name, _ in matches)
    return (f"the rest of {path} after byte {offset} is in one of {names}, which start alike: "
            "not guessed, those lines are lost")


def siblings(path: str, skip_jsonl: bool, allow: Callable[[str], bool] | None = None
             ) -> list[tuple[os.stat_result, str]]:
    """``(lstat, path)`` of the regular files under a rotated name of ``path``; with
    ``skip_jsonl``, none that is itself ``*.jsonl`` unless ``allow`` says it may be read."""
    base = os.path.basename(path)
    stem = base[:-len(".jsonl")] if base.endswith(".jsonl") else base

    def wanted(name: str, entry_path: str) -> bool:
        if name == base or not rotated_name(name, base, stem):
            return False
        # A rotated ``*.jsonl`` name is a file the run directory follows as one of its own.
        return not (skip_jsonl and name.endswith(".jsonl") and not (allow and allow(entry_path)))

    return scan_folder(path, wanted)


def scan_folder(path: str, wanted: Callable[[str, str], bool]
                ) -> list[tuple[os.stat_result, str]]:
    """``(lstat, path)`` of the regular files in ``path``'s folder whose name (and path)
    ``wanted`` accepts: the one directory scan behind :func:`siblings` and
    :func:`.packed.packed_siblings`, which differ only in that test. ``lstat``, so a link at a
    rotated name is never followed; an unreadable folder is an empty list (nothing found)."""
    folder = os.path.dirname(path) or "."
    found: list[tuple[os.stat_result, str]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not wanted(entry.name, entry.path):
                    continue
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(est.st_mode):
                    found.append((est, entry.path))
    except OSError:
        return []
    return found


def rotated_since(path: str, mtime_ns: int, exclude: set[tuple[int, int] | None],
                  skip_jsonl: bool) -> tuple[str, int] | None:
    """The oldest file under a rotated name of ``path`` last written at or after
    ``mtime_ns`` whose identity is not in ``exclude`` (what the tail read), opened; else
    ``None``: the file between two renames the monitor did not see."""
    found = sorted((est.st_mtime_ns, name) for est, name in siblings(path, skip_jsonl)
                   if est.st_mtime_ns >= mtime_ns
                   and (est.st_dev, est.st_ino) not in exclude)
    for _, name in found:
        fd = open_regular(name)
        if isinstance(fd, int):
            return name, fd
    return None


def find_copy(path: str, head: bytes, offset: int, ident: tuple[int, int] | None,
              skip_jsonl: bool, allow: Callable[[str], bool] | None = None
              ) -> tuple[str, int] | None:
    """A copy of ``path`` under a rotated name (what copytruncate leaves): a regular file
    that starts with ``head`` and holds more than ``offset`` bytes (only then is it worth
    reading on in), opened; the newest such; else ``None``. ``skip_jsonl`` and ``allow``: as
    for :func:`siblings` (a run directory lets a tail read a ``*.jsonl`` copy that it does
    not follow as a stream of its own)."""
    if not head:
        return None
    found = sorted(((est.st_mtime_ns, name) for est, name in siblings(path, skip_jsonl, allow)
                    if est.st_size > offset and (est.st_dev, est.st_ino) != ident),
                   reverse=True)
    for _, name in found:
        fd = open_regular(name)
        if isinstance(fd, int):
            if os.pread(fd, len(head), 0) == head:
                return name, fd
            os.close(fd)
    return None
