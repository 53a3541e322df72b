"""A cache of the built-in rule packs' validated rules, so a start does not re-parse their YAML.

Reading a built-in pack costs ruamel's import and its pure-Python scanner (tens of ms per
pack, paid by every ``trainguard monitor`` start and again when the detected trainer's pack is
added). Once a pack has been parsed, validated and compiled, its rules' validated fields and
source lines are written as JSON to ``CACHE_DIR/packs/NAME-KEY.json``; the next start rebuilds
the same :class:`~trainguard.rules.models.Rule` objects from it with
:meth:`~trainguard.rules.models.Rule.from_validated` (no YAML, no second validation).

* Never stale: ``KEY`` is the SHA-256 of the pack's YAML text and of the sources of
  ``models.py`` and ``loader.py`` (the schema and the way lines are located), so an edited pack
  or an edited model is a miss, never old data. The key is checked again inside the file.
* Never unsafe: plain JSON, never pickle; a file that does not have the expected shape is a
  miss (and is rewritten).
* Never in the way: a cache that cannot be read or written (read-only home, full disk) is
  skipped silently; the pack is then parsed as before. Users' own rule files are never cached:
  they are parsed every time, with their errors located as always.

``CACHE_DIR`` is ``$TRAINGUARD_CACHE_DIR`` (``off`` disables the cache), else
``$XDG_CACHE_HOME/trainguard``, else ``~/.cache/trainguard``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from trainguard.rules.models import Rule

__all__ = ["CACHE_ENV", "LocatedRule", "cache_dir", "load_cached", "store"]

#: Environment variable naming the cache directory; ``off`` turns the cache off.
CACHE_ENV = "TRAINGUARD_CACHE_DIR"
_FORMAT = 1

#: A validated rule with the lines of its entry and of its ``condition:`` in the pack.
LocatedRule = tuple[Rule, int | None, int | None]


def cache_dir() -> Path | None:
    """Where cached packs live, or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured == "off" else Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "trainguard"


@cache
def _code_fingerprint() -> bytes | None:
    """The bytes of the modules that decide what a cached entry holds (None: unreadable)."""
    root = resources.files("trainguard.rules")
    try:
        return b"".join((root / name).read_bytes() for name in ("models.py", "loader.py"))
    except OSError:  # installed without sources: no way to tell a stale entry, so no cache
        return None


def _entry_path(name: str, text: str) -> tuple[Path, str] | None:
    directory = cache_dir()
    code = _code_fingerprint()
    if directory is None or code is None:
        return None
    digest = hashlib.sha256(f"trainguard-pack-cache/{_FORMAT}\0{name}\0".encode())
    digest.update(code)
    digest.update(b"\0")
    digest.update(text.encode("utf-8"))
    key = digest.hexdigest()
    return directory / "packs" / f"{name}-{key[:32]}.json", key


def load_cached(name: str, text: str) -> list[LocatedRule] | None:
    """The rules of built-in pack ``name`` whose YAML is ``text``, or None on a miss."""
    entry = _entry_path(name, text)
    if entry is None:
        return None
    path, key = entry
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    try:
        if data["format"] != _FORMAT or data["key"] != key:
            return None
        return [(Rule.from_validated(item["fields"]), _line(item["line"]),
                 _line(item["cond_line"])) for item in data["rules"]]
    except (KeyError, TypeError, ValueError):  # not the shape written below: a miss
        return None


def _line(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"line {value!r} is not an int")


def store(name: str, text: str, rules: list[LocatedRule]) -> None:
    """Write the cache entry of built-in pack ``name`` (best effort: errors are ignored)."""
    entry = _entry_path(name, text)
    if entry is None:
        return
    path, key = entry
    payload = {"format": _FORMAT, "key": key, "pack": name,
               "rules": [{"fields": rule.validated_fields(), "line": line,
                          "cond_line": cond_line} for rule, line, cond_line in rules]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, separators=(",", ":"))
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
