"""The canonical event format, shared by the trainer side and the monitor.

One JSON object per line (JSONL). The writer emits one *step* per line::

    {"time": 1732350000.123, "step": 12, "rank": 1, "metrics": {"loss": 0.53, "grad_norm": "NaN"}}

and the monitor also accepts one *metric* per line::

    {"time": 1732350000.123, "step": 12, "name": "loss", "value": 0.53}

and a flat log dict as HF ``trainer_state.json``'s ``log_history`` holds it::

    {"loss": 0.53, "grad_norm": 1.2, "learning_rate": 1e-05, "epoch": 0.5, "step": 12}

JSON has no literal for NaN or the infinities, so the writer encodes them as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; the reader also accepts the bare ``NaN`` and
``Infinity`` tokens that Python's :mod:`json` writes, numeric strings such as ``"0.6931"``
(the TRL stdout form) and ``null`` (read as NaN: a metric that is missing is not "fine").
``rank`` is written when the world has more than one rank and defaults to 0; with it come
``host`` (the node's name) and, when the launcher sets ``LOCAL_RANK``, ``local_rank``, so an
alert on a multi-node job names the node as well as the global rank.

This module imports nothing else of trainguard: the trainer side depends on it alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "MAX_RANKS",
    "NONFINITE_ENCODING",
    "Record",
    "RESERVED_KEYS",
    "ParseSkip",
    "decode_value",
    "encode_record",
    "encode_value",
    "iso_timestamp",
    "parse_line",
    "record_from_object",
]

NONFINITE_ENCODING: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TEXT_NONFINITE: Final = {
    "nan": math.nan, "+nan": math.nan, "-nan": math.nan,
    "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
    "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf,
}
#: Keys of the envelope; never metrics.
RESERVED_KEYS: Final = frozenset({"time", "step", "rank", "metrics", "name", "value", "kind",
                                   "run_id", "host", "local_rank"})
#: Keys of a flat log dict that describe progress rather than the model's health.
_FLAT_NON_METRICS: Final = frozenset({"step", "time", "rank", "run_id", "kind", "host",
                                       "local_rank"})

try:  # orjson is ~3-5x faster; fall back to json when absent.
    import orjson as _orjson

    _fast_loads: Any = _orjson.loads
    _FastDecodeError: Any = _orjson.JSONDecodeError
except ImportError:  # pragma: no cover - orjson is a declared dependency
    _fast_loads = json.loads
    _FastDecodeError = ValueError


@dataclass(slots=True)
class Record:
    """The metrics one rank reported for one step (possibly a part of them)."""

    step: int
    metrics: dict[str, float]
    time: float | None = None
    rank: int = 0
    #: ``train`` for per-step logs, ``eval`` for evaluation logs, ``summary`` for end-of-run.
    kind: str = "train"
    #: True for a one-metric-per-line event: more metrics of the same step may follow.
    partial: bool = False
    #: The node that wrote it and the rank's index there (multi-node jobs); None when unsaid.
    host: str | None = None
    local_rank: int | None = None


@dataclass(frozen=True, slots=True)
class ParseSkip:
    """Why a line was not turned into a record; a counted skip, never an exception."""

    reason: str
    detail: str = ""


def encode_value(value: float) -> float | str:
    """Return ``value`` as JSON can carry it: non-finite floats become strings."""
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return value


def decode_value(raw: Any) -> float | None:
    """Turn a JSON value into a float metric, or ``None`` when it is not a number.

    ``null`` reads as NaN; booleans are not metrics.
    """
    kind = type(raw)
    if kind is float:
        return raw  # type: ignore[no-any-return]
    if kind is int:
        try:
            return float(raw)
        except OverflowError:  # an integer past 1.8e308: as its decimal form reads, infinite
            return math.inf if raw > 0 else -math.inf
    if kind is str:
        special = NONFINITE_ENCODING.get(raw)
        if special is not None:
            return special
        try:
            return float(raw)
        except ValueError:
            lowered = raw.strip().lower()
            return _TEXT_NONFINITE.get(lowered)
    if raw is None:
        return math.nan
    return None


def encode_record(record: Record) -> bytes:
    """Encode one step-per-line event, newline included."""
    obj: dict[str, Any] = {"time": record.time, "step": record.step}
    if record.rank:
        obj["rank"] = record.rank
    if record.host is not None:
        obj["host"] = record.host
    if record.local_rank is not None:
        obj["local_rank"] = record.local_rank
    if record.kind != "train":
        obj["kind"] = record.kind
    obj["metrics"] = {k: encode_value(v) for k, v in record.metrics.items()}
    return (json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n").encode()


def _loads(line: bytes | str) -> Any:
    try:
        return _fast_loads(line)
    except _FastDecodeError:
        # orjson rejects the bare NaN/Infinity that Python's json writes; json accepts them.
        return json.loads(line)


#: Steps and integer times beyond this are refused: the monitor computes with them as floats,
#: which hold every integer up to 2**53 exactly.
MAX_EXACT_INT = 2**53
#: The monitor's default cap on ranks, ``0 <= rank < MAX_RANKS`` (``--max-ranks`` changes
#: it): each rank costs the monitor its own rule state, so a file of random integers must
#: not become a hundred thousand ranks.
MAX_RANKS = 1 << 16


def record_from_object(obj: Any, default_step: int | None = None) -> Record | ParseSkip:
    """Turn one decoded JSON object (any accepted form) into a :class:`Record`."""
    if type(obj) is not dict:
        return ParseSkip("not_an_object", type(obj).__name__)
    step = obj.get("step", default_step)
    if type(step) is not int:
        if type(step) is float and step.is_integer():
            step = int(step)
        elif step is None:
            return ParseSkip("missing_step")
        else:
            return ParseSkip("bad_step", repr(step)[:40])
    if not -MAX_EXACT_INT <= step <= MAX_EXACT_INT:  # no trainer counts this far: garbage
        return ParseSkip("bad_step", repr(step)[:40])
    time = obj.get("time")
    if time is not None and not (type(time) is float and math.isfinite(time)
                                 or type(time) is int and -MAX_EXACT_INT <= time <= MAX_EXACT_INT):
        # An ISO-8601 string (RLDK's form, many loggers') is a clock reading; anything else
        # (other text, NaN, an integer past float range) is none.
        time = iso_timestamp(time) if type(time) is str else None
    rank = obj.get("rank", 0)
    if type(rank) is not int or rank < 0:
        # "1", 1.5, null or a negative rank: never silently rank 0 (that would mix another
        # rank's metrics into rank 0's windows). The monitor caps how large (MAX_RANKS).
        return ParseSkip("bad_rank", repr(rank)[:40])
    kind = obj.get("kind", "train")
    if type(kind) is not str:
        kind = "train"  # a malformed kind must not become a record's kind (the fast path agrees)
    host = obj.get("host")
    if type(host) is not str:
        host = None
    local_rank = obj.get("local_rank")
    if type(local_rank) is not int:
        local_rank = None
    metrics = obj.get("metrics")
    if metrics is not None:
        if type(metrics) is not dict:
            return ParseSkip("bad_metrics", type(metrics).__name__)
        out: dict[str, float] = {}
        for key, raw in metrics.items():
            value = decode_value(raw)
            if value is not None:
                out[key] = value
        return Record(step, out, time, rank, kind, False, host, local_rank)
    name = obj.get("name")
    if name is not None:
        if type(name) is not str:
            return ParseSkip("bad_name", repr(name)[:40])
        if "value" not in obj:
            return ParseSkip("missing_value", name)
        value = decode_value(obj["value"])
        if value is None:
            return ParseSkip("bad_value", f"{name}={obj['value']!r}"[:60])
        return Record(step, {name: value}, time, rank, kind, True, host, local_rank)
    # Flat log dict (HF log_history form): every numeric key but the envelope is a metric.
    out = {}
    for key, raw in obj.items():
        if key in _FLAT_NON_METRICS:
            continue
        value = decode_value(raw)
        if value is not None:
            out[key] = value
    if kind == "train":
        kind = infer_kind(out)
    return Record(step, out, time, rank, kind, False, host, local_rank)


def iso_timestamp(text: str) -> float | None:
    """An ISO-8601 time (``2024-11-23T08:20:00.5Z``) as seconds since the epoch, UTC when it
    names no offset; None when the text is no such time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def infer_kind(metrics: dict[str, float]) -> str:
    """Tell an HF Trainer eval log or end-of-run summary from a training-step log."""
    if "train_runtime" in metrics:
        return "summary"
    if any(key.startswith("eval_") for key in metrics):
        return "eval"
    return "train"


def parse_line(line: bytes | str, default_step: int | None = None) -> Record | ParseSkip:
    """Parse one JSONL line of any accepted form; a bad line gives a :class:`ParseSkip`."""
    try:
        obj = _loads(line)
    except ValueError as exc:
        return ParseSkip("malformed_json", str(exc)[:80])
    except RecursionError:
        return ParseSkip("malformed_json", "nesting too deep")
    return record_from_object(obj, default_step)
