"""verl's ``file`` logger output read as events, and its nulls reported as possible NaNs.

verl's ``FileLogger`` (``verl/utils/tracking.py``, ``trainer.logger=[console,file]``) writes one
line per training step::

    {"step":3,"data":{"actor/pg_loss":-0.012,"critic/score/mean":0.5,"actor/grad_norm":null}}

with ``orjson.dumps``, which writes NaN and the infinities as ``null``. A ``null`` is therefore
not a value the rules can judge, but it may well be the NaN loss that should stop the run: the
metric is left out of the step (missing, not NaN: ``null`` cannot tell NaN from infinity), and
the stream is reported as possibly holding NaNs, which makes the verdict degraded rather than
clean. :class:`VerlFileSource` wraps any line source (a file, a run directory, stdin) and
rewrites such lines to canonical step lines, verl's keys mapped by the ``verl`` field map (so
``actor/pg_loss`` feeds the loss rules whichever way the file was given); every other line
passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from trainguard.events import decode_value
from trainguard.monitor.ingest.sources import Line, Source
from trainguard.monitor.ingest.tail import TailStats

__all__ = ["VerlFileSource", "is_verl_file_line"]

_PREFIX = b'{"step"'
#: Keys a null was seen for, per stream, in the problem line (the rest are counted).
_SHOWN_KEYS = 5


def is_verl_file_line(data: bytes) -> bool:
    """True when ``data`` is one line of verl's file logger (``{"step": N, "data": {...}}``)."""
    if not data.lstrip().startswith(_PREFIX) or b'"data"' not in data:
        return False
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and obj.keys() == {"step", "data"} and type(obj["data"]) is dict


class VerlFileSource:
    """``inner``'s lines, verl file-logger lines rewritten to canonical step lines."""

    def __init__(self, inner: Source, *, map_keys: bool = True) -> None:
        from trainguard.monitor.ingest.normalize import load_field_map

        self.inner = inner
        self.name = inner.name
        #: ``map_keys=False`` keeps verl's keys as written (``trainguard convert``).
        self._verl_map = load_field_map(["verl"] if map_keys else []).apply
        #: stream -> key -> (steps it was null at, first such step)
        self._nulls: dict[str, dict[str, list[int]]] = {}

    def __getattr__(self, attr: str) -> Any:
        # positions, watch_dirs, notify, streaming, tail...: the wrapped source's.
        if attr in ("inner", "_nulls", "_verl_map"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def poll(self) -> list[Line]:
        """The wrapped source's new lines, verl's rewritten."""
        lines = self.inner.poll()
        for i, line in enumerate(lines):
            data = line.data
            if data[:7] == _PREFIX or data.lstrip()[:7] == _PREFIX:
                rewritten = self._rewrite(line)
                if rewritten is not None:
                    lines[i] = rewritten
        return lines

    def _rewrite(self, line: Line) -> Line | None:
        try:
            obj = orjson.loads(line.data)
        except orjson.JSONDecodeError:
            return None  # the parser counts it as malformed, with its line number
        if type(obj) is not dict or obj.keys() != {"step", "data"} or type(obj["data"]) is not dict:
            return None
        metrics: dict[str, Any] = {}
        step = obj["step"]
        for key, raw in obj["data"].items():
            if raw is None:
                self._null(line.stream, key, step)
                continue
            if decode_value(raw) is not None:
                metrics[key] = raw
        out = orjson.dumps({"step": step, "metrics": self._verl_map(metrics)})
        return Line(line.stream, line.number, out)

    def _null(self, stream: str, key: str, step: Any) -> None:
        seen = self._nulls.setdefault(stream, {}).setdefault(key, [0, -1])
        seen[0] += 1
        if seen[1] < 0 and type(step) is int:
            seen[1] = step

    def problems(self) -> list[str]:
        """The wrapped source's problems, and every stream where verl wrote a null."""
        found = self.inner.problems()
        for stream, keys in self._nulls.items():
            shown = sorted(keys.items(), key=lambda kv: kv[1][1])[:_SHOWN_KEYS]
            parts = [f"{key} at {count} step{'s' if count > 1 else ''} from step {first}"
                     for key, (count, first) in shown]
            more = len(keys) - len(shown)
            found.append(f"{stream}: null values, possibly NaN ({'; '.join(parts)}"
                         + (f"; and {more} more keys" if more > 0 else "")
                         + "): verl's file logger writes NaN and infinities as null, so the "
                         "rules cannot see them; check the console log or TensorBoard")
        return found

    @property
    def exhausted(self) -> bool:
        """The wrapped source's."""
        return self.inner.exhausted

    def stats(self) -> dict[str, TailStats]:
        """The wrapped source's counters."""
        return self.inner.stats()

    def close(self) -> None:
        """Close the wrapped source."""
        self.inner.close()
