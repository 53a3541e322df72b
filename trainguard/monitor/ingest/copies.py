"""Telling a run directory's copies from its streams: a rotated name that starts like a file
already followed is a copy of it (copytruncate), never a stream of its own.

The names a rotation makes of a file are looked up from the copy's name, not by trying every
followed file, so a scan of 4,096 rank files stays linear (see :func:`originals_of`); the
decision itself is :meth:`~trainguard.monitor.ingest.run_dir.DirectorySource._copy_of`.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from trainguard.monitor.ingest.rotated import open_regular, rotated_name

__all__ = ["holds", "originals_first", "originals_of", "stem"]

#: What every rotated name has after its original's name (see :func:`.rotated.rotated_name`).
_ROTATED_MARK = re.compile(r"[.\-_]\d")


def holds(path: str, pos: dict[str, Any]) -> bool:
    """Whether the file at ``path`` is the one ``pos`` was taken in: at least as long, and
    its first bytes hash to the fingerprint (a reused inode number holds other bytes)."""
    fd = open_regular(path)
    if not isinstance(fd, int):
        return False
    try:
        fp_len = int(pos.get("fp_len", 0))
        if os.fstat(fd).st_size < max(int(pos.get("offset", 0)), fp_len):
            return False
        head = os.pread(fd, fp_len, 0)
    except (OSError, TypeError, ValueError):
        return False
    finally:
        os.close(fd)
    return hashlib.blake2b(head, digest_size=8).hexdigest() == pos.get("fp_hash") if fp_len \
        else True


def originals_of(folder: str, name: str) -> list[str]:
    """The paths in ``folder`` of which ``name`` would be a rotated name (see
    :func:`.rotated.rotated_name`): looked up from the name, not by trying every file, so a
    scan of 4,096 rank files stays linear."""
    found: list[str] = []
    if _ROTATED_MARK.search(name, 1) is None:
        return found  # most names (``events.rank12.jsonl``): no separator then a digit
    for i in range(1, len(name) - 1):
        if name[i] in ".-_" and name[i + 1].isdigit():
            prefix = name[:i]
            for base in (prefix, prefix + ".jsonl"):
                if rotated_name(name, base, stem(base)):
                    found.append(os.path.join(folder, base))
    return found


def originals_first(paths: list[str]) -> list[str]:
    """``paths`` with the rotated names of others in the list last (stable otherwise): the
    tail of ``events.jsonl`` exists, and may have taken ``events.1.jsonl`` as its copy, before
    ``events.1.jsonl`` is looked at."""
    known = set(paths)
    return sorted(paths, key=lambda p: any(
        o in known for o in originals_of(os.path.dirname(p), os.path.basename(p))))


def stem(path: str) -> str:
    base = os.path.basename(path)
    return base[:-len(".jsonl")] if base.endswith(".jsonl") else base
