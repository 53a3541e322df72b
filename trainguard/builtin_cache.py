"""A cache of the built-in data files once parsed and validated, so a start skips their YAML.

Reading a built-in rule pack or preset costs ruamel's import and its pure-Python scanner (tens
of ms per file, paid by every ``trainguard monitor`` start). Once a file has been parsed and
validated, the caller stores the validated data (JSON) here, and the next start rebuilds its
objects from it. The rule loader caches the packs (rules/loader.py); normalize.py the
field-map presets.

* Never stale: an entry's key is the SHA-256 of the file's text, of its kind and name, and of
  the code that turned the text into the data (the caller names those modules: the schema and
  the loader), so an edited file or an edited model is a miss, never old data. The key is
  written inside the entry and checked again when it is read.
* Never unsafe: plain JSON, never pickle; an entry that another user owns or could have
  written (group- or world-writable) is a miss, since its rules would be trusted. Callers turn
  an entry of an unexpected shape into a miss.
* Never in the way: a cache that cannot be read or written (read-only home, full disk) is
  skipped silently and the file is parsed as before. Only built-in files are cached; a user's
  own rule or field-map file is parsed every time, its errors located as always.

The directory is ``$TRAINGUARD_CACHE_DIR`` (``off`` turns the cache off), else
``$XDG_CACHE_HOME/trainguard``, else ``~/.cache/trainguard``; entries are
``DIR/KIND/NAME-KEY.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "cache_dir", "load", "store"]

#: Environment variable naming the cache directory; ``off`` turns the cache off.
CACHE_ENV = "TRAINGUARD_CACHE_DIR"
_FORMAT = 1


def cache_dir() -> Path | None:
    """Where cached entries live, or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured == "off" else Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "trainguard"


@cache
def _code_fingerprint(modules: tuple[str, ...]) -> bytes | None:
    """The bytes of the (imported) modules that decide what an entry holds; None: unreadable."""
    try:
        parts = []
        for name in modules:
            filename = sys.modules[name].__file__
            if filename is None:
                return None
            with open(filename, "rb") as handle:
                parts.append(handle.read())
    except (KeyError, OSError):  # not imported, or no file to read: no way to tell staleness
        return None
    return b"\0".join(parts)


def _entry(kind: str, name: str, text: str, code: tuple[str, ...]) -> tuple[Path, str] | None:
    directory = cache_dir()
    fingerprint = _code_fingerprint(code)
    if directory is None or fingerprint is None:
        return None
    digest = hashlib.sha256(f"trainguard-cache/{_FORMAT}\0{kind}\0{name}\0".encode())
    digest.update(fingerprint)
    digest.update(b"\0")
    digest.update(text.encode("utf-8"))
    key = digest.hexdigest()
    return directory / kind / f"{name}-{key[:32]}.json", key


def load(kind: str, name: str, text: str, code: tuple[str, ...]) -> Any:
    """The data stored for built-in file ``kind/name`` whose text is ``text``; None on a miss.

    ``code`` names the modules whose source is part of the key (they must be imported).
    """
    entry = _entry(kind, name, text, code)
    if entry is None:
        return None
    path, key = entry
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            if status.st_uid != os.getuid() or status.st_mode & 0o022:
                return None
            payload = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT \
            or payload.get("key") != key:
        return None
    return payload.get("data")


def store(kind: str, name: str, text: str, code: tuple[str, ...], data: Any) -> None:
    """Keep ``data`` (JSON-able) for built-in file ``kind/name``; best effort, never raises."""
    entry = _entry(kind, name, text, code)
    if entry is None:
        return
    path, key = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0o600 whatever the umask (an entry others could write is never read, above); a new
        # file, never one planted there or a link to elsewhere.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"format": _FORMAT, "key": key, "data": data}, handle,
                      separators=(",", ":"), allow_nan=False)
        os.replace(tmp, path)  # readers see the old entry or the whole new one, never half
    except (OSError, ValueError):  # ValueError: data that JSON cannot hold exactly
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
