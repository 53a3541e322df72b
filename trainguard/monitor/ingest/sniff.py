"""What a file holds, told from its first lines, the way stdin's lines are told apart.

``trainguard monitor FILE`` without ``--regex`` once read every file as canonical JSONL: a TRL
stdout log given as a file was "clean: 0 events, 30 lines skipped". Now the head of the file
(:data:`SNIFF_BYTES`) decides:

* ``canonical``: most non-blank lines are JSON objects; the plain JSONL parser reads it (and
  counts every other line as a skip, with where);
* ``stdout``: most are not JSON: trainer stdout, read by the presets' auto-detection as stdin
  is (canonical JSON lines in it still parse);
* a name in :data:`JSON_FORMATS`: JSON objects of another shape that a registered format
  recognises (the hook for trackers' own files, such as verl's ``file`` logger);
* ``unknown``: nothing to tell from yet (an empty or absent file that a run will write): read
  as stdin is, auto-detecting each line.

A run directory is sniffed over the files already in it (the first 8 KiB of at most 64); one
file of trainer stdout among canonical ones makes the whole directory read with auto-detection
(canonical lines still take the fast path). Pure apart from reading heads: no parser is
imported here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trainguard.events import ParseSkip, Record, _fast_loads

__all__ = ["JSON_FORMATS", "JsonFormat", "SNIFF_BYTES", "json_format_parser", "sniff_head",
           "sniff_source"]

#: Bytes of a file's head that decide its format; of a run directory, fewer bytes of at most
#: SNIFF_DIR_FILES files (1,024 rank files must not cost 64 MiB of reads at start).
SNIFF_BYTES: Final = 1 << 16
SNIFF_DIR_BYTES: Final = 1 << 13
SNIFF_DIR_FILES: Final = 64
#: Non-blank lines of a head looked at.
SNIFF_LINES: Final = 200
CANONICAL: Final = "canonical"
STDOUT: Final = "stdout"
UNKNOWN: Final = "unknown"


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """A JSON-lines format that is not canonical: ``detects`` says whether a decoded line is
    of it, ``convert`` turns one into a record (or a counted skip)."""

    name: str
    detects: Callable[[Any], bool]
    convert: Callable[[Any], Record | ParseSkip | None]


#: Registered non-canonical JSON formats, tried in order on a head's JSON objects that are not
#: canonical events. Add one with ``JSON_FORMATS.append(JsonFormat(...))``.
JSON_FORMATS: list[JsonFormat] = []


def sniff_head(head: bytes) -> str:
    """The format of a file whose first bytes are ``head`` (module doc)."""
    json_lines = other = 0
    for line in head.split(b"\n")[:SNIFF_LINES]:
        text = line.strip()
        if not text:
            continue
        if text[:1] == b"{" and text[1:2] != b"'":  # {'loss': ...} is a printed Python dict
            try:
                obj = _fast_loads(text)
            except (ValueError, RecursionError):
                json_lines += 1  # garbled JSON is still a JSON file's line (or its torn end)
                continue
            for fmt in JSON_FORMATS:
                if fmt.detects(obj):
                    return fmt.name
            json_lines += 1
        else:
            other += 1
    if not json_lines and not other:
        return UNKNOWN
    return CANONICAL if json_lines >= other else STDOUT


def _head(path: str, size: int = SNIFF_BYTES) -> bytes | None:
    """The first :data:`SNIFF_BYTES` of a regular file; None if it is not one or unreadable
    (never blocks: a FIFO is not read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def sniff_source(spec: str, files: Iterable[str] | None = None) -> str:
    """The format of a file, or of a run directory's ``*.jsonl`` files (``files`` when the
    caller knows them), as :func:`sniff_head` tells it."""
    path = Path(spec)
    size = SNIFF_BYTES
    if files is None and path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.jsonl"))[:SNIFF_DIR_FILES]
        size = SNIFF_DIR_BYTES
    elif files is None:
        files = [spec]
    found: set[str] = set()
    for name in files:
        head = _head(name, size)
        if head is not None:
            found.add(sniff_head(head))
    for fmt in JSON_FORMATS:
        if fmt.name in found:
            return fmt.name
    if STDOUT in found:
        return STDOUT
    if CANONICAL in found:
        return CANONICAL
    return UNKNOWN


def json_format_parser(name: str) -> Callable[[Any], Record | ParseSkip | None]:
    """A line parser for the registered format ``name``: each line decoded and converted;
    a line that is not JSON is a counted ``malformed_json`` skip, a blank one nothing."""
    fmt = next(f for f in JSON_FORMATS if f.name == name)

    def parse(line: Any) -> Record | ParseSkip | None:
        data = line.data
        if not data.strip():
            return None
        try:
            obj = _fast_loads(data)
        except (ValueError, RecursionError) as exc:
            return ParseSkip("malformed_json", str(exc)[:80])
        return fmt.convert(obj)

    return parse
