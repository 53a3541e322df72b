"""The canonical line forms the fast paths decode, with ``msgspec`` types checked in C.

A line of one of these forms decodes to a typed object without a dict (the types are checked
by the decoder: ``bool`` is no number, a float is no step); any other line fails the decode and
goes to :func:`trainguard.events.record_from_object`, which says why it is skipped. The forms
are those :mod:`~trainguard.monitor.ingest.gather` gathers into step records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from trainguard.events import MAX_EXACT_INT

__all__ = ["NOT_ONE_METRIC", "decode_block", "decode_metric_block", "decode_metric_block_iso",
           "decode_one_metric", "decode_plain_metric_block", "failed_line",
           "named_metric_block_decoder", "timestamp"]

#: A step the fast paths take; any other goes to events.record_from_object, which says why.
_Step = Annotated[int, msgspec.Meta(ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)]
#: Likewise a rank (a string, float, null or negative rank is refused there as bad_rank); the
#: cap on how large a rank may be is checked where a new rank's step starts.
_Rank = Annotated[int, msgspec.Meta(ge=0)]


class _OneMetric(msgspec.Struct, gc=False):
    """The one-metric-per-line form, as the fast path takes it: a typed decoder checks the
    types in C (``bool`` is no ``int`` or ``float`` to it, an ``int`` value becomes a
    ``float``), which is what the checks on an ``orjson`` dict did, at twice the speed.
    ``metrics`` is only there to tell a step line, which is not this form, from it. Not tracked
    by the garbage collector (``gc=False``): decoded JSON holds no cycles, and a million of
    them a second would otherwise keep triggering collections."""

    name: str
    value: float
    step: _Step
    rank: _Rank = 0
    time: float | datetime | None = None  # an ISO-8601 string decodes to a datetime, in C
    kind: Any = "train"
    metrics: Any = UNSET
    host: str | None = None
    local_rank: int | None = None


decode_one_metric = msgspec.json.Decoder(_OneMetric).decode
#: A line msgspec cannot take: another form, garbage, or nesting past its depth limit (a
#: 1,000-deep ``{"a":{"a":...`` raises RecursionError in msgspec; the general parser then
#: reads the line and says what it is, a counted skip).
NOT_ONE_METRIC = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


class _BlockLine(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One line of a block decoded in one call (:meth:`Monitor._gather_block`): the
    one-metric form as :class:`_OneMetric` takes it (``name`` and ``value`` set, ``metrics``
    absent or null), or the step form with every metric a number (``metrics`` set; ``name``
    and ``value`` are then ignored, as :func:`~trainguard.events.record_from_object` does).

    Only the envelope's keys (``events.RESERVED_KEYS``): a key of any other name, a string
    metric such as ``"NaN"``, a float step, a string rank... fail the whole block's decode at
    that line, and the block is read line by line. A file of another form (a flat log dict)
    thus fails at its first line, not after a whole block decoded for nothing. A line that
    decodes but is neither form (no ``name``, or no ``value``) is read on its own."""

    step: _Step
    name: str | UnsetType = UNSET
    value: float | UnsetType = UNSET
    rank: _Rank = 0
    time: float | datetime | None = None
    kind: Any = "train"
    metrics: dict[str, float] | None = None
    run_id: Any = None
    host: str | None = None
    local_rank: int | None = None


class _MetricLine(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A line of a block of one-metric lines only, the common block of that form: the
    one-metric form with ``name`` and ``value`` required and no ``metrics`` key. Any other line
    fails the decode, and the block is decoded again as :class:`_BlockLine` (a file of steps
    fails at its first line). Its gathering loop (:meth:`StepGathering._gather_metric_lines`)
    then checks nothing per line but its step and rank. Fields in the order the canonical
    line writes them, which the decoder tries first (2% fewer instructions than another)."""

    time: float | None = None
    step: _Step
    name: str
    value: float
    rank: _Rank = 0
    host: str | None = None
    local_rank: int | None = None
    kind: Any = "train"
    run_id: Any = None


class _PlainMetricLine(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """:class:`_MetricLine` with the four keys of the canonical one-metric line alone (the
    rest at their defaults, as class attributes): tried first on a block that may be taken as
    columns (:mod:`.metric_steps`), which then need not look for a rank or kind in it."""

    time: float | None = None
    step: _Step
    name: str
    value: float
    rank: ClassVar[int] = 0
    host: ClassVar[str | None] = None
    local_rank: ClassVar[int | None] = None
    kind: ClassVar[str] = "train"
    run_id: ClassVar[Any] = None


class _MetricLineISOTime(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """:class:`_MetricLine` with an ISO-8601 ``time`` (decoded to a datetime in C, converted
    to epoch seconds before gathering): a block whose times are strings fails the plain decode
    at its first line and is decoded again as this, not line by line."""

    time: float | datetime | None = None
    step: _Step
    name: str
    value: float
    rank: _Rank = 0
    host: str | None = None
    local_rank: int | None = None
    kind: Any = "train"
    run_id: Any = None


def timestamp(moment: Any) -> float | None:
    """The epoch seconds of a decoded ISO time (UTC when it names no offset), as
    :func:`trainguard.events.iso_timestamp` reads the same text on the general path."""
    if type(moment) is not datetime:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return float(moment.timestamp())


#: ``decode_lines`` reads a run of JSON values apart by any whitespace; the block path checks
#: that its lines are exactly those values before it takes them (see _gather_block).
decode_block = msgspec.json.Decoder(_BlockLine).decode_lines
decode_metric_block = msgspec.json.Decoder(_MetricLine).decode_lines
decode_plain_metric_block = msgspec.json.Decoder(_PlainMetricLine).decode_lines


@lru_cache(maxsize=16)
def named_metric_block_decoder(name: str) -> Callable[[bytes], list[Any]]:
    """The decoder of a block of :class:`_PlainMetricLine` lines that all name ``name``
    (a ``Literal`` in C: no string made a line, and no pass to check the names), which a
    block of another name fails. For a run of one metric a step, tried on each block with the
    name of the block before it."""
    form = msgspec.defstruct(f"_PlainMetricLine_{len(name)}", [("name", Literal[name])],
                             bases=(_PlainMetricLine,), gc=False, forbid_unknown_fields=True,
                             kw_only=True)
    return msgspec.json.Decoder(form).decode_lines
decode_metric_block_iso = msgspec.json.Decoder(_MetricLineISOTime).decode_lines


#: Where msgspec says a decode failed: at a value of the run (``$[k]``), or at a byte of a
#: malformed one.
_AT_VALUE = re.compile(r"at `\$\[(\d+)\]")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")


def failed_line(error: Exception, raw: bytes, n: int) -> int | None:
    """The line (0-based) of ``raw`` (``n`` lines) at which a ``decode_lines`` of it failed
    with ``error``, when msgspec's message says (``$[k]``: the ``k``-th value, which is line
    ``k`` when there is one value a line; or a malformed value's byte offset), else None. Only
    a hint where to cut the block: its parts are each checked again, so a wrong one costs
    time, not lines."""
    text = str(error)
    found = _AT_VALUE.search(text)
    if found is not None:
        k = int(found.group(1))
    else:
        found = _AT_BYTE.search(text)
        if found is None:
            return None
        k = raw.count(b"\n", 0, int(found.group(1)))
    return k if k < n else None
