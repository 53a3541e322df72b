"""Opening the monitor's output files safely: never through a symlink, never a FIFO, no leaks.

Anyone who can write the run directory can plant a symlink at ``alerts.jsonl`` (the victim's
file would get alert JSON appended) or a FIFO (a blocking ``open`` would hang the monitor, and
a signal would no longer end it). So every output is opened with ``O_NOFOLLOW`` (a link at
the name is refused with ``ELOOP``) and ``O_NONBLOCK`` (a FIFO without a reader fails with
``ENXIO`` instead of blocking), then ``fstat`` must show a regular file.

Whole-file writes (the checkpoint, the report) go through :func:`write_atomic`: a temporary
file of a fixed name next to the target (``.NAME.tmp``, created with ``O_NOFOLLOW``), fsync,
rename over the target (a rename replaces a link; it never writes through one). The temporary
name is fixed, so a write killed half way leaves at most one such file, which the next write
reuses: nothing accumulates.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

__all__ = ["UnsafeOutputError", "is_symlink", "open_output", "read_regular", "write_atomic"]

_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeOutputError(OSError):
    """An output path that is a symlink, a FIFO or anything but a regular file."""


def _refuse(path: str, what: str) -> UnsafeOutputError:
    return UnsafeOutputError(errno.EPERM, f"{what}: refused to write through it", path)


def open_output(path: str | os.PathLike[str], *, append: bool = True, mode: int = 0o644) -> int:
    """A file descriptor for writing ``path`` (appending, or from its start), a regular file.

    Raises :class:`UnsafeOutputError` for a symlink, FIFO, device or directory at ``path``,
    and ``OSError`` for anything else that keeps it from being opened (ENOSPC, EACCES).
    The descriptor is left blocking: only the open had to be non-blocking.
    """
    name = os.fspath(path)
    flags = _OPEN_FLAGS | (os.O_APPEND if append else 0)
    try:
        fd = os.open(name, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(name, "a symbolic link") from exc
        if exc.errno == errno.ENXIO:
            raise _refuse(name, "a FIFO") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(name, "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], limit: int, *, tail: bool = False) -> bytes:
    """Up to ``limit`` bytes of a regular file (its last ones with ``tail``), without blocking
    on a FIFO planted at its name: anything but a regular file raises ``OSError``; a file
    larger than ``limit`` raises ``OSError(EFBIG)`` unless ``tail``."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_size > limit and not tail:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
        start = max(0, st.st_size - limit)
        chunks = []
        while True:
            chunk = os.pread(fd, 1 << 20, start)
            if not chunk:
                break
            chunks.append(chunk)
            start += len(chunk)
            if sum(map(len, chunks)) > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_symlink(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` itself is a symbolic link (not followed)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` so a reader sees the old file or the new one, never a
    torn one, and nothing is written through a link (see the module docstring).

    Raises ``OSError`` (ENOSPC, EACCES...) with the target left as it was; the temporary file
    is removed whenever the error lets us.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    if is_symlink(folder):
        raise _refuse(folder, "the folder is a symbolic link")
    tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp")
    try:
        fd = open_output(tmp, append=False)
    except UnsafeOutputError:
        os.unlink(tmp)  # planted at our temporary name: remove the link itself, not its target
        fd = open_output(tmp, append=False)
    try:
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(dir_fd)
