"""Who writes into the monitor's standard input: the trainer of ``python train.py ... |
trainguard monitor -``.

Printed log dicts carry no config, so a warmup longer than the run or a temperature near 0
cannot be told from them; the trainer's command line often says both (``--warmup_steps
100000``, ``--config recipe.yaml``). ``trainguard run`` has that command line because it started
the trainer; a plain pipe has it too, one step away: on Linux every process holding the same
pipe (``pipe:[INODE]`` in ``/proc/PID/fd``) open for writing (the access mode in
``/proc/PID/fdinfo``) is a writer, and ``/proc/PID/cmdline`` is its command line.

Only processes of the monitor's own process group are looked at: a shell runs every command of
a pipeline in one group, so a pipe handed over from elsewhere (a FIFO on disk, a supervisor)
finds nothing rather than a stranger (the scan reads each pid's group, then the fds of the
few in ours). Through ``tee`` (``train.py | tee log | trainguard monitor -``) the writer of
tee's own stdin is the trainer. Of several
writers (``accelerate launch`` and the workers it starts share the pipe) the one whose parent
is not a writer too is the command the user typed. Read-only, best effort: a process that
ended or that the monitor may not read is skipped, and no writer found means no config, which
is what a pipe said before.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["PipeWriter", "pipe_inode", "stdin_writer"]


@dataclass(frozen=True, slots=True)
class PipeWriter:
    """A process writing into the pipe: its pid, command line and working directory (where
    its relative ``--config`` path points), and where its stderr goes."""

    pid: int
    argv: tuple[str, ...]
    cwd: str | None
    #: Where fd 2 points (``/dev/pts/3``, ``pipe:[123]``, a file), when it is not where fd 1
    #: points: the Trainer's step bar, TRL's warnings and tracebacks are all written there,
    #: out of the monitor's sight. ``None`` when stderr is merged (``2>&1``) or unknown.
    stderr_elsewhere: str | None = None

    def stderr_note(self) -> str | None:
        """What the user misses with the trainer's stderr elsewhere, and the fix; or None."""
        if self.stderr_elsewhere is None:
            return None
        where = self.stderr_elsewhere
        place = ("the terminal" if where.startswith(("/dev/pts", "/dev/tty"))
                 else "/dev/null (discarded)" if where == "/dev/null"
                 else "another pipe" if where.startswith("pipe:")
                 else "a socket" if where.startswith("socket:") else where)
        return (f"pid {self.pid}'s stderr goes to {place}, not into this pipe: the Trainer's "
                "step bar (the run's length), TRL's warnings, CUDA/NCCL errors and tracebacks "
                "are written there, unseen; pipe both (python train.py 2>&1 | trainguard "
                "monitor -) or use trainguard run")


def pipe_inode(fd: int = 0) -> int | None:
    """The inode of the pipe ``fd`` reads from, or None when ``fd`` is not a pipe (a file, a
    terminal, closed)."""
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_ino if stat.S_ISFIFO(info.st_mode) else None


def _writes_pipe(pid: int, inode: int, proc: Path) -> bool:
    """Whether process ``pid`` holds pipe ``inode`` open for writing."""
    link = f"pipe:[{inode}]"
    fd_dir = proc / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # ended, or not ours to read
        return False
    for fd in fds:
        try:
            if os.readlink(fd_dir / fd) != link:
                continue
            flags = (proc / str(pid) / "fdinfo" / fd).read_text().split("flags:", 1)[1]
        except (OSError, IndexError):
            continue
        mode = int(flags.split()[0], 8) & os.O_ACCMODE
        if mode in (os.O_WRONLY, os.O_RDWR):
            return True
    return False


#: Programs that pass a pipe on (``python train.py | tee log | trainguard monitor -``): the
#: trainer is the writer of their own stdin.
_PASS_THROUGH = frozenset({"tee", "stdbuf", "unbuffer"})


def _group_writers(inode: int, root: Path, group: int, me: int) -> list[int]:
    """Pids of the processes of process group ``group`` (not ``me``) writing pipe ``inode``."""
    out = []
    for name in os.listdir(root):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if pid == me or os.getpgid(pid) != group:
                continue
        except OSError:
            continue
        if _writes_pipe(pid, inode, root):
            out.append(pid)
    return out


def _first_writer(pids: list[int]) -> tuple[psutil.Process, tuple[str, ...]] | None:
    """Of the writers, the one the user typed (whose parent is not a writer too)."""
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            if process.ppid() in pids:
                continue  # started by another writer: the user typed its parent
            argv = tuple(process.cmdline())
        except psutil.Error:
            continue
        if argv:
            return process, argv
    return None


def _stdin_pipe(pid: int, root: Path) -> int | None:
    """The inode of the pipe process ``pid`` reads its stdin from, if it is one."""
    try:
        link = os.readlink(root / str(pid) / "fd" / "0")
    except OSError:
        return None
    return int(link[6:-1]) if link.startswith("pipe:[") and link.endswith("]") else None


def _stderr_elsewhere(pid: int, root: Path) -> str | None:
    """Where process ``pid``'s fd 2 points when that is not where its fd 1 points (through
    ``tee`` this is the trainer's own fds, so ``2>&1 | tee`` counts as merged)."""
    try:
        out, err = (os.readlink(root / str(pid) / "fd" / fd) for fd in ("1", "2"))
    except OSError:  # closed, ended, or not ours to read: say nothing rather than guess
        return None
    return None if out == err else err


def stdin_writer(fd: int = 0, *, proc: str | Path = "/proc") -> PipeWriter | None:
    """The command writing into the pipe on ``fd`` (see the module doc), or None. Through
    ``tee`` and the like (up to 3 of them) to the writer of their own stdin."""
    inode = pipe_inode(fd)
    root = Path(proc)
    if inode is None or not root.is_dir():
        return None
    try:
        group = os.getpgid(0)
    except OSError:
        return None
    me = os.getpid()
    for _ in range(4):
        found = _first_writer(_group_writers(inode, root, group, me))
        if found is None:
            return None
        process, argv = found
        upstream = (_stdin_pipe(process.pid, root)
                    if os.path.basename(argv[0]) in _PASS_THROUGH else None)
        if upstream is None:
            try:
                cwd: str | None = process.cwd()
            except psutil.Error:
                cwd = None
            return PipeWriter(process.pid, argv, cwd, _stderr_elsewhere(process.pid, root))
        inode, me = upstream, process.pid
    return None
