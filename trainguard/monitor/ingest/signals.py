"""Printed lines as signals: known warning and error lines of trainers become metrics.

Some failures leave no trace in the logged metrics, only in what the trainer prints: TRL's
"All reward functions returned None" (the logged reward then looks like zero signal), a CUDA
out-of-memory error, an NCCL watchdog timeout, fp16 steps skipped for overflow, a traceback.
The lines are data (``trainguard/presets/signals/default.yaml``, validated with pydantic);
each one that matches gives the value 1 of its metric (``stdout/cuda_oom``...) at the stream's
current step, and rules read those metrics. A user's own signals (``NAME=PATTERN``) go through
the same compile step as the built-in ones and as ``--regex`` patterns: google-re2, linear time
whatever the pattern, so no pattern can hang the monitor.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import re2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainguard.exceptions import ConfigError

__all__ = ["Signal", "SignalPreset", "SignalScanner", "builtin_signals", "compile_safe",
           "load_scanner", "parse_user_signal"]

#: Metric names of signals start with this, so a rule can tell a printed line from a metric.
PREFIX = "stdout/"


def compile_safe(pattern: str, what: str) -> Any:
    """``pattern`` compiled with re2 (linear time: no pattern can hang the monitor).

    Raises :class:`~trainguard.exceptions.ConfigError` naming ``what`` when re2 refuses it
    (backreferences and lookarounds, which can take exponential time, are not re2 syntax).
    """
    options = re2.Options()
    options.log_errors = False  # the ConfigError says it; re2 would also print it
    shown = quoted(pattern)
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        try:
            re.compile(pattern)
        except re.error as plain:  # a mistake in any regex dialect: say where, no re2 talk
            where = f" at position {plain.pos}" if plain.pos is not None else ""
            raise ConfigError(f"{what} {shown}: not a valid pattern: {plain.msg}{where}"
                              ) from None
        raise ConfigError(f"{what} {shown}: re2 cannot compile it: {reason}. re2 has no "
                          "backreferences or lookarounds (they can take exponential time); "
                          "rewrite the pattern without them") from None


def quoted(pattern: str) -> str:
    """A pattern as the user typed it, in quotes: ``repr`` would double every backslash."""
    return f'"{pattern}"' if "'" in pattern and '"' not in pattern else f"'{pattern}'"


class Signal(BaseModel):
    """One known line: the metric it sets, the substrings that gate it, its pattern."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[A-Za-z0-9_./\-]+$")
    contains: list[str] = Field(min_length=1)
    pattern: str
    description: str = ""


class SignalPreset(BaseModel):
    """A file of signals, as in ``trainguard/presets/signals/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    signals: list[Signal]


@cache
def builtin_signals() -> tuple[Signal, ...]:
    """The shipped signals, validated (a mistake names the file and the field)."""
    from trainguard.rules.loader import load_yaml

    path = resources.files("trainguard.presets") / "signals" / "default.yaml"
    origin = "<signals preset default>"
    data = load_yaml(path.read_text(encoding="utf-8"), origin)
    try:
        preset = SignalPreset.model_validate(dict(data or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(str(error["msg"]), path=origin,
                          field=".".join(str(p) for p in error["loc"]) or None) from exc
    return tuple(preset.signals)


def parse_user_signal(spec: str) -> Signal:
    """``NAME=PATTERN`` (``--signal``) as a signal setting metric ``stdout/NAME``; the line is
    tried against the pattern only (no substring gate)."""
    name, sep, pattern = spec.partition("=")
    name = name.strip()
    if not sep or not name or not pattern:
        raise ConfigError(f"--signal {spec!r}: write NAME=PATTERN, e.g. "
                          "'dataloader_stall=DataLoader worker .* exited'")
    metric = name if name.startswith(PREFIX) else PREFIX + name
    try:
        return Signal(metric=metric, contains=[""], pattern=pattern)
    except ValidationError:
        raise ConfigError(f"--signal {spec!r}: NAME may hold letters, digits and _ . / -") \
            from None


class SignalScanner:
    """Compiled signals: :meth:`scan` gives the metrics a line sets, or None."""

    __slots__ = ("needles", "_compiled")

    def __init__(self, signals: tuple[Signal, ...] | list[Signal]) -> None:
        self._compiled = [(s.metric, tuple(s.contains), compile_safe(s.pattern, "signal"))
                          for s in signals]
        needles = {c.encode() for s in signals for c in s.contains}
        #: Bytes one of which a line must hold to be worth scanning (b"": every line).
        self.needles: tuple[bytes, ...] = tuple(sorted(needles))

    def scan(self, text: str) -> dict[str, float] | None:
        """The signal metrics ``text`` sets (value 1 each), or None when it sets none."""
        found: dict[str, float] | None = None
        for metric, gates, regex in self._compiled:
            if any(g in text for g in gates) and regex.search(text) is not None:
                if found is None:
                    found = {}
                found[metric] = 1.0
        return found


def load_scanner(user: list[str] | tuple[str, ...] = ()) -> SignalScanner:
    """The built-in signals plus the user's ``NAME=PATTERN`` ones, compiled."""
    return SignalScanner([*builtin_signals(), *(parse_user_signal(s) for s in user)])
