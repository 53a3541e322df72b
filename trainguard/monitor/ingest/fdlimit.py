"""Room for one open file per rank: the soft limit on open files raised to the hard one.

A run directory of 4,096 rank files needs 4,096 descriptors (the tailer keeps each file open to
follow it across rotation), and many hosts start processes with a soft limit of 1,024. Past it
a file cannot be opened: the monitor reports it (*degraded*) but cannot see that rank. The soft
limit may be raised up to the hard limit by any process, as servers such as nginx do at start.
"""

from __future__ import annotations

__all__ = ["raise_open_files_limit"]


def raise_open_files_limit() -> int | None:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new soft
    limit, or None where there is no such limit (not POSIX) or it cannot be changed."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # some kernels refuse "infinity" for the soft limit; a million will do
    if soft != resource.RLIM_INFINITY and soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard
